"""outbound calls: request id, variables, metadata, duration, carrier status, answered by, batch tags

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_INDEXED = ('request_id', 'batch_id', 'batch_item_id')


def upgrade() -> None:
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('variables', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('call_metadata', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('duration_secs', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('from_phone_number_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('carrier_status', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('answered_by', sa.String(length=32), nullable=True))
        # Plain columns, no foreign keys: the batch tables arrive in 0005, and a call outlives its campaign.
        batch_op.add_column(sa.Column('batch_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('batch_item_id', sa.String(length=32), nullable=True))
        for column in _INDEXED:
            batch_op.create_index(batch_op.f(f'ix_calls_{column}'), [column], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('calls', schema=None) as batch_op:
        for column in reversed(_INDEXED):
            batch_op.drop_index(batch_op.f(f'ix_calls_{column}'))
        for column in ('batch_item_id', 'batch_id', 'answered_by', 'carrier_status', 'from_phone_number_id',
                       'duration_secs', 'call_metadata', 'variables', 'request_id'):
            batch_op.drop_column(column)
