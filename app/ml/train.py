"""Minibatch training of the stacked autoencoder with early stopping.

Minibatches are groups of users: their CSR rows are densified one batch at a time, so
memory stays flat in the number of users. Each step zeroes gradients (the seed did not),
and the best epoch on the validation split is restored at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import scipy.sparse as sp
import torch

from app.ml.blend import Validation, batch_users, best_ease, choose_blend, choose_item_path
from app.ml.config import ModelConfig, rating_network_config
from app.ml.data import RatingMatrix
from app.ml.distributed import DistributedContext
from app.ml.factors import ItemFactors
from app.ml.hybrid import BiasTerms, Blend, HybridModel, log_popularity
from app.ml.item_path import ItemToItem, refitted
from app.ml.metrics import RankingAccumulator, rating_metrics
from app.ml.model import SparseBatch, SparseOutput, StackedAutoencoder, kl_sparsity, model_device


@dataclass
class EpochReport:
    """One epoch's figures, handed to ``on_epoch`` (progress bars, job status)."""

    epoch: int
    epochs: int
    train_loss: float
    valid_rmse: float
    valid_ndcg: float
    seconds: float
    valid_mae: float = math.nan
    ranking_loss: float = math.nan
    rating_loss: float = math.nan
    best_ranking: bool = False
    best_rating: bool = False

    def as_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


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


def pick_device(device: str | None = None) -> torch.device:
    """CUDA when available, else CPU; an explicit ``device`` wins."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> np.random.Generator:
    """Fix torch's and numpy's generators; returns the numpy one used for shuffling."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return np.random.default_rng(seed)


def movie_biases(m: sp.csr_matrix, mean: float, reg: float) -> np.ndarray:
    """Shrunk per-movie mean residuals: sum(r - mean) / (count + reg)."""
    cols = m.indices
    counts = np.bincount(cols, minlength=m.shape[1])
    sums = np.bincount(cols, m.data.astype(np.float64) - mean, minlength=m.shape[1])
    return (sums / (counts + reg)).astype(np.float32)


def build_model(
    n_movies: int, train: sp.csr_matrix, config: ModelConfig, rating_scale: tuple[float, float]
) -> StackedAutoencoder:
    """A fresh model whose rating baseline starts at the training data's biases."""
    model = StackedAutoencoder(n_movies, config)
    mean = float(train.data.mean()) if train.nnz else float(np.mean(rating_scale))
    model.set_statistics(mean, movie_biases(train, mean, config.movie_bias_reg), rating_scale)
    return model


def make_optimizer(model: torch.nn.Module, config: ModelConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    # fused kernels: one pass over each parameter instead of ~10 elementwise ops (CPU and CUDA)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=config.lr, weight_decay=config.weight_decay, foreach=True
        )
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


@dataclass(frozen=True)
class NegativeSampler:
    """Popularity-shaped proposal for the sampled ranking softmax (sqrt of rating counts:
    common movies are the informative negatives, rare ones still get drawn)."""

    probabilities: torch.Tensor
    size: int

    @classmethod
    def for_training(
        cls, matrix: sp.csr_matrix, config: ModelConfig, device: torch.device
    ) -> NegativeSampler | None:
        k = config.softmax_negatives
        if k == 0 or matrix.shape[1] <= 4 * k:
            return None  # the exact softmax is affordable
        counts = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float64)
        weights = np.sqrt(counts + 1.0)
        return cls(torch.from_numpy(weights / weights.sum()).float().to(device), k)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(movie indices, log of size x probability) for one batch."""
        picked = torch.multinomial(self.probabilities, self.size, replacement=True)
        return picked, torch.log(self.probabilities[picked] * self.size)


def batch_loss(
    model: torch.nn.Module,
    batch: SparseBatch,
    config: ModelConfig,
    sampler: NegativeSampler | None = None,
) -> tuple[torch.Tensor, float, float]:
    """Weighted sum of the multinomial ranking loss, masked rating MSE and KL sparsity.

    Both main terms are averaged per observed rating in the batch, so their weights are
    comparable whatever the batch's users rated.
    """
    negatives, log_q = sampler.draw() if sampler is not None else (None, None)
    out: SparseOutput = model(batch, negatives, log_q)
    values = batch.values
    loss = values.new_zeros(())
    rank_value = rate_value = math.nan
    if out.log_probs is not None and config.ranking_weight > 0:
        target = 1.0 + config.positive_weight * (values >= config.relevant_threshold).float()
        rank = -(out.log_probs * target).sum() / target.sum().clamp(min=1.0)
        loss = loss + config.ranking_weight * rank
        rank_value = float(rank.detach())
    if config.rating_weight > 0:
        weight = 1.0 + (config.hidden_rating_weight - 1.0) * (~out.visible).float()
        mse = (weight * (out.ratings - values) ** 2).sum() / weight.sum().clamp(min=1.0)
        loss = loss + config.rating_weight * mse
        rate_value = float(mse.detach())
    if config.sparsity_beta > 0:
        loss = loss + config.sparsity_beta * kl_sparsity(
            out.hidden, config.activation, config.sparsity_rho
        )
    return loss, rank_value, rate_value


def users_per_batch(config: ModelConfig, n_users: int) -> int:
    """batch_size, or more users so that an epoch takes at most epoch_steps steps."""
    return max(config.batch_size, -(-n_users // config.epoch_steps))


def train_epoch(
    model: torch.nn.Module,
    matrix: sp.csr_matrix,
    users: np.ndarray,
    optimizer: torch.optim.Optimizer,
    config: ModelConfig,
    rng: np.random.Generator,
    device: torch.device,
    sampler: NegativeSampler | None = None,
) -> tuple[float, float, float]:
    """One pass over shuffled users; returns mean (loss, ranking loss, rating loss)."""
    model.train()
    order = rng.permutation(users)
    totals = np.zeros(3)
    batches = 0
    size = users_per_batch(config, order.size)
    for start in range(0, order.size, size):
        batch = SparseBatch.from_csr(matrix[order[start : start + size]], device)
        loss, rank, rate = batch_loss(model, batch, config, sampler)
        loss.backward()
        optimizer.step()
        # freed now, not before the next step: validation and the epoch's snapshots then
        # run without a gradient copy of the weights (283 MB at 59,047 movies)
        optimizer.zero_grad(set_to_none=True)
        totals += (float(loss.detach()), rank, rate)
        batches += 1
    mean_loss, mean_rank, mean_rate = (float(v) for v in totals / max(batches, 1))
    return mean_loss, mean_rank, mean_rate


def validation_users(valid: sp.csr_matrix, config: ModelConfig) -> np.ndarray:
    """Users with held-out ratings; a fixed seeded sample of them when there are many."""
    users = np.flatnonzero(np.diff(valid.indptr))
    if config.max_valid_users and users.size > config.max_valid_users:
        rng = np.random.default_rng(config.seed + 1)
        users = np.sort(rng.choice(users, size=config.max_valid_users, replace=False))
    return users


def validation_scores(
    model: StackedAutoencoder, rows: sp.csr_matrix, cells: sp.csr_matrix
) -> tuple[np.ndarray, np.ndarray]:
    """``predict``'s scores for ``rows`` and its clamped ratings at ``cells`` (in COO order),
    through the sparse encoder: no dense rating rows in or out."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    coo = cells.tocoo()
    lo, hi = (float(v) for v in model.rating_scale)
    try:
        with torch.inference_mode():
            scores, ratings = model.score_cells(
                SparseBatch.from_csr(rows, device),
                torch.from_numpy(coo.row.astype(np.int64)).to(device),
                torch.from_numpy(coo.col.astype(np.int64)).to(device),
            )
    finally:
        model.train(was_training)
    return scores.float().cpu().numpy(), ratings.clamp(lo, hi).float().cpu().numpy()


def validate(
    model: StackedAutoencoder,
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    config: ModelConfig,
    batch_size: int = 1024,
) -> dict[str, float]:
    """RMSE/MAE on the held-out ratings and NDCG@10 ranking them among unrated movies.

    Ranking needs every user's scores over the catalog: batches hold at most BATCH_CELLS
    of them (284 users at 59,047 movies, where 1,024 users' scores and their ranking
    temporaries took ~2 GB at the end of every epoch).
    """
    batch_size = batch_users(train.shape[1], batch_size)
    users = validation_users(valid, config)
    if users.size == 0:
        return {"rmse": math.nan, "mae": math.nan, "ndcg@10": math.nan}
    acc = RankingAccumulator(n_items=train.shape[1], k=10, threshold=config.relevant_threshold)
    preds, truths = [], []
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        rows, vrows = train[batch], valid[batch]
        scores, ratings = validation_scores(model, rows, vrows)
        acc.add(scores, rows, vrows)
        preds.append(ratings)
        truths.append(vrows.tocoo().data)
    out = rating_metrics(np.concatenate(preds), np.concatenate(truths))
    ranking = acc.result()
    out["ndcg@10"] = ranking["ndcg@10"] if acc.users else math.nan
    out["recall@10"] = ranking["recall@10"] if acc.users else math.nan
    out["coverage@10"] = ranking["coverage@10"]
    return out


@dataclass
class HeadBest:
    """One head's best validation figure so far, its epoch and a copy of the weights."""

    value: float = -math.inf
    epoch: int = 0
    state: dict[str, torch.Tensor] | None = None

    def offer(
        self, value: float, epoch: int, model: torch.nn.Module, other: HeadBest | None = None
    ) -> bool:
        """Keep this epoch when it beats the best (or nothing is kept yet), sharing the
        ``other`` head's copy of the weights when it kept this same epoch."""
        if (not math.isnan(value) and value > self.value) or self.state is None:
            self.value = value if not math.isnan(value) else self.value
            self.epoch = epoch
            if other is not None and other.epoch == epoch and other.state is not None:
                self.state = other.state
            else:
                self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return True
        return False

    def take(self) -> dict[str, torch.Tensor]:
        """The kept weights, no longer held here (so that they go once restored)."""
        if self.state is None:
            raise RuntimeError("no epoch was kept")
        state, self.state = self.state, None
        return state


@dataclass
class NetworkResult:
    """The deep autoencoder's two snapshots (the same object when one epoch won both)."""

    rank_net: StackedAutoencoder
    rate_net: StackedAutoencoder
    history: list[EpochReport]
    rank_epoch: int
    rate_epoch: int


def train_network(
    train: RatingMatrix,
    valid: RatingMatrix,
    config: ModelConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    device: str | None = None,
    deadline: float | None = None,
    snapshots: tuple[int, int] | None = None,
) -> NetworkResult:
    """Train the autoencoder; the ranking head keeps its best NDCG@10 epoch, the rating head
    its best RMSE epoch, and training stops once neither has improved for ``patience``
    (or at ``deadline``, a ``time.monotonic()`` value, keeping the best epochs so far).

    A refit has no validation: it runs until the last of ``snapshots`` (the ranking and the
    rating head's epochs as validation chose them) and keeps each head at its own.
    """
    if snapshots is not None:
        config = config.model_copy(update={"epochs": max(1, *snapshots)})
    dev = pick_device(device)
    ctx = DistributedContext.current()  # one process unless started under torchrun
    rng = seed_everything(config.seed + ctx.rank)
    scale = config.rating_scale or train.scale()
    model = build_model(train.shape[1], train.matrix, config, scale).to(dev)
    idle_head = model.rank_out is not None and min(config.ranking_weight, config.rating_weight) == 0
    trained = ctx.wrap(model, dev, find_unused=idle_head)
    optimizer = make_optimizer(model, config)
    users = ctx.shard(np.flatnonzero(np.diff(train.matrix.indptr)))
    sampler = NegativeSampler.for_training(train.matrix, config, dev)
    has_valid = valid.nnz > 0 and ctx.is_main
    rank_best, rate_best = HeadBest(), HeadBest()
    history: list[EpochReport] = []
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        with ctx.join(trained):
            loss, rank, rate = train_epoch(
                trained, train.matrix, users, optimizer, config, rng, dev, sampler
            )
        metrics = validate(model, train.matrix, valid.matrix, config) if has_valid else NO_METRICS
        ndcg, rmse = metrics["ndcg@10"], metrics["rmse"]
        if not has_valid:  # no figures: the snapshot epochs score best, else the latest
            rank_at, rate_at = snapshots or (config.epochs, config.epochs)
            ndcg, rmse = -float(abs(epoch - rank_at)), float(abs(epoch - rate_at))
        rank_improved = rank_best.offer(ndcg if model.rank_out is not None else -rmse, epoch, model)
        rate_improved = rate_best.offer(-rmse, epoch, model, rank_best)
        report = EpochReport(
            epoch, config.epochs, loss, metrics["rmse"], metrics["ndcg@10"],
            time.perf_counter() - t0, metrics["mae"], rank, rate, rank_improved, rate_improved,
        )  # fmt: skip
        history.append(report)
        if on_epoch is not None and ctx.is_main:
            on_epoch(report)
        stale = epoch - max(rank_best.epoch, rate_best.epoch) >= config.patience
        late = deadline is not None and time.monotonic() >= deadline
        if ctx.agree(stale or late):
            break
    n_movies = model.n_movies
    # The trained weights and Adam's two moments go before the best epochs are rebuilt:
    # with them alive, that was the training's peak (3.7-4.2 GB at 25M ratings).
    del trained, optimizer, model
    rank_net = _restored(n_movies, config, rank_best.take())
    same = rate_best.epoch == rank_best.epoch
    rate_net = rank_net if same else _restored(n_movies, config, rate_best.take())
    return NetworkResult(rank_net, rate_net, history, rank_best.epoch, rate_best.epoch)


NO_METRICS = {"rmse": math.nan, "mae": math.nan, "ndcg@10": math.nan}


def _restored(
    n_movies: int, config: ModelConfig, state: dict[str, torch.Tensor]
) -> StackedAutoencoder:
    """A CPU eval-mode network made of one head's kept weights (no copy on the CPU)."""
    return StackedAutoencoder.from_state(n_movies, config, {k: v.cpu() for k, v in state.items()})


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
    if not config.refit or valid.nnz == 0 or _late(deadline):
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
    joint = (deep_ranks or joint_rates) and _fits(result.history, epochs_needed, growth, deadline)
    rating_epochs = int(metrics.get("rating_network_epoch", 0))
    rated = config.rating_network and blend.rating_weight > 0
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
    if rated and not _late(deadline):
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
