"""calls.from_number / to_number hold any carrier address (a SIP URI, client:name), not only phone numbers

Revision ID: 0008
Revises: 0007
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_COLUMNS = ('from_number', 'to_number')


def upgrade() -> None:
    # SQLite does not enforce VARCHAR lengths, and changing a column's type there means copying the table, whose
    # DROP (foreign keys on) would cascade to the calls' transcripts: only PostgreSQL needs, and gets, the change.
    # There it is a catalogue change, with no table rewrite.
    if op.get_bind().dialect.name == 'sqlite':
        return
    for name in _COLUMNS:
        op.alter_column('calls', name, type_=sa.String(length=255), existing_type=sa.String(length=32),
                        existing_nullable=True)


def downgrade() -> None:
    # Fails (and changes nothing) while a longer address is stored, rather than cutting it short.
    if op.get_bind().dialect.name == 'sqlite':
        return
    for name in reversed(_COLUMNS):
        op.alter_column('calls', name, type_=sa.String(length=32), existing_type=sa.String(length=255),
                        existing_nullable=True)
