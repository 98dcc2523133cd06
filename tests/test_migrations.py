"""The Alembic history must build exactly the schema the ORM declares, and undo cleanly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from app.db import upgrade_schema
from app.models import Base


def test_migrations_match_the_orm(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent_and_creates_every_table(engine: Engine) -> None:
    upgrade_schema(engine)  # already at head: a second run must be a no-op
    tables = set(inspect(engine).get_table_names())
    assert {"movies", "movie_genres", "ratings", "model_versions", "training_jobs"} <= tables
    assert "alembic_version" in tables


def test_downgrade_to_base_and_back(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    from app.db import MIGRATIONS_DIR

    config = Config(str(MIGRATIONS_DIR.parent / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade_schema(engine)
    assert "ratings" in inspect(engine).get_table_names()
