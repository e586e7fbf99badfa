"""Alembic environment: runs against the engine handed in by sgxcloud.cas.store.db."""

from __future__ import annotations

from alembic import context

from sgxcloud.cas.store.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # pragma: no cover - the alembic CLI is not how we migrate
    from sgxcloud.cas.store.db import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
