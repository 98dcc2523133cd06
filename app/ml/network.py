"""Minibatch training of one stacked autoencoder with early stopping.

Minibatches are groups of users whose sparse rows feed the encoder directly, so memory stays
flat in the number of users. Each step zeroes gradients (the seed did not); each head keeps
its best epoch on the validation split, restored at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
import torch

from app.ml.blend import batch_users
from app.ml.config import ModelConfig
from app.ml.data import RatingMatrix
from app.ml.distributed import DistributedContext
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
    has_valid = valid.nnz > 0
    rank_best, rate_best = HeadBest(), HeadBest()
    history: list[EpochReport] = []
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        with ctx.join(trained):
            loss, rank, rate = train_epoch(
                trained, train.matrix, users, optimizer, config, rng, dev, sampler
            )
        # rank 0 validates; every rank keeps the epochs its figures choose
        validated = has_valid and ctx.is_main
        metrics = validate(model, train.matrix, valid.matrix, config) if validated else NO_METRICS
        metrics = ctx.from_main(metrics)
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
