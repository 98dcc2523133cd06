"""On real MovieLens 100k u1 (skipped when the data is absent): beats popularity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.ml.config import config_from
from app.ml.evaluate import MODEL_ROW, evaluate_split, format_table

DATA = Path(
    os.environ.get("MOVIELENS_DIR", Path(__file__).parents[2].parent / "shared/data/ml-100k")
)


@pytest.fixture(scope="module")
def u1() -> tuple[Path, Path]:
    base, test = DATA / "u1.base", DATA / "u1.test"
    if not (base.is_file() and test.is_file()):
        pytest.skip(f"MovieLens 100k not found at {DATA} (set MOVIELENS_DIR)")
    return base, test


def test_fast_preset_beats_popularity_on_u1(u1) -> None:
    config = config_from("fast", epochs=6, patience=6)
    result = evaluate_split(*u1, config, threads=1)
    rows = result["rows"]
    assert result["n_train"] == 80_000 and result["n_test"] == 20_000
    assert rows["popularity (rating count)"]["ndcg@10"] == pytest.approx(0.245, abs=0.002)
    assert rows["EASE (lambda 250)"]["ndcg@10"] == pytest.approx(0.444, abs=0.002)
    assert rows["user + movie bias"]["rmse"] == pytest.approx(0.954, abs=0.002)
    model = rows[MODEL_ROW]
    assert model["ndcg@10"] > rows["popularity (rating count)"]["ndcg@10"] + 0.03
    assert model["rmse"] < rows["global mean"]["rmse"]
    assert model["fallback_ratings"] == 0 and model["users_evaluated"] == 456
    table = format_table(result)
    assert "| stacked autoencoder |" in table and "| EASE (lambda 250) |" in table
