"""A fold-in matrix factorisation of the bias terms' residuals: a fourth rating part.

The networks and the bias terms leave a low-rank structure in the residuals that a matrix
factorisation finds and the networks partly miss: blended in at the share validation
chooses, it lowered ml-1m-half's test RMSE where the networks alone did not reach cornac's
MF (docs/evaluation.md). Only the item factors are kept. A user's factors are always
folded in from their current ratings by the ridge solve that fitted them (ALS-WR: ridge
``lam`` times the user's rating count), so a training user, an edited one and a user never
seen in training are served alike, with one k x k solve each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

Array = np.ndarray


@dataclass(frozen=True)
class ItemFactors:
    """Item factors (movies x k) of an ALS-WR fit, and its ridge strength per rating."""

    factors: Array
    lam: float

    @property
    def rank(self) -> int:
        return int(self.factors.shape[1])

    @classmethod
    def fit(
        cls, residuals: sp.csr_matrix, rank: int, lam: float, sweeps: int, seed: int
    ) -> ItemFactors:
        """ALS-WR on ``residuals`` (users x movies, each rating minus its bias terms): item
        factors from a seeded start, then ``sweeps`` alternations of the two ridge solves."""
        rng = np.random.default_rng(seed)
        factors = (0.1 * rng.standard_normal((residuals.shape[1], rank))).astype(np.float32)
        by_movie = sp.csr_matrix(residuals.T)
        for _ in range(sweeps):
            users = ridge_rows(residuals, factors, lam)
            factors = ridge_rows(by_movie, users, lam)
        return cls(factors, float(lam))

    def fold_in(self, residuals: sp.csr_matrix) -> Array:
        """Each row's user factors (B x k) from its ratings' residuals: the user step of the
        fit, so a training user gets the factors the last sweep would give."""
        return ridge_rows(residuals, self.factors, self.lam)

    def at(self, users: Array, rows: Array, cols: Array) -> Array:
        """The predicted residual at cells (row of ``users``, movie index)."""
        return np.einsum("ij,ij->i", users[rows], self.factors[cols]).astype(np.float32)


BLOCK_CELLS = 2**18
"""ratings gathered per block of rows: a block's padded factors take 32 MB at k 32."""


def ridge_rows(rows: sp.csr_matrix, factors: Array, lam: float) -> Array:
    """Per row r (ratings at columns c): argmin_x |r - F_c x|^2 + lam |c| |x|^2 (zero for a
    row with no ratings). Rows are taken shortest first in blocks of like length, each
    block's rated factors gathered into one padded array: a lone request is one small
    block, a fit's sweep a few dozen, and each block's Gram matrices are one batched
    product, with no per-call overheads of sparse kernels to pay per request."""
    csr = rows
    if not isinstance(rows, sp.csr_matrix) or rows.dtype != np.float32:
        csr = sp.csr_matrix(rows, dtype=np.float32)  # a request's rows come as they are
    counts = np.diff(csr.indptr)
    order = np.argsort(counts, kind="stable")
    sorted_counts = counts[order]
    out = np.zeros((csr.shape[0], factors.shape[1]), dtype=np.float32)
    start = 0
    while start < order.size:
        end = _block_end(sorted_counts, start)
        block = order[start:end]
        out[block] = _ridge_block(csr, block, factors, lam)
        start = end
    return out


def _block_end(sorted_counts: Array, start: int) -> int:
    """The end of the block from ``start``: as many rows as keep rows x the longest row's
    length within `BLOCK_CELLS` (one row at least)."""
    window = np.maximum(
        sorted_counts[start : start + BLOCK_CELLS // max(sorted_counts[start], 1)], 1
    )
    cells = np.arange(1, window.size + 1) * window
    return start + max(int(np.searchsorted(cells, BLOCK_CELLS, side="right")), 1)


def _ridge_block(csr: sp.csr_matrix, block: Array, factors: Array, lam: float) -> Array:
    """`ridge_rows` of the rows ``block``: their rated movies' factors padded with zeros
    to the longest row, so each Gram matrix F_c^T F_c is one batched product."""
    lengths = np.diff(csr.indptr)[block]
    width = max(int(lengths.max()), 1)
    filled = np.arange(width) < lengths[:, None]
    at = (csr.indptr[block][:, None] + np.arange(width))[filled]
    gathered = np.zeros((block.size, width, factors.shape[1]), dtype=np.float32)
    gathered[filled] = factors[csr.indices[at]]
    values = np.zeros((block.size, width, 1), dtype=np.float32)
    values[filled, 0] = csr.data[at]
    transposed = gathered.transpose(0, 2, 1)
    gram = transposed @ gathered
    diagonal = np.arange(factors.shape[1])
    gram[:, diagonal, diagonal] += (lam * np.maximum(lengths, 1)).astype(np.float32)[:, None]
    return np.linalg.solve(gram, transposed @ values)[..., 0]
