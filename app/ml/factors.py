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
import torch

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


ROW_BLOCK = 4096
"""rows solved at once: their k x k systems take 16 MB at k 32, whatever the data's size."""


def ridge_rows(rows: sp.csr_matrix, factors: Array, lam: float) -> Array:
    """Per row r (ratings at columns c): argmin_x |r - F_c x|^2 + lam |c| |x|^2 (zero for a
    row with no ratings), `ROW_BLOCK` rows at a time."""
    csr = sp.csr_matrix(rows, dtype=np.float32)
    if not csr.has_canonical_format:  # a request's movies come in any order: torch's CSR
        csr = csr.copy()  # products need each row's columns sorted (unchecked, they crash)
        csr.sum_duplicates()
    if csr.shape[0] <= ROW_BLOCK:
        return _ridge_block(csr, factors, lam)
    blocks = range(0, csr.shape[0], ROW_BLOCK)
    return np.vstack([_ridge_block(csr[i : i + ROW_BLOCK], factors, lam) for i in blocks])


def _ridge_block(csr: sp.csr_matrix, factors: Array, lam: float) -> Array:
    """`ridge_rows` of one block. Each row's Gram matrix is one sparse product of its
    indicator with the packed outer products of the rated movies' factors alone, so a lone
    request costs its own ratings, and a fit one product per block (gathering an outer
    product per rating and summing them took 9x as long on u1)."""
    n_rows, k = csr.shape[0], factors.shape[1]
    rated, local = np.unique(csr.indices, return_inverse=True)
    f = torch.from_numpy(np.ascontiguousarray(factors[rated], dtype=np.float32))
    upper = torch.triu_indices(k, k)
    outer = f[:, upper[0]] * f[:, upper[1]]
    indptr = torch.from_numpy(csr.indptr.astype(np.int64))
    cols = torch.from_numpy(local.astype(np.int64).reshape(-1))
    shape = (n_rows, rated.size)
    ones = torch.sparse_csr_tensor(
        indptr, cols, torch.ones(csr.nnz), size=shape, check_invariants=False
    )
    values = torch.sparse_csr_tensor(
        indptr, cols, torch.from_numpy(csr.data), size=shape, check_invariants=False
    )
    gram = torch.zeros(n_rows, k, k)
    packed = torch.sparse.mm(ones, outer)
    gram[:, upper[0], upper[1]] = packed
    gram[:, upper[1], upper[0]] = packed
    counts = torch.from_numpy(np.maximum(np.diff(csr.indptr), 1).astype(np.float32))
    gram += (lam * counts)[:, None, None] * torch.eye(k)
    return torch.linalg.solve(gram, torch.sparse.mm(values, f)).numpy()
