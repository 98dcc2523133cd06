"""The two products a training batch needs, at the cost of its ratings, not its catalog.

A batch of users rated a few thousand of the catalog's movies. The encoder's first layer
multiplies the (sparse) rating rows by a movies x hidden weight, and each head needs the
dot product of a user's hidden vector with the weight row of every movie that user rated.
Written as per-rating gathers, the second one materialises a ratings x hidden tensor per
head, forward and backward (~50 ms a head per batch at 16k ratings x 400 hidden).

Here the weight rows of the batch's distinct movies are gathered once (by the caller, with
``F.embedding``) and both products, forward and backward, run over that compact block as
sparse products: embedding bags (per user, or per movie for the transposes) and
``torch.sparse.sampled_addmm`` for the rated cells. (torch.sparse.mm measured 3-10x
slower than the embedding bags on this 2-core machine; a row-sparse Adam over the
touched rows was slower than fused dense Adam, so the weights keep dense gradients.)
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
    """Where a batch's ratings are (``rows`` sorted), in user-major CSR order; each rated
    movie's slot among the batch's distinct movies, and the movie-major order, are computed
    when a gradient first needs them (inference reads the weights in place)."""

    rows: torch.Tensor
    cols: torch.Tensor
    n_users: int
    user_ptr: torch.Tensor

    @classmethod
    def of(cls, rows: torch.Tensor, cols: torch.Tensor, n_users: int) -> RatingPattern:
        """``rows`` must be sorted (CSR order, as SparseBatch.from_csr makes them)."""
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
        """A permutation of the ratings that groups them by movie (stable)."""
        return torch.sort(self.slots, stable=True).indices

    @cached_property
    def movie_ptr(self) -> torch.Tensor:
        counts = torch.bincount(self.slots, minlength=self.movies.numel())
        return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])

    @property
    def n_slots(self) -> int:
        return int(self.movies.numel())

    def user_sums(self, values: torch.Tensor, slot_rows: torch.Tensor) -> torch.Tensor:
        """users x d: ``X @ slot_rows`` where X (users x slots) holds ``values`` at the
        rated cells. An embedding bag per user: ~10x faster than torch.sparse.mm here."""
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
    """Users x hidden: ``sum_j X_j @ layer[j*M : (j+1)*M]`` where ``X_j`` holds
    ``values[:, j]`` at the pattern's cells and M is the catalog size (one block of the
    layer's rows per input feature, e.g. the indicator and the centred rating). ``values``
    get no gradient.

    With a gradient to compute, the rows of the batch's distinct movies are gathered first
    and the product and its backward run over that block (`_Encode`); without one a bag
    per user reads the layer's rows in place.
    """
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
    """``(hidden @ table.T)[users, movies]`` at the rated cells, never the whole product;
    ``table`` holds one row per movie. With a gradient to compute, through the rows of the
    batch's distinct movies (`rated_dot`); without one, one gather of each cell's rows
    (`index_select` and a product: einsum over advanced-indexed rows took 4x as long for a
    request's ten cells)."""
    if torch.is_grad_enabled() and (table.requires_grad or hidden.requires_grad):
        return rated_dot(pattern, hidden, F.embedding(pattern.movies, table))
    picked = hidden.index_select(0, pattern.rows) * table.index_select(0, pattern.cols)
    return picked.sum(1)


def rated_dot(pattern: RatingPattern, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(hidden @ rows.T)[users, slots]`` at the rated cells, never the whole product;
    ``rows`` holds one weight row per slot."""
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
