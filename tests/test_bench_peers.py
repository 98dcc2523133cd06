"""scripts/bench_peers.py on a tiny seeded set: the EASE it fits, tuning's data, the JSON.

The EASE peers need nothing beyond the service's install; the library peers need the
bench extra (``pip install -e '.[bench]'``) and are skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from app.ml.baselines import EASE
from app.ml.data import RatingMatrix
from app.ml.evaluate import holdout

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str) -> Any:
    """scripts/ is no package: load a script as a module (registered, for dataclasses)."""
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("bench_peers")
accuracy = _load("bench_accuracy")


@pytest.fixture(scope="module")
def fold() -> Any:
    ratings = accuracy.synthetic_large(n_users=80, n_movies=120, n_ratings=2_400, rank=4, seed=3)
    train, test = holdout(ratings)
    return bench.make_fold("tiny", train, test, seed=bench.VALID_SEED)


def _cells(m: RatingMatrix) -> set[tuple[int, int]]:
    coo = m.matrix.tocoo()
    return set(zip(m.users.ids[coo.row].tolist(), m.movies.ids[coo.col].tolist(), strict=True))


def _chunk_cells(chunk: Any) -> set[tuple[int, int]]:
    return set(zip(chunk[0].tolist(), chunk[1].tolist(), strict=True))


@pytest.mark.parametrize("positives", ["all", "pos4"])
def test_dual_ease_scores_as_the_baseline_ease(fold: Any, positives: str) -> None:
    """The users x users form is the service's EASE: same scores on every movie it knows."""
    train = fold.train
    scorer = bench.fit_ease(train, {"lambda": 50.0, "input": positives}, seed=1)
    x = bench.interactions(train.matrix, positives)
    reference = EASE(50.0, form="primal").fit(RatingMatrix(x, train.users, train.movies))
    users = np.arange(train.shape[0])
    ours, ratings = scorer(users, train.matrix)
    theirs, _ = reference(x)
    assert ratings is None
    known = np.diff(x.tocsc().indptr) > 0
    assert known.sum() < x.shape[1] or positives == "all"
    with_input = np.diff(x.indptr) > 0
    np.testing.assert_allclose(
        ours[with_input][:, known], theirs[with_input][:, known], rtol=1e-4, atol=1e-5
    )
    assert np.all(np.isneginf(ours[:, ~known]))  # a peer ranks only movies in its input


def test_a_user_without_positives_gets_popularity(fold: Any) -> None:
    train = fold.train
    rows = sp.csr_matrix(train.matrix[:1].toarray().clip(max=3.0))  # no rating >= 4
    scorer = bench.fit_ease(train, {"lambda": 50.0, "input": "pos4"}, seed=1)
    scores, _ = scorer(np.array([0]), rows)
    popularity = np.diff(train.matrix.tocsc().indptr)
    finite = np.isfinite(scores[0])
    np.testing.assert_array_equal(scores[0][finite], popularity[finite])


def test_tuning_never_sees_test_or_validation_rows(fold: Any) -> None:
    """Every tuning fit reads the carve-out's train part only; the final fit all of train."""
    seen: list[RatingMatrix] = []
    peer = bench.PEERS["ease-pos4"]

    def recording_fit(train: RatingMatrix, params: dict[str, Any], seed: int) -> Any:
        seen.append(train)
        return peer.fit(train, params, seed)

    spy = bench.Peer(recording_fit, peer.criterion, peer.stages, peer.smoke, peer.fixed)
    row = bench.run_peer(spy, fold, smoke=False, seed=1)
    test, valid = _chunk_cells(fold.test), _chunk_cells(fold.valid)
    assert valid and not valid & test
    assert valid <= _cells(fold.train)
    *tuning, final = seen
    assert len(tuning) == len(row["tuning"]) >= len(bench.EASE_LAMBDAS)
    for matrix in tuning:
        cells = _cells(matrix)
        assert not cells & test and not cells & valid
        assert cells | valid == _cells(fold.train)
    assert final is fold.train
    best = max(row["tuning"], key=lambda t: t["valid_ndcg@10"])
    assert best["lambda"] == row["params"]["lambda"]


def test_output_names_the_strongest_peer_and_the_model_ratio(fold: Any, tmp_path: Path) -> None:
    peers = {
        name: bench.run_peer(bench.PEERS[name], fold, smoke=True, seed=1)
        for name in ("ease-all", "ease-pos4")
    }
    for row in peers.values():
        assert set(row) >= {"ndcg@10", "coverage@10", "params", "seconds", "fit_seconds"}
        assert "rmse" not in row
        assert 0.0 < row["ndcg@10"] <= 1.0
    model = {"ndcg@10": 0.3, "rmse": 0.9}
    summary = bench.summarize(peers, model)
    top = max(peers, key=lambda n: peers[n]["ndcg@10"])
    assert summary["strongest_peer"]["peer"] == top
    assert summary["best_rmse_peer"] is None
    ratio = summary["ratios"]["ndcg_model/strongest_peer"]
    assert ratio == pytest.approx(0.3 / peers[top]["ndcg@10"], abs=1e-3)
    json.dumps(summary)  # the table is plain JSON

    out = tmp_path / "peers.json"
    bench.merge_into(out, "tiny", {"peers": {"ease-all": summary["peers"]["ease-all"]}}, None)
    bench.merge_into(out, "tiny", {"peers": {"ease-pos4": summary["peers"]["ease-pos4"]}}, None)
    merged = json.loads(out.read_text())["tiny"]
    assert set(merged["peers"]) == {"ease-all", "ease-pos4"}  # earlier peers are kept
    assert merged["strongest_peer"]["peer"] == top


@pytest.mark.parametrize("name", ["als", "mf"])
def test_library_peers_score_on_the_protocol(fold: Any, name: str) -> None:
    pytest.importorskip("implicit", reason="the bench extra is not installed")
    pytest.importorskip("cornac", reason="the bench extra is not installed")
    row = bench.run_peer(bench.PEERS[name], fold, smoke=True, seed=1)
    assert 0.0 <= row["ndcg@10"] <= 1.0
    if name == "mf":
        assert 0.3 < row["rmse"] < 2.0
    else:
        assert "rmse" not in row


def test_a_choice_at_the_grid_edge_is_tried_one_step_further() -> None:
    stage = bench.beyond_edges({"lambda": ((100.0, 250.0, 500.0), 2.0), "k": ((8, 16), 2)})
    assert stage({"lambda": 500.0, "k": 8, "input": "all"}) == [
        {"lambda": 1000.0, "k": 8, "input": "all"},
        {"lambda": 500.0, "k": 4, "input": "all"},
    ]
    assert stage({"lambda": 250.0, "k": 12}) == []
