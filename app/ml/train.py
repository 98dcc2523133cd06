"""Training a model: the networks (`app.ml.network`), then the item path, the bias terms
and the blend chosen on the validation split, then every served part refitted on all the
ratings, within an optional deadline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
import torch

from app.ml.blend import Validation, best_ease, choose_blend, choose_item_path
from app.ml.config import ModelConfig, rating_network_config
from app.ml.data import RatingMatrix
from app.ml.distributed import DistributedContext
from app.ml.factors import ItemFactors
from app.ml.hybrid import BiasTerms, Blend, HybridModel, log_popularity
from app.ml.item_path import ItemToItem, refitted
from app.ml.network import EpochReport, NetworkResult, train_network, validation_users


@dataclass
class TrainResult:
    """The trained model (each head at its best epoch, blend chosen) and how it got there."""

    model: HybridModel
    history: list[EpochReport]
    best_epoch: int
    metrics: dict[str, float]
    seconds: float

    @property
    def rating_scale(self) -> tuple[float, float]:
        return self.model.rating_scale


PHASES = ("network", "rating network", "item path", "blend", "refit")
"""Training's phases in order: the joint network's epochs, the rating network's, the item
path's closed forms, the blend's grid, the refit of every served part on every rating."""


@dataclass(frozen=True)
class PhaseReport:
    """The phase training is in (one of `PHASES`) and how far: ``step`` of ``steps``
    (epochs, or closed forms for the item path)."""

    phase: str
    step: int
    steps: int


class Phases:
    """Hands each phase's progress to ``on_phase`` (a bar, the job row) and times the
    phases: their seconds go into the metrics as ``seconds_<phase>``."""

    def __init__(self, on_phase: Callable[[PhaseReport], None] | None = None) -> None:
        self.on_phase = on_phase
        self.seconds: dict[str, float] = {}
        self._current: str | None = None
        self._since = time.perf_counter()

    def report(self, phase: str, step: int, steps: int) -> None:
        self._clock(phase)
        if self.on_phase is not None:
            self.on_phase(PhaseReport(phase, step, steps))

    def stepper(self, phase: str) -> Callable[[int, int], None]:
        """``report`` for one phase, as a (step, steps) callback."""
        return lambda step, steps: self.report(phase, step, steps)

    def epochs(self, phase: str) -> Callable[[EpochReport], None]:
        """``report`` for a network's phase, as an ``on_epoch`` callback."""
        return lambda epoch: self.report(phase, epoch.epoch, epoch.epochs)

    def metrics(self) -> dict[str, float]:
        self._clock(None)
        return {f"seconds_{name.replace(' ', '_')}": t for name, t in self.seconds.items()}

    def _clock(self, phase: str | None) -> None:
        now = time.perf_counter()
        if self._current is not None:
            self.seconds[self._current] = self.seconds.get(self._current, 0.0) + now - self._since
        self._current, self._since = phase, now


def train_model(
    train: RatingMatrix,
    valid: RatingMatrix,
    config: ModelConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    device: str | None = None,
    threads: int | None = None,
    deadline: float | None = None,
    refit: bool = True,
    on_phase: Callable[[PhaseReport], None] | None = None,
) -> TrainResult:
    """Deep snapshots, then the item path and the blend chosen on ``valid`` (same maps), then
    (``refit`` and ``config.refit``) every served part fitted again on all the ratings.

    ``on_epoch`` follows the joint network's epochs (learning curves); ``on_phase`` every
    phase of `PHASES`, so a bar or a job's progress never stalls after the epochs."""
    if train.shape != valid.shape:
        raise ValueError("train and valid must share the same user and movie maps")
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    phases = Phases(on_phase)
    joint_end, rating_end = stage_deadlines(deadline)
    phases.report("network", 0, config.epochs)
    network_epoch = phases.epochs("network")

    def each_epoch(report: EpochReport) -> None:
        network_epoch(report)
        if on_epoch is not None:
            on_epoch(report)

    nets = train_network(train, valid, config, each_epoch, device, joint_end)
    time_limited = joint_end is not None and time.monotonic() >= joint_end
    rating = train_rating_network(train, valid, config, device, rating_end, phases)
    time_limited |= rating_end is not None and time.monotonic() >= rating_end
    network_seconds = time.perf_counter() - started
    model, choice = assemble(train, valid, config, nets, rating, phases, deadline)
    seconds = time.perf_counter() - started
    metrics: dict[str, float] = {
        f"valid_{k}": float(v)
        for k, v in choice["figures"].items()  # type: ignore[attr-defined]
    }
    metrics.update(
        best_epoch=nets.rank_epoch,
        rank_epoch=nets.rank_epoch,
        rate_epoch=nets.rate_epoch,
        epochs_run=len(nets.history),
        network_seconds=network_seconds,
        train_seconds=seconds,
        valid_bias_rmse=float(choice["bias_rmse"]),  # type: ignore[arg-type]
        valid_deep_rmse=float(choice["deep_rmse"]),  # type: ignore[arg-type]
        valid_popularity_ndcg=float(choice["popularity_ndcg@10"]),  # type: ignore[arg-type]
        item_weight=model.blend.item_weight,
        popularity_penalty=model.blend.popularity_penalty,
        rating_weight=model.blend.rating_weight,
        joint_rating_weight=model.blend.joint_rating_weight,
        factor_weight=model.blend.factor_weight,
        time_limited=float(time_limited),
    )
    if model.factors is not None:
        metrics["factor_lambda"] = model.factors.lam
    if model.item_path is not None:
        metrics["item_lambda"] = model.item_path.lam
    if rating is not None:
        metrics["rating_network_epoch"] = rating.rate_epoch
        metrics["rating_network_epochs"] = len(rating.history)
    result = TrainResult(model, nets.history, nets.rank_epoch, metrics, seconds)
    if refit:
        result = refit_on_all(result, train, valid, config, device, deadline, phases)
    result.metrics.update(phases.metrics())
    return result


# How a deadline is shared out, cumulatively: the joint network stops at its best epochs
# so far once 40 % of the time is spent (it takes most of it, and ranks), the rating
# network at 50 %, and the refit of every part on all the ratings has the rest (it runs
# the same epochs again, without validation).
STAGE_SHARES = (0.4, 0.5)


def stage_deadlines(deadline: float | None) -> tuple[float | None, float | None]:
    """The joint network's and the rating network's deadlines (`STAGE_SHARES` of the time
    from now until ``deadline``); the refit's is ``deadline`` itself."""
    if deadline is None:
        return None, None
    now = time.monotonic()
    joint, rating = (now + share * (deadline - now) for share in STAGE_SHARES)
    return joint, rating


def refit_on_all(
    result: TrainResult,
    train: RatingMatrix,
    valid: RatingMatrix,
    config: ModelConfig,
    device: str | None = None,
    deadline: float | None = None,
    phases: Phases | None = None,
) -> TrainResult:
    """The validated model with every part the blend uses fitted again on every rating,
    validation included, with what validation chose: each network for its best epochs, the
    item path's variant with its ridge strength, the bias terms and the popularity.

    Validation keeps a tenth of the ratings out: on a user-light set (600 users of
    ml-1m-half) the item path refitted on them ranks ~3 % better, on u1 ~2 %. The blend stays
    as validated, and the validated parts travel with the model (`HybridModel.as_validated`),
    so the quality gate scores ratings no part trained on. Nothing happens without
    ``config.refit``, a validation split or time before ``deadline``; a network whose epochs
    would not fit before it (timed by its validated run) keeps its validated weights.
    """
    ctx = DistributedContext.current()  # the ranks must train the same networks, or hang
    if not config.refit or valid.nnz == 0 or ctx.agree(_late(deadline)):
        return result
    phases = phases or Phases()
    started = time.perf_counter()
    full = RatingMatrix(train.matrix + valid.matrix, train.users, train.movies)
    served, metrics = result.model, dict(result.metrics)
    blend, growth = served.blend, full.nnz / max(train.nnz, 1)
    rank_net, rate_net, item_path = served.rank_net, served.rate_net, served.item_path
    nothing = RatingMatrix(sp.csr_matrix(full.shape, dtype=np.float32), full.users, full.movies)
    rank_epoch, rate_epoch = int(metrics["rank_epoch"]), int(metrics["rate_epoch"])
    if config.rating_network:  # then the joint network's rating head is its ranking epoch's
        rate_epoch = rank_epoch
    deep_ranks = item_path is None or blend.item_weight < 1.0
    joint_rates = blend.joint_rating_weight > 0 or (
        not config.rating_network and blend.rating_weight > 0
    )
    epochs_needed = max(rank_epoch, rate_epoch)
    fits = _fits(result.history, epochs_needed, growth, deadline)
    joint = ctx.agree((deep_ranks or joint_rates) and fits)
    rating_epochs = int(metrics.get("rating_network_epoch", 0))
    rated = ctx.agree(config.rating_network and blend.rating_weight > 0)
    steps = (epochs_needed if joint else 0) + (rating_epochs if rated else 0) + 1
    done = 0

    def refit_epoch(report: EpochReport) -> None:
        phases.report("refit", done + report.epoch, steps)

    phases.report("refit", 0, steps)
    if joint:
        nets = train_network(
            full, nothing, config, refit_epoch, device, deadline, (rank_epoch, rate_epoch)
        )
        done += epochs_needed
        rank_net = nets.rank_net
        rate_net = rate_net if config.rating_network else nets.rate_net
        metrics["refit_joint_network"] = 1.0
    if rated and not ctx.agree(_late(deadline)):
        epochs = max(1, rating_epochs)
        settings = rating_network_config(config)
        rate_net = train_network(
            full, nothing, settings, refit_epoch, device, deadline, (epochs, epochs)
        ).rate_net
        done += rating_epochs
        metrics["refit_rating_network"] = 1.0
    if item_path is not None and blend.item_weight > 0:
        item_path = refitted(
            item_path, train.matrix, full.matrix, config.relevant_threshold,
            config.item_max_movies, config.item_neighbors,
        )  # fmt: skip
        metrics["refit_item_lambda"] = item_path.lam
    bias = BiasTerms.fit(full, config.movie_bias_reg, config.user_bias_reg)
    factors = served.factors
    if factors is not None and not _late(deadline):  # only where the blend gave it a share
        residuals = bias.residuals(full.matrix)
        factors = ItemFactors.fit(
            residuals, factors.rank, factors.lam, config.factor_sweeps, config.seed
        )
    phases.report("refit", steps, steps)
    model = replace(
        served,
        rank_net=rank_net,
        rate_net=rate_net,
        item_path=item_path,
        bias=bias,
        log_popularity=log_popularity(full.matrix),
        factors=factors,
        validated=served.parts(),
    )
    seconds = time.perf_counter() - started
    metrics["refit_seconds"] = seconds
    metrics["train_seconds"] = metrics.get("train_seconds", result.seconds) + seconds
    return replace(result, model=model, metrics=metrics, seconds=result.seconds + seconds)


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _fits(history: list[EpochReport], epochs: int, growth: float, deadline: float | None) -> bool:
    """Whether ``epochs`` more epochs on ``growth`` times the ratings end before ``deadline``
    (each timed by the validated run's, which also validated: an upper bound)."""
    if deadline is None:
        return True
    needed = growth * sum(report.seconds for report in history[:epochs])
    return time.monotonic() + needed < deadline


def train_rating_network(
    train: RatingMatrix,
    valid: RatingMatrix,
    config: ModelConfig,
    device: str | None = None,
    deadline: float | None = None,
    phases: Phases | None = None,
) -> NetworkResult | None:
    """The rating-only network (``config.rating_network``), kept at its best RMSE epoch.

    Its epochs are reported as the "rating network" phase, not through ``on_epoch``: the
    learning curves follow the joint network.
    """
    if not config.rating_network:
        return None
    settings = rating_network_config(config)
    on_epoch = None
    if phases is not None:
        phases.report("rating network", 0, settings.epochs)
        on_epoch = phases.epochs("rating network")
    return train_network(train, valid, settings, on_epoch, device, deadline)


def make_validation(train: RatingMatrix, valid: RatingMatrix, config: ModelConfig) -> Validation:
    """The (sampled) validation users' training rows and held-out ratings."""
    users = validation_users(valid.matrix, config)
    return Validation(train.matrix[users], valid.matrix[users], config.relevant_threshold)


def assemble(
    train: RatingMatrix,
    valid: RatingMatrix,
    config: ModelConfig,
    nets: NetworkResult,
    rating: NetworkResult | None = None,
    phases: Phases | None = None,
    deadline: float | None = None,
) -> tuple[HybridModel, dict[str, object]]:
    """Fit the item path and bias terms on ``train`` and choose the blend on ``valid``; the
    served ratings come from the rating network when there is one. Past ``deadline`` the
    matrix factorisation is not fitted (the other parts are the model's floor)."""
    phases = phases or Phases()
    validation = make_validation(train, valid, config)
    item_path: ItemToItem | None = None
    lambdas: dict[str, float] = {}
    if config.item_path and validation.rows.shape[0]:
        on_step = phases.stepper("item path")
        item_path, lambdas = choose_item_path(train.matrix, validation, config, on_step)
    model = HybridModel(
        config,
        nets.rank_net,
        rating.rate_net if rating is not None else nets.rate_net,
        item_path,
        BiasTerms.fit(train, config.movie_bias_reg, config.user_bias_reg),
        Blend(),
        log_popularity(train.matrix),
        (float(nets.rank_net.rating_scale[0]), float(nets.rank_net.rating_scale[1])),
    )
    if validation.rows.shape[0] == 0:
        return model, {"figures": {}, "bias_rmse": math.nan, "deep_rmse": math.nan,
                       "popularity_ndcg@10": math.nan}  # fmt: skip
    factors = [] if _late(deadline) else fit_factors(train, model.bias, config, phases)
    phases.report("blend", len(factors), len(factors) + 1)
    blend, chosen, choice = choose_blend(model, validation, best_ease(lambdas), factors)
    phases.report("blend", len(factors) + 1, len(factors) + 1)
    choice["item_paths"] = lambdas
    return replace(model.with_blend(blend), factors=chosen), choice


def fit_factors(
    train: RatingMatrix, bias: BiasTerms, config: ModelConfig, phases: Phases
) -> list[ItemFactors]:
    """The matrix factorisation fitted at each of ``config.factor_lambdas`` on the bias
    terms' residuals, for the blend to choose from (none where the config fixes the rating
    blend or turns the part off). Reported as the blend's first steps."""
    if not config.factors or config.rating_blend is not None:
        return []
    residuals = bias.residuals(train.matrix)
    steps = len(config.factor_lambdas) + 1
    fitted = []
    for done, lam in enumerate(config.factor_lambdas):
        phases.report("blend", done, steps)
        fitted.append(
            ItemFactors.fit(residuals, config.factor_rank, lam, config.factor_sweeps, config.seed)
        )
    return fitted
