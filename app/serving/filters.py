"""The one filter pipeline of every list that recommends (model, popular, similar): never
a rated, excluded, dismissed or hidden movie, only the asked genres."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.serving.catalog import NO_IDS, Catalog
from app.serving.lifecycle import ServingModel


@dataclass(frozen=True)
class Filters:
    blocked: np.ndarray  # movie ids: excluded, dismissed, hidden (rated ones come apart)
    genres: tuple[str, ...]

    @classmethod
    def of(cls, genres: tuple[str, ...], *blocked: np.ndarray | tuple[int, ...]) -> Filters:
        ids = [np.asarray(b, dtype=np.int64) for b in blocked if len(b)]
        return cls(np.concatenate(ids) if ids else NO_IDS, genres)

    def apply_asked(self, scores: np.ndarray, model: ServingModel) -> None:
        """-inf (never listed) on a score row for the blocked movies and other genres."""
        if self.blocked.size:
            cols = model.columns(self.blocked)
            scores[cols[cols >= 0]] = -np.inf
        allowed = model.catalog.mask_for(self.genres)
        if allowed is not None:
            scores[~allowed] = -np.inf

    def allowed(self, catalog: Catalog, rated: np.ndarray) -> np.ndarray:
        """The same rule as a mask over a catalog of movie ids (the popular list)."""
        blocked = np.concatenate([rated, self.blocked]) if self.blocked.size else rated
        allowed = ~np.isin(catalog.movie_ids, blocked)
        mask = catalog.mask_for(self.genres)
        return allowed if mask is None else allowed & mask


def filter_scores(
    scores: np.ndarray, model: ServingModel, rated: list[np.ndarray], filters: list[Filters]
) -> None:
    """-inf on each score row's non-finite scores and ``rated`` columns (once for the batch;
    one sum checks finiteness), then its `Filters.apply_asked`."""
    if not np.isfinite(scores.sum()):  # a diverged model must not break the JSON
        scores[~np.isfinite(scores)] = -np.inf
    rows = np.repeat(np.arange(len(rated)), [cols.size for cols in rated])
    scores[rows, np.concatenate(rated)] = -np.inf
    for row, row_filters in zip(scores, filters, strict=True):
        row_filters.apply_asked(row, model)
