"""Persistence: SQLAlchemy 2 async models, Alembic migrations and the queries the runtime needs."""
