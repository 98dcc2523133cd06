"""Titles and genres aligned with a model's (or the popular list's) index of movie ids."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Row, Select, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.models import Movie, MovieGenre

NO_IDS = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Catalog:
    movie_ids: np.ndarray
    titles: list[str]
    genres: list[list[str]]
    genre_masks: dict[str, np.ndarray]

    def mask_for(self, genres: tuple[str, ...]) -> np.ndarray | None:
        """Movies in any of ``genres`` (None: no genre filter; an unknown genre: none)."""
        if not genres:
            return None
        masks = [self.genre_masks.get(genre.lower()) for genre in genres]
        found = [mask for mask in masks if mask is not None]
        if not found:
            return np.zeros(len(self.movie_ids), dtype=bool)
        return found[0] if len(found) == 1 else np.logical_or.reduce(found)

    def followed_by(self, other: Catalog) -> Catalog:
        """This catalog with ``other``'s movies appended."""
        if not len(other.movie_ids):
            return self
        n, m = len(self.movie_ids), len(other.movie_ids)
        none = np.zeros(n, dtype=bool), np.zeros(m, dtype=bool)
        masks = {
            genre: np.concatenate(
                [self.genre_masks.get(genre, none[0]), other.genre_masks.get(genre, none[1])]
            )
            for genre in {*self.genre_masks, *other.genre_masks}
        }
        return Catalog(
            np.concatenate([self.movie_ids, other.movie_ids]),
            self.titles + other.titles,
            self.genres + other.genres,
            masks,
        )

    def items(
        self, indices: np.ndarray, scores: np.ndarray, predicted: np.ndarray | None = None
    ) -> list[dict[str, Any]]:
        """The movies at ``indices`` as answer items: one conversion per column, then plain
        Python (the hot path's last step)."""
        titles, genres = self.titles, self.genres
        at = indices.tolist()
        ids = self.movie_ids[indices].tolist()
        if predicted is None:
            return [
                {"movie_id": m, "title": titles[i], "genres": genres[i], "score": round(s, 6)}
                for i, m, s in zip(at, ids, scores.tolist(), strict=True)
            ]
        return [
            {
                "movie_id": m,
                "title": titles[i],
                "genres": genres[i],
                "score": round(s, 6),
                "predicted_rating": round(p, 4),
            }
            for i, m, s, p in zip(at, ids, scores.tolist(), predicted.tolist(), strict=True)
        ]


CATALOG_CHUNK = 5000


def load_catalog(session: Session, movie_ids: np.ndarray) -> Catalog:
    """Fetch titles and genres for exactly these ids, in this order (missing ids keep '')."""
    position = {int(m): i for i, m in enumerate(movie_ids)}
    titles = [""] * len(movie_ids)
    genres: list[list[str]] = [[] for _ in movie_ids]
    masks: dict[str, np.ndarray] = {}
    ids = [int(m) for m in movie_ids]
    for movie_id, title in _catalog_rows(session, select(Movie.id, Movie.title), Movie.id, ids):
        if (i := position.get(movie_id)) is not None:
            titles[i] = title
    by_movie = select(MovieGenre.movie_id, MovieGenre.genre).order_by(
        MovieGenre.movie_id, MovieGenre.genre
    )
    for movie_id, genre in _catalog_rows(session, by_movie, MovieGenre.movie_id, ids):
        if (i := position.get(movie_id)) is None:
            continue
        genres[i].append(genre)
        masks.setdefault(genre.lower(), np.zeros(len(ids), dtype=bool))[i] = True
    return Catalog(np.asarray(movie_ids, dtype=np.int64), titles, genres, masks)


def _catalog_rows(
    session: Session, query: Select, key: InstrumentedAttribute[int], ids: list[int]
) -> Iterator[Row]:
    """The query's rows for these ids: in IN-lists while they are few, else the whole table
    in one pass (IN-lists for a 59,047-movie popular list took seconds)."""
    if len(ids) > CATALOG_CHUNK:
        yield from session.execute(query)
        return
    for start in range(0, len(ids), CATALOG_CHUNK):
        yield from session.execute(query.where(key.in_(ids[start : start + CATALOG_CHUNK])))
