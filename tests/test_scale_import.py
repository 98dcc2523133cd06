"""The ml-25m-shaped generator (scripts/generate_ml25m.py) and the bulk import paths.

A tiny seeded data set (300 users, 500 movies, 20,000 ratings) stands in for the 25M one:
it must read as the ml-latest layout, import on SQLite and PostgreSQL with every row kept,
import a second time as a no-op, and leave `ratings` with exactly the keys, indexes and
constraints it had (the bulk path drops and rebuilds them inside the transaction).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, func, inspect, select, text

from app.models import Movie, Rating
from app.movielens import importer, writers
from app.movielens.importer import import_movielens
from app.movielens.ratings import read_movielens

GENERATOR = Path(__file__).resolve().parents[1] / "scripts" / "generate_ml25m.py"
SHAPE = {"users": 300, "movies": 500, "ratings": 20_000, "seed": 7}


def generator() -> ModuleType:
    """scripts/ is no package: load the script as a module (registered, for dataclasses)."""
    if "generate_ml25m" not in sys.modules:
        spec = importlib.util.spec_from_file_location("generate_ml25m", GENERATOR)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["generate_ml25m"] = module
        spec.loader.exec_module(module)
    return sys.modules["generate_ml25m"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ml-25m-tiny")
    generator().generate(out, **SHAPE)
    return out


def digest(folder: Path) -> str:
    files = (folder / "movies.csv", folder / "ratings.csv")
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def test_generated_data_has_the_ml25m_layout_and_properties(tiny: Path, tmp_path: Path) -> None:
    head = (tiny / "ratings.csv").read_text().splitlines()[:2]
    assert head[0] == "userId,movieId,rating,timestamp"
    assert (tiny / "movies.csv").read_text().splitlines()[0] == "movieId,title,genres"
    movies_text = (tiny / "movies.csv").read_text(encoding="utf-8")
    assert '"Synthetic ""Quoted"" Movie' in movies_text  # CSV-quoted like the real file
    assert ", The (" in movies_text and "(no genres listed)" in movies_text

    data = read_movielens(tiny)
    assert data.layout == "ml-latest" and data.skipped == {}
    assert len(data) == SHAPE["ratings"]
    users, per_user = np.unique(data.users, return_counts=True)
    assert users.tolist() == list(range(1, SHAPE["users"] + 1))
    assert per_user.min() >= 20
    assert len(data.catalog) == SHAPE["movies"] == len(np.unique(data.movies))  # all rated
    assert data.catalog[-1] > 2 * SHAPE["movies"]  # ids spread out, not 1..N
    assert set(np.unique(data.ratings).tolist()) <= {k / 2 for k in range(1, 11)}
    popular = np.sort(np.unique(data.movies, return_counts=True)[1])[::-1]
    assert popular[0] > 10 * np.median(popular)  # long-tailed
    # rows sorted by user then movie, as in ml-25m
    keys = data.users * 10**7 + data.movies
    assert np.all(np.diff(keys) > 0)

    again = tmp_path / "again"
    generator().generate(again, **SHAPE)
    assert digest(again) == digest(tiny)  # seeded: the same bytes


def schema(engine: Engine) -> dict[str, Any]:
    """What the import must leave as it found it: keys, indexes, constraints of ratings."""
    found = inspect(engine)
    return {
        "pk": found.get_pk_constraint("ratings"),
        "fks": found.get_foreign_keys("ratings"),
        "indexes": sorted(found.get_indexes("ratings"), key=lambda i: str(i["name"])),
        "checks": found.get_check_constraints("ratings"),
        "unique": found.get_unique_constraints("ratings"),
    }


def writers_used(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    used: list[str] = []
    real = writers.ratings_writer

    def spy(*args: Any) -> Any:
        writer = real(*args)
        used.append(type(writer).__name__)
        return writer

    monkeypatch.setattr(importer, "ratings_writer", spy)
    return used


def test_generated_data_imports_in_bulk_and_again_as_a_no_op(
    engine: Engine, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = schema(engine)
    assert before["pk"]["constrained_columns"] == ["user_id", "movie_id"]
    used = writers_used(monkeypatch)

    first = import_movielens(engine, tiny)

    bulk = "PostgresBulkWriter" if engine.dialect.name == "postgresql" else "_SqliteBulkWriter"
    assert used == [bulk]
    assert first.skipped == {}
    assert (first.movies_added, first.ratings_added) == (SHAPE["movies"], SHAPE["ratings"])
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Rating)) == SHAPE["ratings"]
        assert conn.scalar(select(func.count()).select_from(Movie)) == SHAPE["movies"]
        per_user = (
            select(func.count().label("n")).select_from(Rating).group_by(Rating.user_id).subquery()
        )
        assert conn.scalar(select(func.min(per_user.c.n))) >= 20
        assert conn.scalar(select(func.count(func.distinct(Rating.user_id)))) == SHAPE["users"]
        stars = conn.scalars(select(Rating.rating).distinct()).all()
        assert set(stars) <= {k / 2 for k in range(1, 11)}
    assert schema(engine) == before

    second = import_movielens(engine, tiny)  # small table, large file: bulk again
    assert (second.movies_added, second.ratings_added) == (0, 0)
    assert (second.movies_existing, second.ratings_existing) == (SHAPE["movies"], SHAPE["ratings"])
    assert second.skipped == {}
    assert "0 added" in second.summary()

    monkeypatch.setattr(writers, "BULK_EXISTING_MAX", 0)  # the incremental path
    third = import_movielens(engine, tiny)
    assert used[-1] in ("_PostgresRatingWriter", "_SqliteRatingWriter")
    assert (third.ratings_added, third.ratings_existing, third.skipped) == (0, SHAPE["ratings"], {})
    assert schema(engine) == before
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Rating)) == SHAPE["ratings"]


def test_sqlite_import_gives_its_connection_back_with_checks_on(engine: Engine, tiny: Path) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite connection flags")
    import_movielens(engine, tiny)
    with engine.connect() as conn:
        flags = [
            conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("foreign_keys", "ignore_check_constraints")
        ]
        assert flags == [1, 0]
        with pytest.raises(Exception, match="CHECK|FOREIGN"):
            conn.exec_driver_sql(
                'INSERT INTO ratings (user_id, movie_id, rating, "timestamp") VALUES (1, 1, 9, 1)'
            )


def test_users_out_of_order_repeats_keep_the_first_row(
    engine: Engine, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user coming back after others (ml-100k's order) and a pair repeated across blocks:
    the PostgreSQL bulk path stops trusting the file's order and stages the rest."""
    folder = tmp_path / "shuffled"
    folder.mkdir()
    (folder / "movies.csv").write_bytes((tiny / "movies.csv").read_bytes())
    header, *lines = (tiny / "ratings.csv").read_text().splitlines()
    order = np.random.default_rng(3).permutation(len(lines))
    shuffled = [lines[i] for i in order]
    user, movie, rating, stamp = shuffled[0].split(",")
    other = "1.0" if rating != "1.0" else "2.0"
    shuffled.append(f"{user},{movie},{other},{stamp}")  # a repeat, last: the first wins
    (folder / "ratings.csv").write_text("\n".join([header, *shuffled]) + "\n")
    monkeypatch.setattr(importer, "BLOCK_BYTES", 4096)
    staged: list[bool] = []
    real = writers.PostgresBulkWriter._stage_from_now_on

    def stage(writer: writers.PostgresBulkWriter) -> None:
        staged.append(True)
        real(writer)

    monkeypatch.setattr(writers.PostgresBulkWriter, "_stage_from_now_on", stage)

    report = import_movielens(engine, folder)

    assert staged == ([True] if engine.dialect.name == "postgresql" else [])
    assert report.skipped == {"ratings.duplicate": 1}
    assert report.ratings_added == SHAPE["ratings"]
    with engine.connect() as conn:
        stored = conn.execute(
            select(Rating.rating).where(Rating.user_id == int(user), Rating.movie_id == int(movie))
        ).scalar_one()
        assert stored == float(rating)
        assert conn.scalar(select(func.count()).select_from(Rating)) == SHAPE["ratings"]


def test_postgres_bulk_path_yields_to_a_reader_holding_the_table(
    engine: Engine, tiny: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk path locks `ratings` and `movies`; when a reader holds them it tries for
    PG_LOCK_WAIT seconds, then imports the incremental way (which never blocks that reader)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL locking")
    monkeypatch.setattr(writers, "PG_LOCK_WAIT", 0.2)
    used = writers_used(monkeypatch)
    reader = create_engine(database_url)
    try:
        with reader.connect() as conn:
            conn.execute(text("SELECT count(*) FROM ratings"))  # holds ACCESS SHARE
            report = import_movielens(engine, tiny)  # not blocked, not blocking
            assert conn.execute(text("SELECT count(*) FROM ratings")).scalar() == SHAPE["ratings"]
    finally:
        reader.dispose()
    assert used == ["_PostgresRatingWriter"]
    assert report.ratings_added == SHAPE["ratings"]
