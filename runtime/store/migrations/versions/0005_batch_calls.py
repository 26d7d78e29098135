"""batch campaigns: batch_calls and their batch_items

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('batch_calls',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('workspace_id', sa.String(length=32), nullable=False),
    sa.Column('agent_id', sa.String(length=32), nullable=True),
    sa.Column('caller_phone_id', sa.String(length=32), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('variable_names', sa.JSON(), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['caller_phone_id'], ['phone_numbers.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('batch_calls', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batch_calls_agent_id'), ['agent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_batch_calls_caller_phone_id'), ['caller_phone_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_batch_calls_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_batch_calls_workspace_id'), ['workspace_id'], unique=False)

    op.create_table('batch_items',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('batch_id', sa.String(length=32), nullable=False),
    sa.Column('to_number', sa.String(length=20), nullable=False),
    sa.Column('variables', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('call_id', sa.String(length=32), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('claimed_by', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batch_calls.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('batch_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batch_items_batch_id'), ['batch_id'], unique=False)
        batch_op.create_index('ix_batch_items_batch_id_status', ['batch_id', 'status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('batch_items', schema=None) as batch_op:
        batch_op.drop_index('ix_batch_items_batch_id_status')
        batch_op.drop_index(batch_op.f('ix_batch_items_batch_id'))

    op.drop_table('batch_items')
    with op.batch_alter_table('batch_calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_batch_calls_workspace_id'))
        batch_op.drop_index(batch_op.f('ix_batch_calls_status'))
        batch_op.drop_index(batch_op.f('ix_batch_calls_caller_phone_id'))
        batch_op.drop_index(batch_op.f('ix_batch_calls_agent_id'))

    op.drop_table('batch_calls')
