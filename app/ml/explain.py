"""Why the served model recommends a movie, and which movies it finds alike.

`Explainer` computes each item's served score with each rating left out, exactly, without a
catalog pass per rating: the first layer is linear in the features (a leave-one-out input is
the full one less that movie's rows, scale and user bias recomputed); the z-score's mean and
mean square over the catalog are forms of the hidden code (a hidden x hidden Gram matrix);
the item path is a sum of rows; the popularity penalty cancels.

`ItemSimilarity`: the cosine of the movies' rows in the first layer and the ranking head.
"""

from __future__ import annotations

import numpy as np
import torch

from app.ml.model import StackedAutoencoder
from app.ml.scoring import FoldInScorer, ItemTable

Array = np.ndarray
EPS = 1e-6  # as in `zscore`
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805  # torch.nn.SELU's


def _np(tensor: torch.Tensor) -> Array:
    """The CPU float32 tensor's own memory as an array: no second copy of the weights."""
    return np.asarray(tensor.detach().cpu().numpy(), dtype=np.float32)


class NetArrays:
    """The network's weights as numpy views; its hidden layers run on the network itself."""

    def __init__(self, net: StackedAutoencoder) -> None:
        self.net = net
        config = net.config
        self.inputs = config.inputs
        self.user_bias_reg = config.user_bias_reg
        self.n_movies = net.n_movies
        self.activation_name = config.activation
        self.deep = len(net.layers) > 1
        self.first_t = _np(net.first_layer.weight_t)  # in_dim x hidden
        self.first_bias = _np(net.first_layer.bias)
        self.base = _np(net.global_mean + net.movie_bias)
        self.residual = config.rating_head == "residual"
        self.rank = (
            (_np(net.rank_out.weight), _np(net.rank_out.bias)) if net.rank_out is not None else None
        )
        self.rate_w, self.rate_b = _np(net.rate_out.weight), _np(net.rate_out.bias)

    def hidden(self, first: Array) -> Array:
        with torch.inference_mode():
            return self.net.code(torch.from_numpy(np.ascontiguousarray(first)))[0].numpy()

    def activation(self, x: Array) -> Array:
        with torch.inference_mode():
            return self.net.activation(torch.from_numpy(np.ascontiguousarray(x))).numpy()


class LogitStats:
    """The mean and spread of the logits ``h @ weight.T + bias`` over the catalog, from
    moments of the weights."""

    def __init__(self, net: NetArrays, block: int = 8192) -> None:
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
        # mean square of the logits = [h, 1] @ second @ [h, 1], the weights' Gram matrix
        # bordered by the bias; float64 a block at a time (a whole copy: 189 MB at 59k)
        second = np.zeros((hidden + 1, hidden + 1))
        for start in range(0, n, block):
            w = weight[start : start + block].astype(np.float64)
            second[:-1, :-1] += w.T @ w
            second[:-1, -1] += w.T @ b[start : start + block]
        second[-1, :-1] = second[:-1, -1]
        second[-1, -1] = b @ b
        self.second = second / max(n, 1)

    def moments(self, h: Array) -> tuple[Array, Array]:
        h64 = np.asarray(h, dtype=np.float64)
        mean = h64 @ self.mean_w + self.mean_b
        bordered = np.empty((h64.shape[0], h64.shape[1] + 1))
        bordered[:, :-1], bordered[:, -1] = h64, 1.0
        square = np.einsum("ij,ij->i", bordered @ self.second, bordered)
        return mean, np.sqrt(np.maximum(square - mean * mean, 0.0))

    def zscores(self, hidden: Array, cols: Array) -> Array:
        mean, std = self.moments(hidden)
        logits = (hidden @ self.weight[cols].T + self.bias[cols]).astype(np.float64)
        return (logits - mean[:, None]) / (std[:, None] + 1e-6)


def _leave_one_out_inputs(net: NetArrays, cols: Array, values: Array) -> Array:
    """First-layer products (no bias): row 0 with every rating, row 1 + j without rating j."""
    n = cols.size
    first = net.first_t
    rows = first.take(cols, axis=0)  # k x hidden
    full_scale, loo_scale = np.float32(max(n, 1) ** -0.5), np.float32(max(n - 1, 1) ** -0.5)
    if net.inputs == "ratings":
        weighted = rows * values[:, None]
        total = weighted.sum(axis=0)
        return np.vstack([total, total - weighted])
    if net.inputs == "implicit":
        total = rows.sum(axis=0)
        return np.vstack([full_scale * total, loo_scale * (total - rows)])
    # indicator + bias-centred ratings (see `StackedAutoencoder._features`)
    centred_rows = first.take(cols + net.n_movies, axis=0)
    resid = values - net.base.take(cols)
    indicator, weighted, plain = rows.sum(axis=0), resid @ centred_rows, centred_rows.sum(0)
    resid_sum = float(resid.sum(dtype=np.float64))
    full_bias = np.float32(resid_sum / (n + net.user_bias_reg))
    loo_bias = ((resid_sum - resid) / (n - 1 + net.user_bias_reg)).astype(np.float32)
    out = np.empty((n + 1, rows.shape[1]), dtype=np.float32)
    out[0] = full_scale * (indicator + weighted - full_bias * plain)
    loo = out[1:]  # built in place: a few k x hidden passes, no temporaries but one
    np.subtract(indicator + weighted - plain * loo_bias[:, None], rows, out=loo)
    loo += centred_rows * (loo_bias - resid)[:, None]
    loo *= loo_scale
    return out


def _slope(name: str, x: Array) -> Array:
    if name == "sigmoid":
        s = 0.5 * (np.tanh(0.5 * x) + 1.0)
        return s * (1.0 - s)
    if name == "tanh":
        return 1.0 - np.tanh(x) ** 2
    if name == "relu":
        return (x > 0).astype(np.float32)
    return SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0)))


class _ItemPathStats:
    def __init__(self, table: ItemTable) -> None:
        self.table = table
        rows = table.dense if table.dense is not None else table.weights
        self.row_sum = rows.sum(axis=1, dtype=np.float64)
        self.row_square = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
        if table.dense is None:  # per source movie, not per row of the padded table
            self.row_sum = self.row_sum[table.row_of]
            self.row_square = self.row_square[table.row_of]

    def weights_to(self, cols: Array, targets: Array) -> Array:
        table = self.table
        if table.dense is not None:
            return table.dense[np.ix_(cols, targets)]
        slot = np.full(self.table.n_movies, -1, dtype=np.int64)  # target -> its column
        slot[targets] = np.arange(targets.size)
        their_targets, their_weights = table.neighbours(cols)
        found = slot[their_targets]  # k x width, -1 where no target
        rows, width = np.nonzero(found >= 0)
        flat = rows * targets.size + found[rows, width]
        weights = their_weights[rows, width]
        counts = np.bincount(flat, weights, minlength=cols.size * targets.size)
        return counts.reshape(cols.size, targets.size).astype(np.float32)

    def _dots(self, cols: Array, total: Array) -> Array:
        table = self.table
        if table.dense is not None:
            return table.dense.take(cols, axis=0) @ total
        their_targets, weights = table.neighbours(cols)
        return (weights * total[their_targets]).sum(axis=1)

    def zscores(self, total: Array, cols: Array, targets: Array, feeds: Array) -> Array:
        """The item path's z-scores, row 0 with every rating, row 1 + j without ``cols[j]``;
        a movie not in ``feeds`` (below the path's input threshold) changes nothing."""
        weight = feeds.astype(np.float32)
        at_targets = self.weights_to(cols, targets) * weight[:, None]
        dots = self._dots(cols, total) * weight
        full_sum = float(total.sum(dtype=np.float64))
        full_square = float(np.dot(total.astype(np.float64), total))
        sums = np.concatenate([[full_sum], full_sum - self.row_sum[cols] * weight])
        squares = np.concatenate(
            [[full_square], full_square - (2 * dots - self.row_square[cols]) * weight]
        )
        mean = sums / total.size
        std = np.sqrt(np.maximum(squares / total.size - mean * mean, 0.0))
        scores = np.vstack([total[targets], total[targets][None, :] - at_targets])
        return (scores - mean[:, None]) / (std[:, None] + EPS)


class Explainer:
    """Exact leave-one-out drops of the served score. Past ``EXACT_UP_TO`` ratings (one
    hidden layer), a first-order estimate proposes each target's ``CANDIDATES`` likeliest
    reasons and only those are computed exactly: a movie named did raise the score."""

    EXACT_UP_TO = 24
    CANDIDATES = 4

    def __init__(self, scorer: FoldInScorer) -> None:
        self.net = NetArrays(scorer.rank_net)
        self.logits = LogitStats(self.net)
        table = scorer.item_table
        self.sources = scorer.sources
        self.item_weight = float(scorer.blend.item_weight) if table is not None else 0.0
        self.item_path = _ItemPathStats(table) if table is not None else None

    def score_drops(self, cols: Array, values: Array, targets: Array) -> tuple[Array, Array]:
        """(positions into ``cols``, drops): how much each rating considered raises each
        target's score (rows follow the positions, columns the targets)."""
        cols = np.asarray(cols, dtype=np.int64)
        targets = np.asarray(targets, dtype=np.int64)
        inputs = _leave_one_out_inputs(self.net, cols, np.asarray(values, dtype=np.float32))
        item_path = self.item_path if self.item_weight > 0 else None
        sources = self.sources(cols, values)
        total = item_path.table.score(sources) if item_path is not None else None
        feeds = np.isin(cols, sources)
        left_out = np.arange(cols.size)
        if cols.size > self.EXACT_UP_TO and not self.net.deep:
            left_out = self._candidates(inputs, cols, targets, total, feeds)
            inputs = inputs[np.concatenate([[0], left_out + 1])]
        codes = self.net.hidden(inputs)
        scores = (1.0 - self.item_weight) * self.logits.zscores(codes, targets)
        if item_path is not None and total is not None:
            item = item_path.zscores(total, cols[left_out], targets, feeds[left_out])
            scores += self.item_weight * item
        return left_out, scores[0][None, :] - scores[1:]

    def _candidates(
        self, inputs: Array, cols: Array, targets: Array, total: Array | None, feeds: Array
    ) -> Array:
        """The ratings a first-order estimate ranks among each target's top ``CANDIDATES``."""
        full = inputs[0] + self.net.first_bias
        slope = _slope(self.net.activation_name, full).astype(np.float32)
        code = self.net.activation(full[None, :])
        _, std = self.logits.moments(code)
        estimate = ((inputs[0] - inputs[1:]) * slope) @ self.logits.weight[targets].T
        estimate *= (1.0 - self.item_weight) / (std[0] + EPS)
        if self.item_path is not None and total is not None:
            item_std = float(total.std()) + EPS
            to_targets = self.item_path.weights_to(cols, targets) * feeds[:, None]
            estimate += (self.item_weight / item_std) * to_targets
        best = np.argsort(-estimate, axis=0, kind="stable")[: self.CANDIDATES]
        return np.unique(best)

    def because(self, cols: Array, values: Array, targets: Array, limit: int = 3) -> list[Array]:
        """Per target, up to ``limit`` positions of ratings that raised it, largest first."""
        left_out, drops = self.score_drops(cols, values, targets)
        return self.raised(left_out, drops, limit)

    @staticmethod
    def raised(left_out: Array, drops: Array, limit: int = 3) -> list[Array]:
        """`because` from `score_drops`' answer (or any mix of its columns)."""
        order = np.argsort(-drops, axis=0, kind="stable")[:limit]  # left_out is ascending
        raised = np.take_along_axis(drops, order, axis=0) > 0
        return [left_out[o[r]] for o, r in zip(order.T, raised.T, strict=True)]


class ItemSimilarity:
    """Cosine similarity of item representations; only inverse norms are kept here, the
    weights stay the scorer's."""

    def __init__(self, scorer: FoldInScorer) -> None:
        net = NetArrays(scorer.rank_net)
        self.n_movies = scorer.n_movies
        self.inputs = net.first_t[: self.n_movies]  # indicator (or rating) rows
        self.outputs = net.rank[0] if net.rank is not None else net.rate_w  # movies x hidden
        self.inputs_scale = _inverse_norms(self.inputs)
        self.outputs_scale = _inverse_norms(self.outputs)

    def scores(self, col: int) -> Array:
        by_input = self.inputs @ self.inputs[col]
        by_input *= self.inputs_scale * self.inputs_scale[col]
        by_output = self.outputs @ self.outputs[col]
        by_output *= self.outputs_scale * self.outputs_scale[col]
        return (by_input + by_output) * np.float32(0.5)


def _inverse_norms(rows: Array) -> Array:
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))
    return (1.0 / np.maximum(norms, 1e-12)).astype(np.float32)
