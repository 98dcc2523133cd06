"""Hyper-parameter search within a time budget (Optuna), judged on the validation split.

The first trial is the configuration as given (cut short at the budget, never lost), so a
search that finds nothing better keeps it; then a seeded TPE sampler with median pruning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from app.ml.config import ModelConfig
from app.ml.data import RatingMatrix
from app.ml.train import EpochReport, TrainResult, refit_on_all, train_model

TrialCallback = Callable[[dict[str, Any]], None]
ASSEMBLY_RESERVE = 0.15
"""Share of the budget kept for what follows the first trial's epochs (item path, blend)."""
REFIT_RESERVE = 0.1
"""Share of the budget kept for refitting the winner on all ratings (`refit_on_all`)."""


class BudgetSpent(optuna.TrialPruned):
    """Raised inside a trial when the time budget runs out (the trial is discarded)."""


def suggest(trial: optuna.Trial, base: ModelConfig) -> dict[str, Any]:
    return {
        "hidden": (trial.suggest_categorical("width", [200, 400, 600]),) * len(base.hidden),
        "lr": trial.suggest_float("lr", 5e-4, 5e-3, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "input_dropout": trial.suggest_float("input_dropout", 0.1, 0.6),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True),
        "positive_weight": trial.suggest_float("positive_weight", 0.0, 10.0),
        "item_liked_weight": trial.suggest_float("item_liked_weight", 0.0, 6.0),
    }


def _as_params(base: ModelConfig) -> dict[str, Any]:
    """The base configuration in the search's parameter names (the first trial)."""
    return {
        "width": base.hidden[0] if base.hidden[0] in (200, 400, 600) else 400,
        "lr": min(max(base.lr, 5e-4), 5e-3),
        "dropout": min(base.dropout, 0.5),
        "input_dropout": min(max(base.input_dropout, 0.1), 0.6),
        "weight_decay": min(max(base.weight_decay, 1e-5), 1e-3),
        "positive_weight": min(base.positive_weight, 10.0),
        "item_liked_weight": min(base.item_liked_weight, 6.0),
    }


@dataclass
class SearchResult:
    result: TrainResult
    config: ModelConfig
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> dict[str, Any]:
        best = self.result.metrics
        return {
            "budget_trials": len(self.trials),
            "winner": self.config.model_dump(mode="json"),
            "winner_valid_ndcg@10": best.get("valid_ndcg@10"),
            "winner_valid_rmse": best.get("valid_rmse"),
            "trials": self.trials,
            "seconds": round(self.seconds, 2),
        }


def search(
    train: RatingMatrix,
    valid: RatingMatrix,
    base: ModelConfig,
    budget_seconds: float,
    on_trial: TrialCallback | None = None,
    device: str | None = None,
    threads: int | None = None,
    max_trials: int | None = None,
) -> SearchResult:
    """Trials until ``budget_seconds`` are spent (or ``max_trials`` have run); the first
    trial is ``base`` itself."""
    started = time.monotonic()
    deadline = started + budget_seconds
    trials_end = deadline - REFIT_RESERVE * budget_seconds  # the winner's refit comes after
    sampler = optuna.samplers.TPESampler(seed=base.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=4)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    best: dict[str, Any] = {}
    trials: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        first = trial.number == 0
        config = base if first else base.model_copy(update=suggest(trial, base))
        config = ModelConfig(**config.model_dump())  # re-validate the suggested values
        trial_started = time.monotonic()
        params = _as_params(base) if first else dict(trial.params)
        record: dict[str, Any] = {"trial": trial.number, "defaults": first, "params": params}
        try:
            result = train_model(
                train,
                valid,
                config,
                _pruning(trial, trials_end, first),
                device,
                threads,
                # the first trial is the fallback: cut short at the deadline, never lost
                deadline=trials_end - ASSEMBLY_RESERVE * budget_seconds if first else None,
                refit=False,  # only the winner is refitted
            )
        except optuna.TrialPruned as exc:
            record.update(state="stopped" if isinstance(exc, BudgetSpent) else "pruned")
            _finish(record, trial_started, trials, on_trial)
            raise
        value = float(result.metrics.get("valid_ndcg@10", math.nan))
        record.update(
            state="complete",
            valid_ndcg=value,
            valid_rmse=result.metrics.get("valid_rmse"),
            epochs=len(result.history),
        )
        _finish(record, trial_started, trials, on_trial)
        if not best or value > best["value"]:
            best.update(value=value, result=result, config=config)
        return value if not math.isnan(value) else -1.0

    study.optimize(
        objective,
        n_trials=max_trials,
        timeout=max(trials_end - time.monotonic(), 0.001),
        catch=(),
        callbacks=[_stop_at(trials_end)],
    )
    winner = refit_on_all(best["result"], train, valid, best["config"], device, deadline)
    return SearchResult(winner, best["config"], trials, time.monotonic() - started)


def _pruning(trial: optuna.Trial, deadline: float, first: bool) -> Callable[[EpochReport], None]:
    """Per-epoch report to the pruner; the first trial always finishes."""

    def on_epoch(report: EpochReport) -> None:
        if first:
            return
        if time.monotonic() > deadline:
            raise BudgetSpent()
        if not math.isnan(report.valid_ndcg):
            trial.report(report.valid_ndcg, report.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

    return on_epoch


def _finish(
    record: dict[str, Any],
    started: float,
    trials: list[dict[str, Any]],
    on_trial: TrialCallback | None,
) -> None:
    record["seconds"] = round(time.monotonic() - started, 2)
    trials.append(record)
    if on_trial is not None:
        on_trial(record)


def _stop_at(deadline: float) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def callback(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if time.monotonic() >= deadline:
            study.stop()

    return callback


optuna.logging.set_verbosity(optuna.logging.WARNING)
