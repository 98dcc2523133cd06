"""Inference: the one forward pass that evaluation, /predictions and /recommendations share.

A trained model (`app.ml.hybrid.HybridModel`) has up to four parts: the joint autoencoder
at its best ranking epoch, the network serving ratings (a rating-only network, or the
joint one at its best rating epoch), the linear item-to-item path and the bias terms the
rating heads are built on. `FoldInScorer` turns a user's current ratings into scores and
predicted ratings from numpy copies of those parts, for one user (the request hot path:
the first layer gathers only the weight rows of the rated movies, the rating heads run
only for the movies asked for) or for a batch of users (evaluation), with the same
feature and blend functions either way.
The torch forward (`StackedAutoencoder.forward`) is the training-side definition; a test
pins this pass to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, NamedTuple, cast

import numpy as np
import scipy.sparse as sp
import torch

if TYPE_CHECKING:
    from app.ml.explain import Explainer, ItemSimilarity
    from app.ml.hybrid import Blend, HybridModel
    from app.ml.model import StackedAutoencoder

Array = np.ndarray
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def _sigmoid(x: Array) -> Array:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free logistic


def _selu(x: Array) -> Array:
    return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "selu": _selu,
}


def _np(tensor: torch.Tensor) -> Array:
    """The float32 CPU tensor's own memory as an array (a copy only from another device or
    dtype): a served model then holds its weights once, not twice (~500 MB at 59k movies).
    Nothing writes to these arrays; the networks are never trained again once served."""
    return np.asarray(tensor.detach().cpu().numpy(), dtype=np.float32)


class Features(NamedTuple):
    """The encoder's sparse input as (row, column, value) triplets over a batch."""

    rows: Array
    cols: Array
    values: Array


class NetWeights:
    """Numpy copies of one eval-mode autoencoder snapshot."""

    def __init__(self, net: StackedAutoencoder) -> None:
        config = net.config
        self.inputs = config.inputs
        self.residual = config.rating_head == "residual"
        self.user_bias_reg = config.user_bias_reg
        self.n_movies = net.n_movies
        self.activation_name = config.activation
        self.activation = ACTIVATIONS[config.activation]
        self.first_t = np.ascontiguousarray(_np(net.first_layer.weight_t))  # in_dim x hidden
        self.first_bias = _np(net.first_layer.bias)
        deeper = [cast(torch.nn.Linear, layer) for layer in net.layers[1:]]
        self.deeper = [(_np(layer.weight), _np(layer.bias)) for layer in deeper]
        self.base = _np(net.global_mean + net.movie_bias)
        self.rank = (
            (_np(net.rank_out.weight), _np(net.rank_out.bias)) if net.rank_out is not None else None
        )
        self.rate_w, self.rate_b = _np(net.rate_out.weight), _np(net.rate_out.bias)

    def user_biases(self, rows: Array, cols: Array, values: Array, counts: Array) -> Array:
        resid = np.bincount(rows, values - self.base[cols], minlength=counts.size)
        return (resid / (counts + self.user_bias_reg)).astype(np.float32)

    def features(self, rows: Array, cols: Array, values: Array, counts: Array) -> Features:
        """Indicator and bias-centred ratings, each scaled by 1/sqrt(n), as in training."""
        if self.inputs == "ratings":
            return Features(rows, cols, values)
        norm = (np.maximum(counts, 1.0) ** -0.5).astype(np.float32)[rows]
        if self.inputs == "implicit":
            return Features(rows, cols, norm)
        bias = self.user_biases(rows, cols, values, counts)
        centred = (values - self.base[cols] - bias[rows]) * norm
        return Features(
            np.concatenate([rows, rows]),
            np.concatenate([cols, cols + self.n_movies]),
            np.concatenate([norm, centred]),
        )

    def hidden(self, first: Array) -> Array:
        """Activations of the last hidden layer given the first layer's pre-activation."""
        h = self.activation(first + self.first_bias)
        for weight, bias in self.deeper:
            h = self.activation(h @ weight.T + bias)
        return h.astype(np.float32, copy=False)

    def encode_user(self, cols: Array, values: Array) -> tuple[Array, float]:
        """`features` + `hidden` for one user, without the batch bookkeeping (hot path).

        ``take`` gathers the rated rows of the first layer several times faster than fancy
        indexing; the arithmetic is the batch path's, so both agree to float rounding.
        """
        n = cols.size
        norm = np.float32(max(n, 1) ** -0.5)
        resid = values - self.base.take(cols)
        bias = np.float32(float(resid.sum(dtype=np.float64)) / (n + self.user_bias_reg))
        if self.inputs == "ratings":
            idx, x = cols, values
        elif self.inputs == "implicit":
            idx, x = cols, np.full(n, norm, dtype=np.float32)
        else:
            idx = np.concatenate([cols, cols + self.n_movies])
            x = np.concatenate([np.full(n, norm, dtype=np.float32), (resid - bias) * norm])
        return self.hidden(x @ self.first_t.take(idx, axis=0)), float(bias)

    def encode_batch(self, csr: sp.csr_matrix) -> tuple[Array, Array]:
        """`encode_rows` for a request batch: the same features, but the first layer sums
        each user's weighted weight rows in place (``embedding_bag``) instead of a sparse
        product, about five times cheaper for a few users of ~100 ratings each."""
        counts = np.diff(csr.indptr).astype(np.float32)
        rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        cols, values = csr.indices.astype(np.int64), csr.data.astype(np.float32)
        f = self.features(rows, cols, values, counts)
        order = np.argsort(f.rows, kind="stable")  # each user's entries together
        offsets = np.zeros(csr.shape[0], dtype=np.int64)
        np.cumsum(np.bincount(f.rows, minlength=csr.shape[0])[:-1], out=offsets[1:])
        first = torch.nn.functional.embedding_bag(
            torch.from_numpy(f.cols[order]),
            torch.from_numpy(self.first_t),
            torch.from_numpy(offsets),
            mode="sum",
            per_sample_weights=torch.from_numpy(np.ascontiguousarray(f.values[order])),
        ).numpy()
        return self.hidden(first), self.user_biases(rows, cols, values, counts)

    def encode_rows(self, csr: sp.csr_matrix) -> tuple[Array, Array]:
        counts = np.diff(csr.indptr).astype(np.float32)
        rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        cols, values = csr.indices.astype(np.int64), csr.data.astype(np.float32)
        f = self.features(rows, cols, values, counts)
        width = self.first_t.shape[0]
        x = sp.csr_matrix((f.values, (f.rows, f.cols)), shape=(csr.shape[0], width))
        return self.hidden(np.asarray(x @ self.first_t)), self.user_biases(
            rows, cols, values, counts
        )

    @cached_property
    def logit_stats(self) -> LogitStats:
        return LogitStats(self)

    def logits(self, h: Array) -> Array:
        """Ranking scores over the catalog (the rating head when there is no ranking head)."""
        if self.rank is None:
            return self.ratings(h, np.zeros(h.shape[0], np.float32), None)
        weight, bias = self.rank
        out = np.ascontiguousarray(h, dtype=np.float32) @ weight.T
        out += bias
        return out

    def logits_one(self, h: Array) -> Array:
        """`logits` for one user's hidden vector (1-D in, a fresh 1-D float32 array out)."""
        if self.rank is None:
            return self.ratings(h[None, :], np.zeros(1, np.float32), None)[0]
        weight, bias = self.rank
        out = weight @ h
        out += bias
        return out

    def ratings(self, h: Array, user_bias: Array, cols: Array | None) -> Array:
        """Unclamped rating-head output for movie indices ``cols`` (None = all)."""
        weight = self.rate_w if cols is None else self.rate_w[cols]
        out = h @ weight.T + (self.rate_b if cols is None else self.rate_b[cols])
        if self.residual:
            base = self.base if cols is None else self.base[cols]
            out = out + base + user_bias[:, None]
        return out

    def cell_ratings(self, h: Array, user_bias: Array, rows: Array, cols: Array) -> Array:
        """`ratings` at cells (row of ``h``, movie) only: no users x catalog array."""
        out = np.einsum("ij,ij->i", h[rows], self.rate_w[cols]) + self.rate_b[cols]
        if self.residual:
            out = out + self.base[cols] + user_bias[rows]
        return out.astype(np.float32, copy=False)


class LogitStats:
    """Ranking logits ``h @ weight.T + bias`` over the catalog, summarised for any code h:
    their mean and spread come from moments of the weights, without the logits."""

    def __init__(self, net: NetWeights, block: int = 8192) -> None:
        if net.rank is not None:
            weight, bias = net.rank
        else:  # the rating head ranks (no user bias: a constant per user cancels)
            weight = net.rate_w
            bias = net.rate_b + (net.base if net.residual else 0.0)
        self.weight = weight  # movies x hidden
        self.bias = np.asarray(bias, dtype=np.float32)
        b = self.bias.astype(np.float64)
        n, hidden = weight.shape
        self.mean_w = weight.mean(axis=0, dtype=np.float64)
        self.mean_b = float(b.mean())
        # mean square of the logits = [h, 1] @ second @ [h, 1]: the Gram matrix of the
        # weights, bordered by their products with the bias; float64, a block of movies at
        # a time (a whole float64 copy of a 59k-movie layer would be 189 MB)
        second = np.zeros((hidden + 1, hidden + 1))
        for start in range(0, n, block):
            w = weight[start : start + block].astype(np.float64)
            second[:-1, :-1] += w.T @ w
            second[:-1, -1] += w.T @ b[start : start + block]
        second[-1, :-1] = second[:-1, -1]
        second[-1, -1] = b @ b
        self.second = second / max(n, 1)

    def moments(self, h: Array) -> tuple[Array, Array]:
        """Mean and standard deviation over the catalog of each row's logits (float64)."""
        h64 = np.asarray(h, dtype=np.float64)
        mean = h64 @ self.mean_w + self.mean_b
        bordered = np.empty((h64.shape[0], h64.shape[1] + 1))
        bordered[:, :-1], bordered[:, -1] = h64, 1.0
        square = np.einsum("ij,ij->i", bordered @ self.second, bordered)
        return mean, np.sqrt(np.maximum(square - mean * mean, 0.0))

    def zscores(self, hidden: Array, cols: Array) -> Array:
        """z-scored logits of movies ``cols`` for each row of ``hidden`` (rows x cols)."""
        mean, std = self.moments(hidden)
        logits = (hidden @ self.weight[cols].T + self.bias[cols]).astype(np.float64)
        return (logits - mean[:, None]) / (std[:, None] + 1e-6)


def top_many(scores: Array, ns: list[int]) -> list[tuple[Array, Array]]:
    """Per row, the movies of its n best finite scores, best first (ties by index), and
    their scores. -inf marks a movie never to list. One top-k over the whole batch."""
    k = min(max(ns), scores.shape[1])
    picked = torch.topk(torch.from_numpy(scores), k, dim=1, sorted=False).indices.numpy()
    found = np.take_along_axis(scores, picked, axis=1)
    rows, at = np.nonzero(np.isfinite(found))
    cols, found = picked[rows, at], found[rows, at]
    order = np.lexsort((cols, -found, rows))
    cols, found = cols[order], found[order]
    starts = np.searchsorted(rows[order], np.arange(len(ns) + 1))
    return [
        (cols[start : start + min(n, stop - start)], found[start : start + min(n, stop - start)])
        for start, stop, n in zip(starts[:-1], starts[1:], ns, strict=True)
    ]


class RatingParts(NamedTuple):
    """Each rating part, unclamped, at the same cells: the rating network's prediction, the
    joint network's rating head (None when the same network serves both) and the bias
    terms."""

    rate: Array
    joint: Array | None
    bias: Array


class Components(NamedTuple):
    """Each part's output for a batch of users, before blending (B x n_movies each); the
    two ranking parts are already standardised per user."""

    deep_scores: Array
    item_scores: Array | None
    ratings: RatingParts


def zscore(a: Array) -> Array:
    """Per-user standardisation, so parts on different scales can be mixed by weights."""
    mean = a.mean(axis=1, keepdims=True)
    std = a.std(axis=1, keepdims=True)
    return (a - mean) / (std + 1e-6)


def standardise_(a: Array, scale: float) -> Array:
    """``scale * zscore(a)`` in place on a fresh B x n float32 array (a request batch): five
    passes and one temporary, where `zscore` and a blend weight make ten passes and four
    temporaries; sums are numpy's pairwise ones, as in `zscore`."""
    a -= a.mean(axis=1, keepdims=True)
    square = np.square(a).sum(axis=1)
    std = np.sqrt(square / max(a.shape[1], 1))
    a *= (np.float32(scale) / (std + np.float32(1e-6))).astype(np.float32)[:, None]
    return a


def zscore_one(a: Array) -> Array:
    """`zscore` of one user's 1-D scores, in place (``a`` is overwritten and returned)."""
    size = max(a.size, 1)  # ufunc calls, not a.mean()/a.std(): their wrappers cost more here
    a -= np.add.reduce(a, dtype=np.float64) / size
    a *= np.float32(1.0 / (float(np.dot(a, a) / size) ** 0.5 + 1e-6))
    return a


class ItemTable:
    """The item path's weights laid out for scoring one user (built once per loaded model).

    Dense rows while the catalog is small enough (a row gather and a sum), else each source
    movie's neighbours padded to one width (a gather and a scatter-add): either beats
    slicing the CSR matrix per request, whose Python overhead dominated the fold-in.
    """

    DENSE_MAX_BYTES = 16 * 2**20  # dense up to ~2,000 movies: then the padded table wins
    GATHER_SHARE = 0.125
    """A user's rows are gathered and scatter-added while they hold at most this share of
    all the weights; past it one sparse product over every weight costs less. On a
    59,047-movie model (4.1M weights) the product took 2.1 ms whatever the user, the
    scatter-add 2 us per rated movie: 4.1 ms for 2,000, 55 ms for 17,000."""

    def __init__(self, weights: sp.csr_matrix) -> None:
        csr = sp.csr_matrix(weights, dtype=np.float32)
        n_rows, self.n_movies = csr.shape
        self.dense: Array | None = None
        if n_rows * self.n_movies * 4 <= self.DENSE_MAX_BYTES:
            self.dense = csr.toarray()
            return
        lengths = np.diff(csr.indptr)
        width = max(int(lengths.max(initial=0)), 1)
        # Only source movies with weights get a row (the closed form keeps the most-rated
        # few thousand: 8,000 of 59,047 rows, 33 MB instead of 242); the others share the
        # last row, all padding. Padding: movie 0, weight 0; 32-bit targets halve the memory.
        sources = np.flatnonzero(lengths)
        self.row_of = np.full(n_rows, sources.size, dtype=np.int64)
        self.row_of[sources] = np.arange(sources.size)
        self.targets = np.zeros((sources.size + 1, width), dtype=np.int32)
        self.weights = np.zeros((sources.size + 1, width), dtype=np.float32)
        position = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1], lengths)
        rows = np.repeat(self.row_of, lengths)
        self.targets[rows, position] = csr.indices
        self.weights[rows, position] = csr.data
        # targets x source rows: a heavy user's summed rows as one product (`GATHER_SHARE`)
        self.by_target = _torch_csr(
            sp.csr_matrix((csr.data, (csr.indices, rows)), shape=(self.n_movies, sources.size + 1))
        )

    def neighbours(self, cols: Array) -> tuple[Array, Array]:
        """(targets, weights) of source movies ``cols``, one padded row each (the padded
        layout only)."""
        rows = self.row_of.take(cols)
        return self.targets.take(rows, axis=0), self.weights.take(rows, axis=0)

    def score(self, cols: Array) -> Array:
        """The item path's scores (``ItemToItem.score_rows`` of one user): the summed weight
        rows of the rated movies ``cols``."""
        if self.dense is not None:
            return self.dense.take(cols, axis=0).sum(axis=0)
        return self.score_many([cols])[0]

    def score_many(self, cols: list[Array]) -> Array:
        """`score` of several users (B x n_movies), in torch: its gathers and scatter-adds
        run without the GIL (numpy's bincount held it) and take 32-bit targets as they are;
        one scatter-add per user, into that user's row, beat one over the batch with
        offset targets by half."""
        if self.dense is not None:  # each user's rows summed in place, no copy
            sizes = np.array([c.size for c in cols], dtype=np.int64)
            offsets = np.zeros(len(cols), dtype=np.int64)
            np.cumsum(sizes[:-1], out=offsets[1:])
            every = np.concatenate(cols).astype(np.int64, copy=False)
            return torch.nn.functional.embedding_bag(
                torch.from_numpy(every),
                torch.from_numpy(self.dense),
                torch.from_numpy(offsets),
                mode="sum",
            ).numpy()
        targets, weights = torch.from_numpy(self.targets), torch.from_numpy(self.weights)
        most = self.GATHER_SHARE * self.by_target.values().numel()
        summed = torch.zeros(len(cols), self.n_movies)
        for row, user_cols in zip(summed, cols, strict=True):
            rated = torch.from_numpy(self.row_of.take(user_cols))
            if rated.numel() * self.targets.shape[1] > most:
                indicator = torch.zeros(self.targets.shape[0])
                indicator[rated] = 1.0
                row.copy_(torch.mv(self.by_target, indicator))
                continue
            row.index_add_(
                0, targets.index_select(0, rated).view(-1), weights.index_select(0, rated).view(-1)
            )
        return summed.numpy()


def _torch_csr(matrix: sp.csr_matrix) -> torch.Tensor:
    """A float32 sparse CSR tensor with 32-bit indices (torch's product on them took a third
    of the time it took on 64-bit ones)."""
    return torch.sparse_csr_tensor(
        torch.from_numpy(matrix.indptr.astype(np.int32)),
        torch.from_numpy(matrix.indices.astype(np.int32)),
        torch.from_numpy(matrix.data.astype(np.float32)),
        size=matrix.shape,
        check_invariants=True,  # once, at load
    )


@dataclass(frozen=True)
class UserState:
    """One user's encoding: what the scores and ratings of any movie need."""

    rank_hidden: Array
    rate_hidden: Array
    rank_user_bias: float
    rate_user_bias: float
    bias_user_bias: float
    cols: Array


@dataclass(frozen=True)
class UserBatch:
    """Several users' encodings, stacked (row i is user i): the request batches' state."""

    rank_hidden: Array
    rate_hidden: Array
    rank_user_bias: Array
    rate_user_bias: Array
    bias_user_bias: Array
    cols: list[Array]

    @classmethod
    def of(cls, states: list[UserState]) -> UserBatch:
        return cls(
            np.stack([s.rank_hidden for s in states]),
            np.stack([s.rate_hidden for s in states]),
            np.array([s.rank_user_bias for s in states], np.float32),
            np.array([s.rate_user_bias for s in states], np.float32),
            np.array([s.bias_user_bias for s in states], np.float32),
            [s.cols for s in states],
        )

    def __len__(self) -> int:
        return len(self.cols)

    def user(self, i: int) -> UserState:
        return UserState(
            self.rank_hidden[i],
            self.rate_hidden[i],
            float(self.rank_user_bias[i]),
            float(self.rate_user_bias[i]),
            float(self.bias_user_bias[i]),
            self.cols[i],
        )


class FoldInScorer:
    """A user's current ratings in, ranking scores and clamped predicted ratings out."""

    def __init__(self, model: HybridModel) -> None:
        self.n_movies = model.n_movies
        self.rank_net = NetWeights(model.rank_net)
        self.rate_net = (
            self.rank_net if model.rate_net is model.rank_net else NetWeights(model.rate_net)
        )
        self.item_path = model.item_path
        self.bias = model.bias
        self.blend = model.blend
        self.popularity = model.log_popularity.astype(np.float32)
        self.scale = model.rating_scale
        self.penalty = (self.blend.popularity_penalty * self.popularity).astype(np.float32)
        # Each ranking part's share of the blend. A part at 0 is not computed at all: the
        # item path's table is not built, nor the deep product over the catalog (the item
        # path alone ranks for the 25M-rating models).
        item_ranks = self.item_path is not None and self.blend.item_weight > 0
        self.item_share = self.blend.item_weight if item_ranks else 0.0
        self.deep_share = 1.0 - self.item_share
        # Likewise the rating network: at a 0 share (the blend of the 25M-rating models)
        # it is neither encoded nor asked for ratings; its state is empty (0 columns).
        self.rate_needed = self.blend.rating_weight > 0
        self.rate_apart = self.rate_net is not self.rank_net

    @cached_property
    def item_table(self) -> ItemTable | None:
        """Built on first use: only serving needs it (the recommender warms it at load)."""
        if self.item_path is None or self.item_share == 0:
            return None
        return ItemTable(self.item_path.weights)

    @cached_property
    def explainer(self) -> Explainer:
        """Leave-one-out reasons for a recommendation (`app.ml.explain`)."""
        from app.ml.explain import Explainer

        return Explainer(self)

    @cached_property
    def similarity(self) -> ItemSimilarity:
        """Movies alike by the model's item representations (`app.ml.explain`)."""
        from app.ml.explain import ItemSimilarity

        return ItemSimilarity(self)

    # -- one user (serving) ------------------------------------------------------------
    def encode(self, cols: Array, values: Array) -> UserState:
        """State for ratings ``values`` of movie indices ``cols`` (unique, valid)."""
        idx = np.asarray(cols, dtype=np.int64)
        vals = np.asarray(values, dtype=np.float32)
        rank_h, rank_bias = self.rank_net.encode_user(idx, vals)
        rate_h, rate_bias = rank_h, rank_bias
        if self.rate_apart:
            rate_h, rate_bias = np.zeros(0, np.float32), 0.0
            if self.rate_needed:
                rate_h, rate_bias = self.rate_net.encode_user(idx, vals)
        return UserState(rank_h, rate_h, rank_bias, rate_bias, self.bias.user_bias(idx, vals), idx)

    def encode_many(self, cols: list[Array], values: list[Array]) -> UserBatch:
        """`encode` for several users at once, through the batch path (`encode_batch`): a
        handful of numpy calls per batch instead of a few dozen per user."""
        if len(cols) == 1:
            return UserBatch.of([self.encode(cols[0], values[0])])
        indptr = np.zeros(len(cols) + 1, dtype=np.int64)
        np.cumsum([c.size for c in cols], out=indptr[1:])
        idx = np.concatenate(cols).astype(np.int64, copy=False)
        vals = np.concatenate(values).astype(np.float32, copy=False)
        csr = sp.csr_matrix((vals, idx, indptr), shape=(len(cols), self.n_movies))
        rank_h, rank_bias = self.rank_net.encode_batch(csr)
        rate_h, rate_bias = rank_h, rank_bias
        if self.rate_apart:
            rate_h, rate_bias = np.zeros((len(cols), 0), np.float32), np.zeros_like(rank_bias)
            if self.rate_needed:
                rate_h, rate_bias = self.rate_net.encode_batch(csr)
        return UserBatch(rank_h, rate_h, rank_bias, rate_bias, self.bias.user_biases(csr), cols)

    def scores(self, state: UserState) -> Array:
        """Blended ranking scores for every movie (higher = recommend first): `blend_scores`
        of the z-scored parts, computed in place on one fresh array (the hot path)."""
        if self.item_table is None:
            mixed = zscore_one(self.rank_net.logits_one(state.rank_hidden))
        else:
            mixed = zscore_one(self.item_table.score(state.cols))
            mixed *= np.float32(self.blend.item_weight)
            if self.deep_share > 0:
                deep = zscore_one(self.rank_net.logits_one(state.rank_hidden))
                deep *= np.float32(self.deep_share)
                mixed += deep
        if self.blend.popularity_penalty:
            mixed -= self.penalty
        return mixed

    def scores_many(self, batch: UserBatch) -> Array:
        """`scores` for several users at once (B x n_movies, a fresh array): one matrix
        product over the catalog, then `blend_scores` of the z-scored parts in place."""
        if len(batch) == 1:
            return self.scores(batch.user(0))[None, :]
        return self._exact_many(batch)

    def _exact_many(self, batch: UserBatch) -> Array:
        if self.item_table is None:  # no item path, or a blend that gives it no share
            mixed = standardise_(self.rank_net.logits(batch.rank_hidden), 1.0)
        else:
            mixed = standardise_(self.item_table.score_many(batch.cols), self.blend.item_weight)
            if self.deep_share > 0:
                mixed += standardise_(self.rank_net.logits(batch.rank_hidden), self.deep_share)
        if self.blend.popularity_penalty:
            mixed -= self.penalty
        return mixed

    def ratings(self, state: UserState, cols: Array) -> Array:
        """Predicted ratings, clamped to the rating scale, for movie indices ``cols`` only."""
        return self.ratings_many(UserBatch.of([state]), [cols])[0]

    def ratings_many(self, batch: UserBatch, cols: list[Array]) -> list[Array]:
        """`ratings` for several users at once: one cell product per network for the whole
        batch (each user's own movie indices ``cols``), then the blend."""
        sizes = [c.size for c in cols]
        rows = np.repeat(np.arange(len(batch)), sizes)
        idx = np.concatenate(cols).astype(np.int64, copy=False)
        rate = np.zeros(idx.size, np.float32)  # the blend's share of it: 0
        if self.rate_needed:
            rate = self.rate_net.cell_ratings(batch.rate_hidden, batch.rate_user_bias, rows, idx)
        joint = None
        if self.blend.joint_rating_weight and self.rate_apart:
            joint = self.rank_net.cell_ratings(batch.rank_hidden, batch.rank_user_bias, rows, idx)
        bias = self.bias.predict(batch.bias_user_bias[rows], idx)
        mixed = self.blend_ratings(RatingParts(rate, joint, bias), self.blend)
        return np.split(mixed, np.cumsum(sizes[:-1]))

    # -- a batch of users (evaluation) -----------------------------------------------------
    def components(self, rows: sp.csr_matrix) -> Components:
        """Every part over the whole catalog for a batch of users (evaluation)."""
        csr = sp.csr_matrix(rows, dtype=np.float32)
        deep, item = self.ranking_parts(csr)
        joint = self.blend.joint_rating_weight > 0  # a part the blend gives no share is skipped
        return Components(deep, item, self.rating_parts(csr, joint=joint))

    def ranking_parts(self, rows: sp.csr_matrix) -> tuple[Array, Array | None]:
        """The standardised deep and item-path scores (B x n_movies each)."""
        csr = sp.csr_matrix(rows, dtype=np.float32)
        rank_h, _ = self.rank_net.encode_rows(csr)
        item = zscore(self.item_path.score_rows(csr)) if self.item_path is not None else None
        return zscore(self.rank_net.logits(rank_h)), item

    def rating_parts(
        self, rows: sp.csr_matrix, cells: tuple[Array, Array] | None = None, joint: bool = True
    ) -> RatingParts:
        """Each rating part at ``cells`` (row of ``rows``, movie index), or over the whole
        catalog (B x n_movies) when None; the joint network's head only when ``joint``. Each
        network folds in its own user bias."""
        csr = sp.csr_matrix(rows, dtype=np.float32)
        user_bias = self.bias.user_biases(csr)
        nets = [self.rate_net]
        if joint and self.rate_net is not self.rank_net:
            nets.append(self.rank_net)
        outputs: list[Array] = []
        for net in nets:
            h, net_bias = net.encode_rows(csr)
            if cells is None:
                outputs.append(net.ratings(h, net_bias, None))
            else:
                outputs.append(net.cell_ratings(h, net_bias, *cells))
        if cells is None:
            bias = self.bias.mean + self.bias.movie_bias[None, :] + user_bias[:, None]
        else:
            bias = self.bias.predict(user_bias[cells[0]], cells[1])
        return RatingParts(outputs[0], outputs[1] if len(outputs) > 1 else None, bias)

    def score_rows(self, rows: sp.csr_matrix) -> tuple[Array, Array]:
        """(scores, clamped ratings) for each row of current ratings: a metrics Scorer."""
        return self.combine(self.components(rows), self.blend)

    def combine(self, parts: Components, blend: Blend) -> tuple[Array, Array]:
        """Blend precomputed parts with ``blend`` (training tries several on one pass)."""
        scores = self.blend_scores(parts.deep_scores, parts.item_scores, blend)
        ratings = self.blend_ratings(parts.ratings, blend)
        return scores, ratings

    # -- the blend, shared by both paths -----------------------------------------------------
    def blend_scores(self, deep: Array, item: Array | None, blend: Blend) -> Array:
        """Mix standardised deep and item-path scores, then penalise popularity."""
        if item is None or blend.item_weight <= 0:
            mixed = deep.copy()
        else:
            mixed = (1.0 - blend.item_weight) * deep + blend.item_weight * item
        if blend.popularity_penalty:
            mixed -= blend.popularity_penalty * self.popularity
        return mixed.astype(np.float32, copy=False)

    def blend_ratings(self, parts: RatingParts, blend: Blend) -> Array:
        """The blend's shares of the two networks, the rest bias terms, clamped to the scale."""
        mixed = blend.rating_weight * parts.rate + (1.0 - blend.rating_weight) * parts.bias
        if parts.joint is not None and blend.joint_rating_weight:
            mixed += blend.joint_rating_weight * (parts.joint - parts.bias)
        low, high = self.scale  # maximum/minimum: np.clip's wrapper costs more than the clamp
        return np.minimum(np.maximum(mixed, low), high).astype(np.float32, copy=False)
