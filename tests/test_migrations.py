"""The Alembic history must build exactly the schema the ORM declares, and undo cleanly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

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


def test_stored_artifacts_move_into_chunks_and_back(engine: Engine) -> None:
    """0009 moves each artifact from the old column into checksummed chunks; its
    downgrade joins them back."""
    import hashlib
    import os

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import JSON, Boolean, DateTime, LargeBinary, String, column, select, table

    from app.db import MIGRATIONS_DIR
    from app.models import utcnow

    config = Config(str(MIGRATIONS_DIR.parent / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    old = table(
        "model_versions",
        *(column(name, String) for name in ("version", "data_fingerprint", "artifact_path")),
        *(column(name, JSON) for name in ("config", "metrics", "data_size")),
        column("artifact", LargeBinary),
        column("is_active", Boolean),
        column("created_at", DateTime),
    )
    payload = os.urandom(300_000)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0008")
        conn.execute(
            old.insert().values(
                version="v-old", data_fingerprint="f", artifact_path="gone.pt", config={},
                metrics={}, data_size={}, artifact=payload, is_active=False, created_at=utcnow(),
            )
        )  # fmt: skip
        command.upgrade(config, "head")
        chunks = conn.execute(
            text("SELECT chunk_index, data, sha256, size FROM model_artifact_chunks")
        ).all()
        assert [(c[0], bytes(c[1]), c[2], c[3]) for c in chunks] == [
            (0, payload, hashlib.sha256(payload).hexdigest(), len(payload))
        ]
        command.downgrade(config, "0008")
        assert bytes(conn.scalar(select(old.c.artifact))) == payload
        command.upgrade(config, "head")


def test_0010_adds_impressions_and_experiments_and_takes_them_away(engine: Engine) -> None:
    """0010's tables come and go; one running experiment is the database's own rule."""
    import pytest
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.exc import IntegrityError

    from app.db import MIGRATIONS_DIR

    new = {"impressions", "impression_items", "experiments"}
    config = Config(str(MIGRATIONS_DIR.parent / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0009")
        assert not new & set(inspect(conn).get_table_names())
        command.upgrade(config, "0010")
        assert new <= set(inspect(conn).get_table_names())
        command.upgrade(config, "head")
    row = (
        "INSERT INTO experiments (id, control, candidate, share, status, started_at)"
        " VALUES (:id, 'a', 'b', 0.5, :status, CURRENT_TIMESTAMP)"
    )
    with engine.begin() as conn:
        conn.execute(text(row), {"id": "e1", "status": "running"})
        conn.execute(text(row), {"id": "e2", "status": "stopped"})
        conn.execute(text(row), {"id": "e3", "status": "promoted"})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(row), {"id": "e4", "status": "running"})


def test_0011_carries_each_impressions_movies_into_its_row_and_back(engine: Engine) -> None:
    """Recorded impressions survive both ways: their movies in order, their time in ms."""
    from alembic import command
    from alembic.config import Config

    from app.db import MIGRATIONS_DIR

    config = Config(str(MIGRATIONS_DIR.parent / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    shown = "2026-12-07 10:00:00.250000"  # as SQLAlchemy stores it; 1796637600250 ms
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0010")
        for rid in ("a" * 32, "b" * 32):
            conn.execute(
                text(
                    "INSERT INTO impressions (id, user_id, strategy, shown_at)"
                    " VALUES (:id, 7, 'autoencoder', :at)"
                ),
                {"id": rid, "at": shown if engine.dialect.name == "sqlite" else shown + "+00"},
            )
        for position, movie in enumerate((30, 4, 12)):  # "b" showed nothing
            conn.execute(
                text("INSERT INTO impression_items VALUES (:id, :p, 7, :m, 1796637600250)"),
                {"id": "a" * 32, "p": position, "m": movie},
            )
        command.upgrade(config, "0011")
        rows = conn.execute(text("SELECT id, shown_ms, movie_ids FROM impressions ORDER BY id"))
        assert [tuple(r) for r in rows] == [
            ("a" * 32, 1796637600250, "30,4,12"),
            ("b" * 32, 1796637600250, ""),
        ]
        assert "impression_items" not in inspect(conn).get_table_names()
        command.downgrade(config, "0010")
        items = conn.execute(
            text("SELECT impression_id, position, movie_id, shown_at FROM impression_items")
        )
        assert sorted(tuple(r) for r in items) == [
            ("a" * 32, 0, 30, 1796637600250),
            ("a" * 32, 1, 4, 1796637600250),
            ("a" * 32, 2, 12, 1796637600250),
        ]
        conn.execute(text("DELETE FROM impression_items"))
        conn.execute(text("DELETE FROM impressions"))
        command.upgrade(config, "head")
