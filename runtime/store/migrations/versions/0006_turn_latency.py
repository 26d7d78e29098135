"""per-turn latency on agent transcript entries

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_COLUMNS = ('latency_ms', 'stt_ms', 'llm_ms', 'tts_ms')


def upgrade() -> None:
    with op.batch_alter_table('transcript_entries', schema=None) as batch_op:
        for name in _COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('transcript_entries', schema=None) as batch_op:
        for name in reversed(_COLUMNS):
            batch_op.drop_column(name)
