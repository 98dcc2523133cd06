"""Scoring: a trained model's answers for users' current ratings, served and evaluated alike.

A trained model (`app.ml.hybrid.HybridModel`) has up to five parts: the joint autoencoder
at its best ranking epoch, the network serving ratings (a rating-only network, or the
joint one at its best rating epoch), the linear item-to-item path, the bias terms the
rating heads are built on and a matrix factorisation of their residuals
(`app.ml.factors`), whose user factors are folded in here like everything else.
`FoldInScorer` runs each network's own forward
(`StackedAutoencoder.encode` and its heads, under `torch.inference_mode`) over a batch of
users' current ratings (a lone request is a batch of one, evaluation a batch of a
thousand), z-scores the ranking parts and mixes them with the one pair of blend functions
that validation also uses to choose the blend (`app.ml.blend`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from app.ml.factors import ItemFactors
from app.ml.hybrid import Blend, HybridModel
from app.ml.model import Encoded, SparseBatch, StackedAutoencoder
from app.ml.sparse_ops import RatingPattern

Array = np.ndarray


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
    joint network's rating head (None when the same network serves both), the bias terms
    and the matrix factorisation's predicted residual on them (None: no share)."""

    rate: Array
    joint: Array | None
    bias: Array
    factors: Array | None = None


class Components(NamedTuple):
    """Each part's output for a batch of users, before blending (B x n_movies each); the
    two ranking parts are already z-scored per user."""

    deep_scores: Array
    item_scores: Array | None
    ratings: RatingParts


def zscore(a: Array) -> Array:
    """Per-user standardisation, in place on a fresh float32 B x n array (returned), so
    parts on different scales can be mixed by weights."""
    a -= a.mean(axis=1, keepdims=True)
    std = np.sqrt(np.square(a).sum(axis=1) / max(a.shape[1], 1))
    a *= (1.0 / (std + np.float32(1e-6))).astype(np.float32)[:, None]
    return a


@dataclass(frozen=True)
class UserBatch:
    """Several users' encodings (row i is user i): what their scores and ratings need."""

    rank: Encoded
    rate: Encoded | None
    """the rating network's (the ranking network's own when it serves ratings too; None
    when the blend gives it no share)"""
    bias_user_bias: Array
    cols: list[Array]
    """each user's rated movie indices"""
    sources: list[Array]
    """each user's rated movies that feed the item path (`ItemToItem.sources`)"""
    user_factors: Array | None = None
    """the matrix factorisation's user factors, folded in (None: the part has no share)"""

    def __len__(self) -> int:
        return len(self.cols)


def _cells(rows: Array, cols: Array, users: int) -> RatingPattern:
    """The pattern of cells (rows sorted) at which a rating head is read."""
    return RatingPattern.of(
        torch.from_numpy(np.asarray(rows, dtype=np.int64)),
        torch.from_numpy(np.asarray(cols, dtype=np.int64)),
        users,
    )


class FoldInScorer:
    """Users' current ratings in, ranking scores and clamped predicted ratings out."""

    def __init__(self, model: HybridModel) -> None:
        self.n_movies = model.n_movies
        self.rank_net: StackedAutoencoder = model.rank_net.eval()
        self.rate_net: StackedAutoencoder = model.rate_net.eval()
        self.item_path = model.item_path
        self.bias = model.bias
        self.blend = model.blend
        self.popularity = model.log_popularity.astype(np.float32)
        self.scale = model.rating_scale
        # A ranking part the blend gives no share is not computed at all: the item path's
        # table is not built, nor the deep product over the catalog (the item path alone
        # ranks for the 25M-rating models); likewise a rating network at a 0 share.
        item_ranks = self.item_path is not None and self.blend.item_weight > 0
        self.item_share = self.blend.item_weight if item_ranks else 0.0
        self.deep_share = 1.0 - self.item_share
        self.rate_needed = self.blend.rating_weight > 0
        self.rate_apart = self.rate_net is not self.rank_net
        self.factors = model.factors if self.blend.factor_weight > 0 else None

    @cached_property
    def rank_head_t(self) -> torch.Tensor | None:
        """The ranking head as hidden x movies, contiguous (one copy, built at load): MKL
        multiplies a request batch by the layer's transposed view several times slower.
        None where the deep part does not rank."""
        head = self.rank_net.rank_out
        if head is None or self.deep_share == 0:
            return None
        return head.weight.detach().t().contiguous()

    @cached_property
    def item_table(self) -> ItemTable | None:
        """Built on first use: only serving needs it (the recommender builds it at load)."""
        if self.item_path is None or self.item_share == 0:
            return None
        return ItemTable(self.item_path.weights)

    # -- serving: a batch of users, each with their own rated movies ----------------------
    def encode(self, cols: list[Array], values: list[Array]) -> UserBatch:
        """Each network's encoding of users who rated movie indices ``cols[i]`` (unique,
        valid) with ``values[i]``."""
        users = np.repeat(np.arange(len(cols), dtype=np.int64), [c.size for c in cols])
        idx = np.concatenate(cols).astype(np.int64, copy=False)
        vals = np.concatenate(values).astype(np.float32, copy=False)
        batch = SparseBatch(
            torch.from_numpy(users), torch.from_numpy(idx), torch.from_numpy(vals), len(cols)
        )
        with torch.inference_mode():
            rank = self.rank_net.encode(batch)
            rate: Encoded | None = rank
            if self.rate_apart:
                rate = self.rate_net.encode(batch) if self.rate_needed else None
        biases = self.bias.user_biases_of(users, idx, vals, len(cols))
        sources = [self.sources(c, v) for c, v in zip(cols, values, strict=True)]
        user_factors = None
        if self.factors is not None:  # from the residuals of the biases just folded in
            indptr = np.zeros(len(cols) + 1, dtype=np.int64)
            np.cumsum([c.size for c in cols], out=indptr[1:])
            resid = (vals - self.bias.predict(biases[users], idx)).astype(np.float32, copy=False)
            rows = sp.csr_matrix((resid, idx, indptr), shape=(len(cols), self.n_movies))
            user_factors = self.factors.fold_in(rows)
        return UserBatch(rank, rate, biases, list(cols), sources, user_factors)

    def sources(self, cols: Array, values: Array) -> Array:
        """The movies among a user's ratings that feed the item path."""
        return cols if self.item_path is None else self.item_path.sources(cols, values)

    def scores(self, batch: UserBatch) -> Array:
        """Blended ranking scores for every movie (B x n_movies, a fresh array; higher =
        recommend first)."""
        item = None
        if self.item_table is not None:
            item = zscore(self.item_table.score_many(batch.sources))
        deep = None
        if self.deep_share > 0:
            with torch.inference_mode():
                rank = batch.rank
                logits = self.rank_net.rank_logits(rank.h, rank.user_bias, self.rank_head_t)
            deep = zscore(logits.numpy())
        return self.blend_scores(deep, item, self.blend)

    def ratings(self, batch: UserBatch, cols: list[Array]) -> list[Array]:
        """Predicted ratings, clamped to the rating scale, for each user's movie indices
        ``cols[i]`` only: one cell product per network for the whole batch, then the blend."""
        sizes = [c.size for c in cols]
        rows = np.repeat(np.arange(len(batch)), sizes)
        idx = np.concatenate(cols).astype(np.int64, copy=False)
        cells = _cells(rows, idx, len(batch))
        rate = np.zeros(idx.size, np.float32)  # the blend's share of it: 0
        joint = None
        with torch.inference_mode():
            if batch.rate is not None and self.rate_needed:
                rate = self.rate_net.ratings_at(batch.rate.h, batch.rate.user_bias, cells).numpy()
            if self.blend.joint_rating_weight and self.rate_apart:
                h, user_bias = batch.rank.h, batch.rank.user_bias
                joint = self.rank_net.ratings_at(h, user_bias, cells).numpy()
        bias = self.bias.predict(batch.bias_user_bias[rows], idx)
        factors = None
        if self.factors is not None and batch.user_factors is not None:
            factors = self.factors.at(batch.user_factors, rows, idx)
        mixed = self.blend_ratings(RatingParts(rate, joint, bias, factors), self.blend)
        return np.split(mixed, np.cumsum(sizes[:-1]))

    # -- evaluation: rows of a rating matrix, every part over the whole catalog ------------
    def components(self, rows: sp.csr_matrix) -> Components:
        """Every part over the whole catalog for a batch of users (evaluation)."""
        csr = sp.csr_matrix(rows, dtype=np.float32)
        deep, item = self.ranking_parts(csr)
        joint = self.blend.joint_rating_weight > 0  # a part the blend gives no share is skipped
        return Components(deep, item, self.rating_parts(csr, joint=joint))

    def ranking_parts(self, rows: sp.csr_matrix) -> tuple[Array, Array | None]:
        """The z-scored deep and item-path scores (B x n_movies each)."""
        csr = sp.csr_matrix(rows, dtype=np.float32)
        with torch.inference_mode():
            enc = self.rank_net.encode(SparseBatch.from_csr(csr))
            deep = self.rank_net.rank_logits(enc.h, enc.user_bias, self.rank_head_t).numpy()
        item = zscore(self.item_path.score_rows(csr)) if self.item_path is not None else None
        return zscore(deep), item

    def rating_parts(
        self, rows: sp.csr_matrix, cells: tuple[Array, Array] | None = None, joint: bool = True
    ) -> RatingParts:
        """Each rating part at ``cells`` (row of ``rows``, sorted; movie index), or over the
        whole catalog (B x n_movies) when None; the joint network's head only when
        ``joint``. Each network folds in its own user bias."""
        csr = sp.csr_matrix(rows, dtype=np.float32)
        user_bias = self.bias.user_biases(csr)
        nets = [self.rate_net]
        if joint and self.rate_apart:
            nets.append(self.rank_net)
        batch = SparseBatch.from_csr(csr)
        pattern = _cells(*cells, csr.shape[0]) if cells is not None else None
        outputs: list[Array] = []
        with torch.inference_mode():
            for net in nets:
                enc = net.encode(batch)
                if pattern is None:
                    outputs.append(net.ratings_all(enc.h, enc.user_bias).numpy())
                else:
                    outputs.append(net.ratings_at(enc.h, enc.user_bias, pattern).numpy())
        if cells is None:
            bias = self.bias.mean + self.bias.movie_bias[None, :] + user_bias[:, None]
        else:
            bias = self.bias.predict(user_bias[cells[0]], cells[1])
        factors = None
        if self.factors is not None:
            residuals = self.bias.residuals(csr, user_bias)
            factors = self.factor_part(residuals, self.factors, cells)
        joint_part = outputs[1] if len(outputs) > 1 else None
        return RatingParts(outputs[0], joint_part, bias, factors)

    @staticmethod
    def factor_part(
        residuals: sp.csr_matrix, factors: ItemFactors, cells: tuple[Array, Array] | None = None
    ) -> Array:
        """The matrix factorisation's predicted residual at ``cells`` (as `rating_parts`),
        its user factors folded in from the rows' ``residuals`` (`BiasTerms.residuals`);
        validation scores candidate fits with it, the residuals computed once."""
        users = factors.fold_in(residuals)
        if cells is None:
            return (users @ factors.factors.T).astype(np.float32)
        return factors.at(users, *cells)

    def score_rows(self, rows: sp.csr_matrix) -> tuple[Array, Array]:
        """(scores, clamped ratings) for each row of current ratings: a metrics Scorer."""
        return self.combine(self.components(rows), self.blend)

    def combine(self, parts: Components, blend: Blend) -> tuple[Array, Array]:
        """Blend precomputed parts with ``blend`` (training tries several on one pass)."""
        scores = self.blend_scores(parts.deep_scores, parts.item_scores, blend)
        ratings = self.blend_ratings(parts.ratings, blend)
        return scores, ratings

    # -- the blend, shared by serving and evaluation ---------------------------------------
    def blend_scores(self, deep: Array | None, item: Array | None, blend: Blend) -> Array:
        """Mix z-scored deep and item-path scores, then penalise popularity (``deep`` may
        be None only where the item path takes the whole share)."""
        weight = blend.item_weight if item is not None else 0.0
        if weight <= 0:
            assert deep is not None
            mixed = deep.copy()
        elif weight >= 1 or deep is None:
            assert item is not None
            mixed = item * np.float32(weight)
        else:
            assert item is not None
            mixed = (1.0 - weight) * deep + weight * item
        if blend.popularity_penalty:
            mixed -= blend.popularity_penalty * self.popularity
        return mixed.astype(np.float32, copy=False)

    def blend_ratings(self, parts: RatingParts, blend: Blend) -> Array:
        """The blend's shares of the two networks and the matrix factorisation, the rest
        bias terms, clamped to the scale."""
        mixed = blend.rating_weight * parts.rate + (1.0 - blend.rating_weight) * parts.bias
        if parts.joint is not None and blend.joint_rating_weight:
            mixed += blend.joint_rating_weight * (parts.joint - parts.bias)
        if parts.factors is not None and blend.factor_weight:
            mixed += np.float32(blend.factor_weight) * parts.factors
        low, high = self.scale
        return np.minimum(np.maximum(mixed, low), high).astype(np.float32, copy=False)


class ItemTable:
    """The item path's weights laid out for scoring one user (built once per loaded model).

    Dense rows while the catalog is small enough (a row gather and a sum), else each source
    movie's neighbours padded to one width (a gather and a scatter-add): either beats
    slicing the CSR matrix per request, whose Python overhead dominated the fold-in.
    """

    DENSE_MAX_BYTES = 16 * 2**20  # dense up to ~2,000 movies: then the padded table wins
    GATHER_SHARE = 0.125
    """A user's rows are gathered and scatter-added while they hold at most this share of
    all the weights; past it one sparse product over every weight costs less (at 59,047
    movies the product costs what the scatter-add of ~1,000 rated movies does)."""

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
