"""tool calls in transcripts, calls.ended_by, chat sessions and messages

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('transcript_entries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tool_name', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('tool_call_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('tool_arguments', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('tool_result', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('tool_error', sa.Text(), nullable=True))

    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ended_by', sa.String(length=16), nullable=True))

    op.create_table('chat_sessions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('workspace_id', sa.String(length=32), nullable=False),
    sa.Column('agent_id', sa.String(length=32), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('busy_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('chat_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_sessions_agent_id'), ['agent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_chat_sessions_workspace_id'), ['workspace_id'], unique=False)

    op.create_table('chat_messages',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('tool_name', sa.String(length=64), nullable=True),
    sa.Column('tool_call_id', sa.String(length=64), nullable=True),
    sa.Column('tool_arguments', sa.JSON(), nullable=True),
    sa.Column('tool_result', sa.JSON(), nullable=True),
    sa.Column('tool_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['session_id'], ['chat_sessions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('chat_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_messages_session_id'), ['session_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('chat_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_messages_session_id'))

    op.drop_table('chat_messages')
    with op.batch_alter_table('chat_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_sessions_workspace_id'))
        batch_op.drop_index(batch_op.f('ix_chat_sessions_agent_id'))

    op.drop_table('chat_sessions')
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_column('ended_by')

    with op.batch_alter_table('transcript_entries', schema=None) as batch_op:
        batch_op.drop_column('tool_error')
        batch_op.drop_column('tool_result')
        batch_op.drop_column('tool_arguments')
        batch_op.drop_column('tool_call_id')
        batch_op.drop_column('tool_name')
