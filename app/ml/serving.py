"""Inference: the one forward pass that evaluation, /predictions and /recommendations share.

A trained model (`app.ml.hybrid.HybridModel`) has up to four parts: the joint autoencoder
at its best ranking epoch, the network serving ratings (a rating-only network, or the
joint one at its best rating epoch), the linear item-to-item path and the bias terms the
rating heads are built on. `FoldInScorer` turns a user's current ratings into scores and
predicted ratings from numpy copies of those parts, for one user (the request hot path:
the first layer gathers only the weight rows of the rated movies, the rating heads run
only for the movies asked for) or for a batch of users (evaluation), with the same
feature and blend functions either way. A request batch on a large catalog ranks in two
passes (`QuantizedRanking`, `top_many`): int8 over the catalog, then float32 on the few
movies the first pass cannot rule out, so the answer is the float32 one.
The torch forward (`StackedAutoencoder.forward`) is the training-side definition; a test
pins this pass to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
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


def _numpy_gemm(a: Array, b: Array) -> Array:
    return a @ b


def _torch_gemm(a: Array, b: Array) -> Array:
    return torch.mm(torch.from_numpy(a), torch.from_numpy(b)).numpy()


# The BLAS libraries that can multiply a request batch by the ranking layer: numpy's
# (OpenBLAS) and torch's (MKL). Both release the GIL; which is faster depends on the CPU.
GEMMS: dict[str, Callable[[Array, Array], Array]] = {"numpy": _numpy_gemm, "torch": _torch_gemm}


def best_times(calls: Mapping[str, Callable[[], object]], repeats: int = 3) -> dict[str, float]:
    """Each call's best wall time of ``repeats + 1`` runs, interleaved so that a burst of
    load slows all alike (the first run also pays first-call allocations and page faults,
    and rarely wins)."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats + 1):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


class RankProduct(NamedTuple):
    """How `NetWeights.logits` multiplies a request batch by the ranking layer: a GEMM of
    `GEMMS` and its right operand, the layer as hidden x movies."""

    gemm: str
    layer_t: Array
    layout: str  # "view": the torch layer transposed in place; "contiguous": a copy

    @property
    def name(self) -> str:
        return f"{self.gemm}/{self.layout}"


def fastest_product(weight_t: Array, rows: int = 8, repeats: int = 3) -> RankProduct:
    """The GEMM of `GEMMS` and the layout of ``weight_t`` (hidden x movies: the torch
    layer's transposed view, or a contiguous copy) that multiply ``rows`` users fastest on
    this machine (`best_times`); the copy is kept only when it wins.

    Measured, not assumed: for 8 users and a 400 x 59,047 layer, torch's MKL took twice
    numpy's OpenBLAS time on an AMD EPYC, while on another machine it won by half; on an
    AMD EPYC 7003 the contiguous copy cut numpy's product at 400 x 10,000 from 3.4 to
    2.0 ms (16 MB more). The winner reads the layer once per request batch.
    """
    batch = np.zeros((rows, weight_t.shape[0]), dtype=np.float32)
    layouts = {"view": weight_t}
    if not weight_t.flags.c_contiguous:
        layouts["contiguous"] = np.ascontiguousarray(weight_t)
    products = [
        RankProduct(gemm, layer_t, layout) for gemm in GEMMS for layout, layer_t in layouts.items()
    ]
    calls = {p.name: partial(GEMMS[p.gemm], batch, p.layer_t) for p in products}
    best = best_times(calls, repeats)
    return min(products, key=lambda p: best[p.name])


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
        # The ranking layer as torch keeps it (movies x hidden, contiguous): the few movies
        # a quantized first pass leaves (`QuantizedRanking`) are rows, gathered at once. A
        # batch's product over the catalog may use a transposed copy (`rank_product`).
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
    def rank_product(self) -> RankProduct | None:
        """The GEMM and layout `logits` uses, timed on this layer at first use (see
        `fastest_product`); None without a ranking head."""
        return fastest_product(self.rank[0].T) if self.rank is not None else None

    @cached_property
    def logit_stats(self) -> LogitStats:
        return LogitStats(self)

    def logits(self, h: Array) -> Array:
        """Ranking scores over the catalog (the rating head when there is no ranking head)."""
        if self.rank is None:
            return self.ratings(h, np.zeros(h.shape[0], np.float32), None)
        product, bias = self.rank_product, self.rank[1]
        assert product is not None
        out = GEMMS[product.gemm](np.ascontiguousarray(h, dtype=np.float32), product.layer_t)
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


class QuantizedRanking:
    """The ranking layer in int8, for a first pass over the whole catalog that is exact
    to within a known bound, so that only the few movies it cannot rule out need the
    float32 layer (`top_many`). At 59,047 movies the int8 product of a request batch
    of 8 took 2-3 ms (`Int8Kernel`) where float32 took 11-14.

    Weights are rounded per movie (scale s_m = max|w_m| / 127, so |w - w'| <= s_m / 2),
    the hidden codes per user (s_u, likewise). Then for every movie
    |h.w - h'.w'| <= ||h||_1 max(s_m) / 2 + s_u max ||w'_m||_1 / 2 + float rounding,
    a bound per user (on a 10,000-movie model it left ~20 candidates for a top 10).
    """

    def __init__(self, weight: Array, bias: Array) -> None:
        self.width = weight.shape[1]
        peak = np.abs(weight).max(axis=1)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        quantized = np.rint(weight / scale[:, None]).astype(np.int8)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.max_scale = float(scale.max(initial=0.0))
        rounded_l1 = np.abs(quantized).sum(axis=1, dtype=np.float64) * scale
        self.max_l1 = float(rounded_l1.max(initial=0.0))
        self.max_weight = float(peak.max(initial=0.0))
        self.max_bias = float(np.abs(self.bias).max(initial=0.0))
        self.kernel = Int8Kernel.fastest(quantized, scale)

    def faster_than(self, net: NetWeights, rows: int = 8, share: float = 0.75) -> bool:
        """Whether this pass for a batch of ``rows`` users takes under ``share`` of the time
        of ``net``'s float32 product (the rest pays the candidates' exact rescoring), timed
        on the layers themselves (`best_times`)."""
        h = np.random.default_rng(0).standard_normal((rows, self.width)).astype(np.float32)
        best = best_times({"int8": partial(self.logits, h), "float32": partial(net.logits, h)})
        return best["int8"] < share * best["float32"]

    def logits(self, h: Array) -> tuple[Array, Array]:
        """(approximate logits, B x movies float32; each row's error bound, float64)."""
        l1 = np.abs(h).sum(axis=1, dtype=np.float64)
        peak = np.abs(h).max(axis=1)
        h_scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        h8 = np.rint(h / h_scale[:, None]).astype(np.int8)
        out = self.kernel.product(h8)  # h8 @ int8 weights.T, times each movie's scale
        out *= torch.from_numpy(h_scale)[:, None]
        out += torch.from_numpy(self.bias)
        rounding = l1 * self.max_scale / 2 + h_scale * self.max_l1 / 2
        magnitude = l1 * self.max_weight + self.max_bias  # float32 rounding: ~1e-7 of it
        return out.numpy(), rounding * 1.001 + magnitude * 1e-6


class Int8Kernel:
    """``h8 @ w8.T * scale`` for int8 codes (users x hidden, movies x hidden) and a float32
    scale per movie: the first pass's one product over the catalog.

    oneDNN's int8 linear on weights packed once at load (`torch.ops.onednn`, the kernel
    PyTorch's x86 quantization lowers to) took 1.4-3 ms per batch of 8 on the
    59,047-movie layer, `torch._int_mm` 3-7 (the faster figures with the layer in cache).
    It is used only where it is exact: its integer sums must equal int64 ones on inputs
    built to overflow 16-bit intermediates (CPUs without VNNI may saturate them).
    Elsewhere `torch._int_mm` on the movies x hidden codes, transposed as a view.
    """

    def __init__(self, codes: Array, scale: Array, packed: torch.Tensor | None = None) -> None:
        self.scale = torch.from_numpy(scale)
        self.packed = packed
        self.zero_points = torch.zeros(scale.size, dtype=torch.long)
        # hidden x movies as a view of movies x hidden: _int_mm's faster layout
        self.codes_t = None if packed is not None else torch.from_numpy(codes).t()

    @classmethod
    def fastest(cls, codes: Array, scale: Array) -> Int8Kernel:
        codes = np.ascontiguousarray(codes)
        packed = _onednn_pack(codes)
        if packed is not None:
            kernel = cls(codes, scale, packed)
            if kernel.exact_on(_overflow_probes(codes), codes):
                return kernel
        return cls(codes, scale)

    def product(self, h8: Array) -> torch.Tensor:
        """B x movies float32: each user's integer dot products, times each movie's scale."""
        codes = torch.from_numpy(np.ascontiguousarray(h8))
        if self.codes_t is not None:
            out = torch._int_mm(codes, self.codes_t).float()
            out *= self.scale
            return out
        return torch.ops.onednn.qlinear_pointwise(
            codes, 1.0, 0, self.packed, self.scale, self.zero_points, None,
            1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip

    def exact_on(self, probes: Array, codes: Array, block: int = 4096) -> bool:
        """Whether the product of ``probes`` equals the int64 one times the scales (the
        int64 codes a block of movies at a time: 59,047 at once would take 189 MB)."""
        try:
            got = self.product(probes).double().numpy()
        except RuntimeError:
            return False
        wide, scale = probes.astype(np.int64), self.scale.double().numpy()
        for start in range(0, codes.shape[0], block):
            cells = slice(start, start + block)
            want = (wide @ codes[cells].astype(np.int64).T) * scale[cells]
            if not np.allclose(got[:, cells], want, rtol=1e-6, atol=0.0):
                return False
        return True


def _onednn_pack(codes: Array) -> torch.Tensor | None:
    """The codes in oneDNN's blocked layout, or None where this torch build has no oneDNN."""
    prepack = getattr(getattr(torch.ops, "onednn", None), "qlinear_prepack", None)
    if prepack is None or codes.shape[0] == 0:
        return None
    try:
        return prepack(torch.from_numpy(codes), [1, codes.shape[1]])
    except RuntimeError:
        return None


def _overflow_probes(codes: Array) -> Array:
    """Inputs whose products with the largest rows add up to the biggest integer sums: each
    such row's signs times 127, both ways, and all 127 and all -127."""
    l1 = np.abs(codes.astype(np.int32)).sum(axis=1)
    signs = np.where(codes[np.argsort(l1)[-4:]] >= 0, 127, -127)
    full = np.repeat([[127], [-127]], codes.shape[1], axis=1)
    return np.concatenate([signs, -signs, full]).astype(np.int8)


@dataclass(frozen=True)
class BatchScores:
    """Blended ranking scores of a request batch (B x movies): each row within ``slack``
    of the exact scores (0: exact), which `exact` gives for any movies."""

    values: Array
    slack: Array
    exact: Callable[[Array, Array], Array] | None = None
    """(rows, cols) -> the exact scores at those cells"""

    @classmethod
    def of_exact(cls, values: Array) -> BatchScores:
        return cls(values, np.zeros(values.shape[0]))


def top_many(scores: BatchScores, ns: list[int], extra: int = 32) -> list[tuple[Array, Array]]:
    """Per row, the movies of its n best finite scores, best first (ties by index), and
    their exact scores. -inf marks a movie never to list.

    One top-k over the batch picks n candidates per row (torch's, ~6x faster than numpy's
    argpartition on a 10,000-movie row), n + ``extra`` where scores are approximate.
    There, every movie within twice its slack of the row's n-th best stays a candidate
    (the true top n are among them; a row whose band reaches past the top-k is scanned
    whole), and the candidates of the whole batch are rescored exactly at once and
    ranked on those scores. Whole-batch numpy steps only: a step per row cost more.
    """
    values = scores.values
    approximate = scores.slack > 0
    inexact = bool(approximate.any())
    k = min(max(ns) + (extra if inexact else 0), values.shape[1])
    picked = torch.topk(torch.from_numpy(values), k, dim=1, sorted=False).indices.numpy()
    found = np.take_along_axis(values, picked, axis=1)
    keep = np.isfinite(found)
    if inexact:
        ordered = -np.sort(-found, axis=1)  # best first, -inf last
        nth = ordered[np.arange(len(ns)), np.minimum(ns, k) - 1]
        bars = nth - 2 * scores.slack  # -inf where fewer than n are finite: keep them all
        keep &= found >= bars[:, None]
        wide = approximate & keep.all(axis=1) & (k < values.shape[1])
        if wide.any():
            rows, cols = _scanned(values, picked, keep, wide, bars)
            return _ranked(scores, ns, rows, cols, values[rows, cols])
    rows, at = np.nonzero(keep)
    return _ranked(scores, ns, rows, picked[rows, at], found[rows, at])


def _scanned(
    values: Array, picked: Array, keep: Array, wide: Array, bars: Array
) -> tuple[Array, Array]:
    """(rows, cols): the kept picks, but every movie above the bar in ``wide`` rows."""
    keep = keep & ~wide[:, None]
    rows, _ = np.nonzero(keep)
    rows_wide, cols_wide = np.nonzero(values[wide] >= bars[wide][:, None])
    rows = np.concatenate([rows, np.flatnonzero(wide)[rows_wide]])
    return rows, np.concatenate([picked[keep], cols_wide])


def _ranked(
    scores: BatchScores, ns: list[int], rows: Array, cols: Array, found: Array
) -> list[tuple[Array, Array]]:
    """Each row's first n candidates by exact score (ties by index); ``found`` are their
    scores as given, replaced by the exact ones where those are approximate."""
    if scores.exact is not None and scores.slack.any():
        found = scores.exact(rows, cols)
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
    item_cols: Array
    """the rated movies that feed the item path (``cols``, or its liked ones)."""


@dataclass(frozen=True)
class UserBatch:
    """Several users' encodings, stacked (row i is user i): the request batches' state."""

    rank_hidden: Array
    rate_hidden: Array
    rank_user_bias: Array
    rate_user_bias: Array
    bias_user_bias: Array
    cols: list[Array]
    item_cols: list[Array]

    @classmethod
    def of(cls, states: list[UserState]) -> UserBatch:
        return cls(
            np.stack([s.rank_hidden for s in states]),
            np.stack([s.rate_hidden for s in states]),
            np.array([s.rank_user_bias for s in states], np.float32),
            np.array([s.rate_user_bias for s in states], np.float32),
            np.array([s.bias_user_bias for s in states], np.float32),
            [s.cols for s in states],
            [s.item_cols for s in states],
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
            self.item_cols[i],
        )


class FoldInScorer:
    """A user's current ratings in, ranking scores and clamped predicted ratings out."""

    # The int8 first pass pays from about this many ranking weights (hidden x movies): at
    # 400 x 10,000 it cut a batch of 8's scores from 2.0 to 1.15 ms; at ml-100k's 400 x
    # 1,682 the float32 product takes ~0.03 ms, less than the extra candidates' rescoring.
    QUANTIZED_MIN_WEIGHTS = 2_000_000

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
        user_bias = self.bias.user_bias(idx, vals)
        return UserState(
            rank_h, rate_h, rank_bias, rate_bias, user_bias, idx, self._sources(idx, vals)
        )

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
        sources = [self._sources(c, v) for c, v in zip(cols, values, strict=True)]
        user_bias = self.bias.user_biases(csr)
        return UserBatch(rank_h, rate_h, rank_bias, rate_bias, user_bias, cols, sources)

    def _sources(self, cols: Array, values: Array) -> Array:
        """The movies among ``cols`` that feed the item path."""
        return cols if self.item_path is None else self.item_path.sources(cols, values)

    def scores(self, state: UserState) -> Array:
        """Blended ranking scores for every movie (higher = recommend first): `blend_scores`
        of the z-scored parts, computed in place on one fresh array (the hot path)."""
        if self.item_table is None:
            mixed = zscore_one(self.rank_net.logits_one(state.rank_hidden))
        else:
            mixed = zscore_one(self.item_table.score(state.item_cols))
            mixed *= np.float32(self.blend.item_weight)
            if self.deep_share > 0:
                deep = zscore_one(self.rank_net.logits_one(state.rank_hidden))
                deep *= np.float32(self.deep_share)
                mixed += deep
        if self.blend.popularity_penalty:
            mixed -= self.penalty
        return mixed

    def scores_many(self, batch: UserBatch) -> BatchScores:
        """`scores` for several users at once (B x n_movies, a fresh array): one matrix
        product over the catalog, then `blend_scores` of the z-scored parts in place.

        On a large catalog the product is `QuantizedRanking`'s int8 one, so the scores are
        approximate within each row's slack; `top_many` ranks on exact ones regardless.
        A lone user goes that way too: at 59,047 movies its float32 product (94 MB read
        for one row) took 6 ms, the int8 pass with the rescoring 3.
        """
        quantized = self.first_pass
        if len(batch) == 1 and quantized is None:
            return BatchScores.of_exact(self.scores(batch.user(0))[None, :])
        if quantized is None or not np.isfinite(batch.rank_hidden).all():
            return BatchScores.of_exact(self._exact_many(batch))
        return self._approximate_many(batch, quantized)

    @cached_property
    def first_pass(self) -> QuantizedRanking | None:
        """The int8 first pass, where it pays (it adds an exact rescoring of a few
        candidates per user): a ranking layer large enough, and an int8 product measured
        faster than the float32 one on this CPU. Built at load.

        Measured, because it depends on the CPU: with VNNI, oneDNN's int8 product is exact
        and a batch of 8 on a 400 x 10,000 layer took ~0.6 ms against ~1.5 in float32;
        without it (an AMD EPYC 7003) oneDNN's 16-bit sums saturate, and the exact fallback,
        `torch._int_mm`, took 22 ms: the batch 29 ms instead of ~6.
        """
        rank = self.rank_net.rank
        if rank is None or rank[0].size < self.QUANTIZED_MIN_WEIGHTS or self.deep_share == 0:
            return None
        quantized = QuantizedRanking(*rank)
        return quantized if quantized.faster_than(self.rank_net) else None

    def _approximate_many(self, batch: UserBatch, quantized: QuantizedRanking) -> BatchScores:
        h = batch.rank_hidden
        logits, error = quantized.logits(h)
        mean, std = self.rank_net.logit_stats.moments(h)
        scale = self.deep_share / (std + 1e-6)  # `standardise_` with the exact moments
        logits -= mean.astype(np.float32)[:, None]
        logits *= scale.astype(np.float32)[:, None]
        item = None
        if self.item_table is not None:
            item = standardise_(self.item_table.score_many(batch.item_cols), self.blend.item_weight)
            logits += item
        if self.blend.popularity_penalty:
            logits -= self.penalty
        exact = partial(self._exact_cells, h, mean, scale, item)
        return BatchScores(logits, error * scale + 1e-5, exact)  # + the blend's rounding

    def _exact_cells(
        self, h: Array, mean: Array, scale: Array, item: Array | None, rows: Array, cols: Array
    ) -> Array:
        """`_approximate_many`'s scores at cells (rows, cols), from the float32 layer."""
        stats = self.rank_net.logit_stats
        logits = np.einsum("ij,ij->i", h[rows], stats.weight[cols]) + stats.bias[cols]
        out = (logits - mean[rows]) * scale[rows]
        if item is not None:
            out += item[rows, cols]
        if self.blend.popularity_penalty:
            out -= self.penalty[cols]
        return out.astype(np.float32)

    def _exact_many(self, batch: UserBatch) -> Array:
        if self.item_table is None:  # no item path, or a blend that gives it no share
            mixed = standardise_(self.rank_net.logits(batch.rank_hidden), 1.0)
        else:
            mixed = standardise_(
                self.item_table.score_many(batch.item_cols), self.blend.item_weight
            )
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
