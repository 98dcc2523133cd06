"""The two products a training batch needs, at the cost of its ratings, not its catalog:
the first layer over sparse rating rows, and each head's dot products at the rated cells.

The weight rows of the batch's distinct movies are gathered once and both products run
over that block, forward and backward, as embedding bags and ``sampled_addmm`` (per-rating
gathers built a ratings x hidden tensor per head; torch.sparse.mm was 3-10x slower).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

# the CSR pattern of sampled_addmm is built by RatingPattern.of, valid by construction
warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)


@dataclass(frozen=True)
class RatingPattern:
    """Where a batch's ratings are, user-major (``rows`` sorted); the distinct movies' slots
    and the movie-major order are computed when a gradient first needs them."""

    rows: torch.Tensor
    cols: torch.Tensor
    n_users: int
    user_ptr: torch.Tensor

    @classmethod
    def of(cls, rows: torch.Tensor, cols: torch.Tensor, n_users: int) -> RatingPattern:
        user_ptr = torch.searchsorted(rows, torch.arange(n_users + 1, device=rows.device))
        return cls(rows, cols, n_users, user_ptr)

    @cached_property
    def _distinct(self) -> tuple[torch.Tensor, torch.Tensor]:
        movies, slots = torch.unique(self.cols, return_inverse=True)
        return movies, slots

    @property
    def movies(self) -> torch.Tensor:
        """The distinct rated movies, sorted: slot i is movie ``movies[i]``."""
        return self._distinct[0]

    @property
    def slots(self) -> torch.Tensor:
        """Each rating's movie slot."""
        return self._distinct[1]

    @cached_property
    def by_movie(self) -> torch.Tensor:
        return torch.sort(self.slots, stable=True).indices

    @cached_property
    def movie_ptr(self) -> torch.Tensor:
        counts = torch.bincount(self.slots, minlength=self.movies.numel())
        return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])

    @property
    def n_slots(self) -> int:
        return int(self.movies.numel())

    def user_sums(self, values: torch.Tensor, slot_rows: torch.Tensor) -> torch.Tensor:
        """users x d: ``X @ slot_rows``, X (users x slots) holding ``values`` at the cells."""
        return F.embedding_bag(
            self.slots, slot_rows, self.user_ptr[:-1], per_sample_weights=values, mode="sum"
        )

    def slot_sums(self, values: torch.Tensor, user_rows: torch.Tensor) -> torch.Tensor:
        """slots x d: ``X.T @ user_rows``, the same bags grouped by movie."""
        return F.embedding_bag(
            self.rows[self.by_movie],
            user_rows,
            self.movie_ptr[:-1],
            per_sample_weights=values[self.by_movie],
            mode="sum",
        )

    def cells_of(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``(left @ right.T)[users, slots]`` at the rated cells alone."""
        shape = (self.n_users, self.n_slots)
        ones = left.new_ones(self.slots.numel())
        pattern = torch.sparse_csr_tensor(
            self.user_ptr, self.slots, ones, shape, check_invariants=False
        )
        return torch.sparse.sampled_addmm(pattern, left, right.t(), beta=0.0).values()


def encode(pattern: RatingPattern, values: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
    """Users x hidden: ``sum_j X_j @ layer[j*M : (j+1)*M]``, ``X_j`` holding ``values[:, j]``
    at the cells (a block of rows per input feature). With a gradient, over the gathered
    rows of the batch's movies (`_Encode`); without, a bag per user reads the layer in place."""
    values = values.detach()
    n_movies = layer.shape[0] // values.shape[1]
    if torch.is_grad_enabled() and layer.requires_grad:
        blocks = [pattern.movies + j * n_movies for j in range(values.shape[1])]
        out: torch.Tensor = _Encode.apply(pattern, values, F.embedding(torch.cat(blocks), layer))
        return out
    # one bag per user over every block: each cell's rows of the blocks side by side
    features = values.shape[1]
    rows = pattern.cols[:, None] + torch.arange(features, device=layer.device) * n_movies
    offsets = pattern.user_ptr[:-1] * features
    return F.embedding_bag(
        rows.reshape(-1), layer, offsets, per_sample_weights=values.reshape(-1), mode="sum"
    )


def cell_dots(pattern: RatingPattern, hidden: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``(hidden @ table.T)[users, movies]`` at the rated cells only: with a gradient through
    the batch's movies' rows (`rated_dot`), else one `index_select` of each cell's rows."""
    if torch.is_grad_enabled() and (table.requires_grad or hidden.requires_grad):
        return rated_dot(pattern, hidden, F.embedding(pattern.movies, table))
    picked = hidden.index_select(0, pattern.rows) * table.index_select(0, pattern.cols)
    return picked.sum(1)


def rated_dot(pattern: RatingPattern, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(hidden @ rows.T)[users, slots]`` at the rated cells, ``rows`` one per slot."""
    out: torch.Tensor = _RatedDot.apply(pattern, hidden, rows)
    return out


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, pattern: RatingPattern, values: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        blocks = weights.unflatten(0, (values.shape[1], pattern.n_slots))
        out = pattern.user_sums(values[:, 0], blocks[0])
        for j in range(1, values.shape[1]):
            out += pattern.user_sums(values[:, j], blocks[j])
        ctx.pattern = pattern
        ctx.save_for_backward(values)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        (values,) = ctx.saved_tensors
        pattern: RatingPattern = ctx.pattern
        grad_out = grad_out.contiguous()
        return None, None, torch.cat([pattern.slot_sums(v, grad_out) for v in values.unbind(1)])


class _RatedDot(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, pattern: RatingPattern, hidden: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        ctx.pattern = pattern
        ctx.save_for_backward(hidden, rows)
        return pattern.cells_of(hidden, rows)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor]:
        hidden, rows = ctx.saved_tensors
        pattern: RatingPattern = ctx.pattern
        grad_out = grad_out.contiguous()
        return None, pattern.user_sums(grad_out, rows), pattern.slot_sums(grad_out, hidden)
