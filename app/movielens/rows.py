"""The importer's rows: a block's valid ratings, one per (user, movie) pair, less the pairs
already stored or already seen in an earlier block."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from app.movielens.ratings import valid_ratings


def count_lines(block: bytes) -> int:
    return block.count(b"\n") + (0 if block.endswith(b"\n") else 1)


@dataclass
class Batch:
    user: np.ndarray
    movie: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def take(self, rows: np.ndarray) -> Batch:
        return Batch(self.user[rows], self.movie[rows], self.rating[rows], self.timestamp[rows])


def validate_block(values: np.ndarray, known: np.ndarray, skipped: Counter[str]) -> Batch:
    """Keep rows with integer ids and timestamp, a half-star rating and a known movie."""
    keep = valid_ratings(values, known, skipped)
    user, movie, rating, stamp = values[keep].T
    return Batch(user.astype(np.int64), movie.astype(np.int64), rating, stamp.astype(np.int64))


def first_of_pairs(batch: Batch) -> Batch:
    """One row per (user, movie) pair of a block, the first in file order, sorted by pair:
    the primary key's order, so its B-tree is appended to rather than written all over.
    A block of ml-20m/ml-25m is sorted already, which costs one pass to see."""
    user, movie = batch.user, batch.movie
    if len(user) < 2:
        return batch
    if np.all((user[1:] > user[:-1]) | ((user[1:] == user[:-1]) & (movie[1:] > movie[:-1]))):
        return batch
    order = np.lexsort((movie, user))  # stable: a repeated pair keeps its file order
    user, movie = user[order], movie[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (user[1:] != user[:-1]) | (movie[1:] != movie[:-1])
    return batch.take(order[first])


class StoredPairs:
    """The pairs `ratings` held when a bulk load began (at most BULK_EXISTING_MAX of them):
    rows already stored are dropped before they are written, each pair counted once."""

    def __init__(self, users: np.ndarray, movies: np.ndarray, known: np.ndarray) -> None:
        slot = np.minimum(np.searchsorted(known, movies), max(len(known) - 1, 0))
        in_catalog = known[slot] == movies if len(known) else np.zeros(len(movies), dtype=bool)
        self.known = known  # a stored movie outside it cannot match a valid row anyway
        self.users = np.unique(users[in_catalog])
        user_slot = np.searchsorted(self.users, users[in_catalog])
        self.keys = np.sort(user_slot * len(known) + slot[in_catalog])
        self.seen = np.zeros(len(self.keys), dtype=bool)

    @property
    def matched(self) -> int:
        """Stored pairs the file has had so far."""
        return int(self.seen.sum())

    def drop_stored(self, batch: Batch) -> Batch:
        if not len(self.keys) or not len(batch):
            return batch
        user_slot = np.minimum(np.searchsorted(self.users, batch.user), len(self.users) - 1)
        key = user_slot * len(self.known) + np.searchsorted(self.known, batch.movie)
        at = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        stored = (self.users[user_slot] == batch.user) & (self.keys[at] == key)
        self.seen[at[stored]] = True
        return batch.take(~stored)


class UserRuns:
    """Tells whether a file lists each user's ratings as one run of lines (every GroupLens
    ratings file but ml-100k's), which lets the PostgreSQL bulk load drop a repeat of an
    earlier block's pair on the client: it keeps the users whose run has ended and the
    movies of the run still open at the end of the last block."""

    def __init__(self) -> None:
        self.ended = np.empty(0, dtype=np.int64)
        self.open_user: int | None = None
        self.open_movies = np.empty(0, dtype=np.int64)

    def new_rows(self, batch: Batch, last_user: int) -> Batch | None:
        """The rows of a block (one per pair, sorted) that no earlier block had; None once a
        user comes back after their run ended, which this cannot check."""
        users = np.unique(batch.user)
        if np.isin(users, self.ended).any():
            return None
        if self.open_user is not None:
            again = (batch.user == self.open_user) & np.isin(batch.movie, self.open_movies)
            batch = batch.take(~again)
        ended = users[users != last_user]
        if self.open_user is not None and self.open_user != last_user:
            ended = np.append(ended, self.open_user)
        self.ended = np.union1d(self.ended, ended)
        movies = batch.movie[batch.user == last_user]
        if self.open_user == last_user:
            movies = np.concatenate([self.open_movies, movies])
        self.open_user, self.open_movies = last_user, movies
        return batch
