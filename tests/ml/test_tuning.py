"""Hyper-parameter search: defaults first, every trial reported, the best one kept."""

from __future__ import annotations

from app.ml.config import config_from
from app.ml.data import holdout_split
from app.ml.tuning import search


def test_search_reports_every_trial_and_keeps_the_best(synthetic) -> None:
    train, valid = holdout_split(synthetic, 0.1, seed=0)
    base = config_from("fast", hidden=(32,), epochs=6, patience=3, seed=4)
    seen: list[dict] = []
    found = search(
        train, valid, base, budget_seconds=600.0, on_trial=seen.append, threads=1, max_trials=4
    )
    assert len(found.trials) == 4 and seen == found.trials
    first = found.trials[0]
    assert first["defaults"] is True and first["state"] == "complete"
    complete = [t for t in found.trials if t["state"] == "complete"]
    assert {t["state"] for t in found.trials} <= {"complete", "pruned", "stopped"}
    best = max(complete, key=lambda t: t["valid_ndcg"])
    assert found.result.metrics["valid_ndcg@10"] == best["valid_ndcg"]
    report = found.report()
    assert report["budget_trials"] == len(found.trials)
    assert report["winner"] == found.config.model_dump(mode="json")
    if not best["defaults"]:
        assert found.config.hidden[0] == best["params"]["width"]
        assert abs(found.config.lr - best["params"]["lr"]) < 1e-12


def test_a_search_without_time_keeps_the_defaults(synthetic) -> None:
    train, valid = holdout_split(synthetic, 0.1, seed=0)
    base = config_from("fast", hidden=(16,), epochs=2, seed=1)
    found = search(train, valid, base, budget_seconds=0.001, threads=1)
    assert [t["defaults"] for t in found.trials] == [True]
    assert found.config == base


def test_the_first_trial_stops_at_the_budget_with_its_best_epochs(synthetic) -> None:
    """A budget shorter than the defaults' training still ends with a model, not nothing."""
    train, valid = holdout_split(synthetic, 0.1, seed=0)
    base = config_from("fast", hidden=(16,), epochs=1000, patience=1000, seed=1)
    found = search(train, valid, base, budget_seconds=1.0, threads=1)
    first, *later = found.trials
    assert first["defaults"] and first["state"] == "complete"
    assert all(t["state"] in ("stopped", "pruned") for t in later)  # out of time, discarded
    assert 1 <= first["epochs"] < 1000
    assert found.result.metrics["epochs_run"] == first["epochs"]
