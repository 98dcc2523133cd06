"""Write a synthetic MovieLens data set in ml-25m's layout and shape, for scale tests.

Usage: .venv/bin/python scripts/generate_ml25m.py --out /tmp/ml-25m-synth [--scale 0.02]
           [--users N] [--movies N] [--ratings N] [--seed S] [--order movie|time]

Writes DIR/movies.csv (`movieId,title,genres`, titles CSV-quoted where they hold a comma or
a quote, as in the real file) and DIR/ratings.csv (`userId,movieId,rating,timestamp`), which
`saerec import-movielens DIR` reads as the ml-latest/ml-25m layout. Defaults are ml-25m's
shape: 162,541 users (ids 1..N), 59,047 movies (ids spread over 1..~209,000), exactly
25,000,095 half-star ratings; `--scale 0.02` shrinks users, movies and ratings together
(the 1/50 set: about 500k ratings).

What the data looks like:
- every user has at least 20 ratings; activity is log-normal (ml-25m: median about 70,
  a few users with tens of thousands); movie popularity is a shifted power law (a few
  movies with tens of thousands of ratings, half the catalog with a handful); every movie
  in movies.csv has at least one rating;
- taste clusters tied to genres: each movie and each user belongs to one cluster, the
  cluster sets the movie's likely genres and the centre of both sides' taste vectors;
  users pick movies partly inside their own cluster;
- rating = global mean + user bias + movie bias + taste . factor + noise, quantised to half
  stars (some users only give whole stars), clipped to 0.5..5.0;
- each user rates within their own active span (from a day to years, inside ml-25m's
  1995-01..2019-11); rows are sorted by user, then movie id, as in ml-25m, or with
  `--order time` by user, then timestamp (each user's history in increasing time).

Everything is drawn from `--seed`; rows are generated and written one chunk of users at a
time (about `--chunk-ratings` rows), so memory stays bounded whatever the size.
Prints one JSON line with the counts, the seconds taken and the bytes written.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ML25M_USERS = 162_541
ML25M_MOVIES = 59_047
ML25M_RATINGS = 25_000_095
ML25M_MAX_ID = 209_171
MIN_PER_USER = 20
MAX_USER_SHARE = 0.55  # ml-25m's most active user rated 32,202 of 59,047 movies
FIRST_TS, LAST_TS = 789_652_009, 1_574_327_703  # ml-25m's first and last timestamps
NO_GENRES = "(no genres listed)"
# ml-25m's genres and how many of its 62,423 movies carry each
GENRE_COUNTS = {
    "Drama": 25606,
    "Comedy": 16870,
    "Thriller": 8654,
    "Romance": 7719,
    "Action": 7348,
    "Horror": 5989,
    "Documentary": 5605,
    "Crime": 5319,
    "Adventure": 4145,
    "Sci-Fi": 3595,
    "Children": 2935,
    "Animation": 2929,
    "Mystery": 2925,
    "Fantasy": 2731,
    "War": 1874,
    "Western": 1399,
    "Musical": 1054,
    "Film-Noir": 353,
    "IMAX": 195,
}
GENRES = sorted(GENRE_COUNTS)
CLUSTERS = (  # the core genres of each taste cluster
    ("Action", "Adventure"),
    ("Action", "Sci-Fi"),
    ("Comedy", "Romance"),
    ("Drama", "Romance"),
    ("Horror", "Thriller"),
    ("Crime", "Thriller"),
    ("Animation", "Children"),
    ("Documentary",),
    ("Drama", "War"),
    ("Comedy",),
    ("Drama",),
    ("Fantasy", "Adventure"),
    ("Mystery", "Thriller"),
    ("Western", "Action"),
    ("Musical", "Romance"),
    ("Film-Noir", "Crime"),
)
FACTORS = 8
GLOBAL_MEAN = 3.53
TASTE_SD = 0.6
MEAN_FOCUS = 0.4  # the mean of user_focus, Beta(2, 3)
HEAVY_DRAWS = 6  # users expected to need more draws than this per rating: one-pass path


@dataclass
class World:
    """Everything about users and movies, drawn up front (small: per user, per movie)."""

    movie_ids: np.ndarray  # sorted; a movie's index is its rank by id
    movie_cluster: np.ndarray
    movie_bias: np.ndarray
    movie_factors: np.ndarray  # (movies, FACTORS) float32
    by_cluster: np.ndarray  # movie indices ordered by cluster
    weight: np.ndarray  # popularity
    cum_weight: np.ndarray  # cumulative popularity along by_cluster
    cluster_lo: np.ndarray  # cum_weight before each cluster's first movie
    cluster_hi: np.ndarray
    counts: np.ndarray  # ratings per user
    user_cluster: np.ndarray
    user_focus: np.ndarray  # share of a user's picks drawn from their own cluster
    user_bias: np.ndarray
    user_factors: np.ndarray
    whole_stars: np.ndarray
    first_ts: np.ndarray
    span: np.ndarray
    taste_scale: float
    intercept: float
    grid: np.ndarray  # draw counts
    distinct: np.ndarray  # (cluster, grid): expected distinct movies after that many draws
    designated: np.ndarray  # (user, movie) index pairs sorted by user: each movie once


def user_counts(rng: np.random.Generator, users: int, movies: int, ratings: int) -> np.ndarray:
    """Log-normal activity above the minimum of 20, rescaled to sum to exactly `ratings`."""
    cap = max(MIN_PER_USER, min(movies, int(movies * MAX_USER_SHARE)))
    if not MIN_PER_USER * users <= ratings <= cap * users:
        raise SystemExit(
            f"{ratings} ratings cannot give {users} users between {MIN_PER_USER} and {cap} each"
        )
    excess = rng.lognormal(mean=3.93, sigma=1.39, size=users)
    counts = np.full(users, MIN_PER_USER, dtype=np.int64)
    for _ in range(100):  # rescale, clip to the cap, repeat until the cap stops biting
        room = cap - counts
        want = ratings - int(counts.sum())
        open_ = np.flatnonzero(room > 0)
        if want <= len(open_):  # the rounding leftover: one more each for random users
            counts[rng.choice(open_, size=want, replace=False)] += 1
            break
        weights = excess[open_] / excess[open_].sum()
        counts[open_] += np.minimum(np.floor(weights * want).astype(np.int64), room[open_])
    assert int(counts.sum()) == ratings
    return counts


def designate(rng: np.random.Generator, counts: np.ndarray, movies: int) -> np.ndarray:
    """One rater per movie (picked in proportion to activity), so every movie is rated."""
    cum = np.cumsum(counts)
    users = np.searchsorted(cum, rng.random(movies) * cum[-1], side="right")
    for _ in range(100):
        over = np.bincount(users, minlength=len(counts)) > counts
        if not over.any():
            break
        clash = np.flatnonzero(over[users])
        users[clash] = np.searchsorted(cum, rng.random(len(clash)) * cum[-1], side="right")
    else:
        raise SystemExit("could not give every movie a rater: too few ratings for the movies")
    pairs = np.stack([users, np.arange(movies)], axis=1)
    return pairs[np.argsort(users, kind="stable")]


def build_world(rng: np.random.Generator, users: int, movies: int, ratings: int) -> World:
    span_ids = max(movies, round(movies * ML25M_MAX_ID / ML25M_MOVIES))
    movie_ids = np.sort(rng.choice(np.arange(1, span_ids + 1), size=movies, replace=False))
    clusters = len(CLUSTERS)
    cluster_share = rng.dirichlet(np.full(clusters, 3.0))
    movie_cluster = rng.choice(clusters, size=movies, p=cluster_share)
    # popularity: (rank + k)^-2.2, ranks loosely following the id (older ids, more ratings)
    order = np.argsort(np.arange(movies) / movies * 0.5 + rng.random(movies))
    rank = np.empty(movies, dtype=np.int64)
    rank[order] = np.arange(movies)
    weight = (rank + 1 + 400.0 * movies / ML25M_MOVIES) ** -2.2
    by_cluster = np.argsort(movie_cluster, kind="stable")
    cum_weight = np.cumsum(weight[by_cluster])
    ends = np.searchsorted(movie_cluster[by_cluster], np.arange(clusters), side="right")
    cluster_hi = np.where(ends > 0, cum_weight[np.maximum(ends - 1, 0)], 0.0)
    cluster_lo = np.concatenate(([0.0], cluster_hi[:-1]))

    centres = rng.normal(size=(clusters, FACTORS))
    movie_factors = centres[movie_cluster] + rng.normal(scale=0.7, size=(movies, FACTORS))
    log_pop = np.log(weight)
    movie_bias = rng.normal(scale=0.35, size=movies) + 0.15 * (log_pop - log_pop.mean()) / (
        log_pop.std() or 1.0
    )

    counts = user_counts(rng, users, movies, ratings)
    user_cluster = rng.choice(clusters, size=users, p=cluster_share)
    user_factors = centres[user_cluster] + rng.normal(scale=0.9, size=(users, FACTORS))
    first_ts = rng.integers(FIRST_TS, LAST_TS - 86_400, size=users)
    span = np.minimum(rng.lognormal(mean=math.log(86_400.0), sigma=3.0, size=users), 1e10)
    span = np.maximum(np.minimum(span, LAST_TS - first_ts), counts)
    world = World(
        movie_ids=movie_ids,
        movie_cluster=movie_cluster,
        movie_bias=movie_bias.astype(np.float32),
        movie_factors=movie_factors.astype(np.float32),
        by_cluster=by_cluster,
        weight=weight,
        cum_weight=cum_weight,
        cluster_lo=cluster_lo,
        cluster_hi=cluster_hi,
        counts=counts,
        user_cluster=user_cluster,
        user_focus=rng.beta(2.0, 3.0, size=users),
        user_bias=rng.normal(scale=0.45, size=users).astype(np.float32),
        user_factors=user_factors.astype(np.float32),
        whole_stars=rng.random(users) < 0.35,
        first_ts=first_ts,
        span=span,
        taste_scale=1.0,
        intercept=GLOBAL_MEAN,
        grid=np.empty(0),
        distinct=np.empty(0),
        designated=designate(rng, counts, movies),
    )
    world.grid, world.distinct = draw_table(world)
    # calibrate on pairs drawn the way ratings are: the taste term's spread is TASTE_SD and
    # the mean rating GLOBAL_MEAN, whatever the cluster focus adds to the dot products
    last = int(np.searchsorted(np.cumsum(counts), 200_000)) + 1
    sample, picked = pick_movies(rng, world, 0, min(last, users))
    taste = np.einsum("ij,ij->i", world.user_factors[sample], world.movie_factors[picked])
    world.taste_scale = TASTE_SD / (float(taste.std()) or 1.0)
    centre = world.user_bias[sample] + world.movie_bias[picked] + world.taste_scale * taste
    world.intercept = GLOBAL_MEAN - float(centre.mean())
    for _ in range(2):  # quantising and clipping move the mean: correct for that too
        halves, _ = rate(rng, world, 0, sample, picked)
        world.intercept += GLOBAL_MEAN - float(halves.mean()) / 2
    return world


def catalog_rows(rng: np.random.Generator, world: World) -> list[tuple[int, str, str]]:
    """movieId, title, genres: titles with commas, quotes, accents and a few without year."""
    movies = len(world.movie_ids)
    base = np.array([GENRE_COUNTS[g] for g in GENRES], dtype=float) / 62_423
    probs = np.tile(base * 0.5, (len(CLUSTERS), 1))
    for c, core in enumerate(CLUSTERS):
        for genre in core:
            probs[c, GENRES.index(genre)] = 0.8
    flags = rng.random((movies, len(GENRES))) < probs[world.movie_cluster]
    no_genres = rng.random(movies) < 0.06
    years = np.clip(
        np.round(1915 + 104 * np.sqrt(np.arange(movies) / movies) + rng.normal(0, 8, movies)),
        1874,
        2019,
    ).astype(int)
    kind = rng.random(movies)
    rows = []
    for index, movie_id in enumerate(world.movie_ids.tolist()):
        year, k = int(years[index]), kind[index]
        if k < 0.08:
            title = f"Synthetic Movie {movie_id}, The ({year})"
        elif k < 0.11:
            title = f'Synthetic "Quoted" Movie {movie_id} ({year})'
        elif k < 0.13:
            title = f"Film synthétique {movie_id}, Le ({year})"
        elif k < 0.14:
            title = f"Synthetic Series {movie_id} ({year}–{min(year + 3, 2019)})"
        elif k < 0.15:
            title = f"Synthetic Movie {movie_id}"
        else:
            title = f"Synthetic Movie {movie_id} ({year})"
        names = [g for g, on in zip(GENRES, flags[index], strict=True) if on]
        genres = "|".join(names) if names and not no_genres[index] else NO_GENRES
        rows.append((movie_id, title, genres))
    return rows


def draw_movies(rng: np.random.Generator, world: World, users: np.ndarray) -> np.ndarray:
    """One popularity-weighted movie per entry of `users`, from the user's own cluster with
    probability `user_focus`, else from the whole catalog (repeats possible)."""
    own = rng.random(len(users)) < world.user_focus[users]
    cluster = world.user_cluster[users]
    low = np.where(own, world.cluster_lo[cluster], 0.0)
    high = np.where(own, world.cluster_hi[cluster], world.cum_weight[-1])
    spot = low + rng.random(len(users)) * (high - low)
    slot = np.searchsorted(world.cum_weight, spot, side="right")
    return world.by_cluster[np.minimum(slot, len(world.by_cluster) - 1)]


def draw_table(world: World) -> tuple[np.ndarray, np.ndarray]:
    """For each cluster, the expected distinct movies after m draws with replacement (a
    user of average focus), on a geometric grid of m: how many draws a user will need."""
    grid = np.geomspace(1, 1e9, 120)
    share = world.weight / world.weight.sum()
    table = np.empty((len(CLUSTERS), len(grid)))
    for cluster in range(len(CLUSTERS)):
        inside = np.where(world.movie_cluster == cluster, share, 0.0)
        mix = (1 - MEAN_FOCUS) * share + MEAN_FOCUS * inside / max(inside.sum(), 1e-300)
        log_miss = np.log1p(-np.minimum(mix, 1 - 1e-12)).astype(np.float32)
        for at, m in enumerate(grid):
            table[cluster, at] = float((-np.expm1(np.float32(m) * log_miss)).sum())
    return grid, table


def pick_heavy(
    rng: np.random.Generator, world: World, user: int, fixed: np.ndarray, count: int
) -> np.ndarray:
    """`count` distinct movies for one user, `fixed` among them: weighted sampling without
    replacement by Efraimidis-Spirakis keys (one pass over the catalog; the same law as
    drawing one by one and skipping repeats, which would take too many draws here)."""
    share = world.weight / world.weight.sum()
    inside = world.movie_cluster == world.user_cluster[user]
    focus = world.user_focus[user]
    weight = (1 - focus) * share + focus * np.where(inside, share, 0.0) / share[inside].sum()
    score = np.log(rng.random(len(weight))) / np.maximum(weight, 1e-300)
    score[fixed] = np.inf
    return np.sort(np.argpartition(-score, count - 1)[:count])


def pick_movies(
    rng: np.random.Generator, world: World, first: int, last: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct movies for users first..last-1: (user index, movie index), sorted by both.

    Weighted sampling without replacement: each user draws movies one after another
    (popularity-weighted, a user-specific share from their own cluster) and keeps the
    first `count` distinct ones, the designated movie(s) first. The draws are made in bulk
    (numpy), as many as the user is expected to need, and extended in rounds for those
    still short. Heavy users, who would need far more draws than movies, take the
    equivalent one-pass path (`pick_heavy`).
    """
    movies = len(world.movie_ids)
    counts = world.counts[first:last]
    lo, hi = np.searchsorted(world.designated[:, 0], [first, last])
    fixed_user = world.designated[lo:hi, 0] - first
    fixed_movie = world.designated[lo:hi, 1]
    cluster = world.user_cluster[first:last]
    expected = np.empty(len(counts))
    for c in range(len(CLUSTERS)):
        mine = cluster == c
        expected[mine] = np.interp(counts[mine], world.distinct[c], world.grid, right=np.inf)
    heavy = expected > HEAVY_DRAWS * counts
    done: list[np.ndarray] = []
    for user in np.flatnonzero(heavy):
        fixed = fixed_movie[fixed_user == user]
        done.append(user * movies + pick_heavy(rng, world, first + user, fixed, counts[user]))

    light = ~heavy[fixed_user]
    keys = fixed_user[light] * movies + fixed_movie[light]
    seqs = np.full(len(keys), -1, dtype=np.int64)  # designated first
    target = np.where(heavy, 0, np.ceil(expected * 1.1).astype(np.int64) + 2)
    drawn = np.zeros(len(counts), dtype=np.int64)
    finished = heavy.copy()
    next_seq = 0
    for _ in range(100):
        have = np.bincount(keys // movies, minlength=len(counts))
        finished |= have == counts
        leaving = finished[keys // movies]
        done.append(keys[leaving])
        keys, seqs = keys[~leaving], seqs[~leaving]
        if finished.all():
            break
        short = ~finished
        target[short] = np.maximum(target[short], drawn[short] + 2 * (counts - have)[short])
        draws = np.where(short, target - drawn, 0)
        drawn += draws
        target[short] = np.ceil(target[short] * 1.3).astype(np.int64)  # if one more is needed
        new_user = np.repeat(np.arange(len(counts)), draws)
        new_key = new_user * movies + draw_movies(rng, world, first + new_user)
        keys = np.concatenate([keys, new_key])
        seqs = np.concatenate([seqs, next_seq + np.arange(len(new_key))])
        next_seq += len(new_key)
        # the first draw of each pair, then each user's first `count` pairs in draw order
        order = np.lexsort((seqs, keys))
        keys, seqs = keys[order], seqs[order]
        first_draw = np.concatenate(([True], keys[1:] != keys[:-1]))
        keys, seqs = keys[first_draw], seqs[first_draw]
        owner = keys // movies
        order = np.lexsort((seqs, owner))
        starts = np.searchsorted(owner[order], np.arange(len(counts)))
        place = np.arange(len(order)) - starts[owner[order]]
        keep = np.sort(order[place < counts[owner[order]]])
        keys, seqs = keys[keep], seqs[keep]
    else:
        raise RuntimeError("could not fill every user's ratings")
    picked = np.sort(np.concatenate(done))
    return picked // movies, picked % movies


def rate(
    rng: np.random.Generator, world: World, first: int, user: np.ndarray, movie: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Half-star ratings (as twice the stars, 1..10) and timestamps for the chosen pairs."""
    who = first + user
    taste = np.einsum("ij,ij->i", world.user_factors[who], world.movie_factors[movie])
    value = (
        world.intercept
        + world.user_bias[who]
        + world.movie_bias[movie]
        + world.taste_scale * taste
        + rng.normal(scale=0.7, size=len(user)).astype(np.float32)
    )
    halves = np.where(world.whole_stars[who], np.round(value) * 2, np.round(value * 2))
    halves = np.clip(halves, 1, 10).astype(np.int64)
    halves[world.whole_stars[who] & (halves == 1)] = 2
    stamp = world.first_ts[who] + np.floor(rng.random(len(user)) * world.span[who])
    return halves, stamp.astype(np.int64)


def ascii_ints(values: np.ndarray, width: int) -> np.ndarray:
    """(n, width) ASCII digits, right-aligned, the unused leading places zero bytes."""
    out = np.zeros((len(values), width), dtype=np.uint8)
    rest = values.astype(np.int64)
    for place in range(width - 1, -1, -1):
        rest, digit = np.divmod(rest, 10)
        out[:, place] = digit + ord("0")
    digits = np.searchsorted(10 ** np.arange(1, width + 1), values, side="right") + 1
    out[np.arange(width)[None, :] < (width - digits)[:, None]] = 0
    return out


def csv_lines(user_id: np.ndarray, movie_id: np.ndarray, halves: np.ndarray, stamp: np.ndarray):
    """The CSV text of a chunk, built by numpy (no per-row Python): `u,m,4.5,ts\\n`."""
    widths = [len(str(int(column.max()))) for column in (user_id, movie_id, stamp)]
    parts = [
        ascii_ints(user_id, widths[0]),
        np.full((len(user_id), 1), ord(","), np.uint8),
        ascii_ints(movie_id, widths[1]),
        np.full((len(user_id), 1), ord(","), np.uint8),
        (halves // 2 + ord("0")).astype(np.uint8)[:, None],
        np.full((len(user_id), 1), ord("."), np.uint8),
        np.where(halves % 2 == 1, ord("5"), ord("0")).astype(np.uint8)[:, None],
        np.full((len(user_id), 1), ord(","), np.uint8),
        ascii_ints(stamp, widths[2]),
        np.full((len(user_id), 1), ord("\n"), np.uint8),
    ]
    flat = np.concatenate(parts, axis=1).ravel()
    return flat[flat != 0].tobytes()


def chunk_bounds(counts: np.ndarray, chunk_ratings: int) -> list[tuple[int, int]]:
    """Consecutive user ranges of about `chunk_ratings` ratings each."""
    cum = np.cumsum(counts)
    cuts = np.searchsorted(cum, np.arange(chunk_ratings, int(cum[-1]), chunk_ratings))
    edges = np.unique(np.concatenate(([0], cuts + 1, [len(counts)])))
    edges = edges[edges <= len(counts)]
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def generate(
    out: Path,
    users: int = ML25M_USERS,
    movies: int = ML25M_MOVIES,
    ratings: int = ML25M_RATINGS,
    seed: int = 25,
    order: str = "movie",
    chunk_ratings: int = 1_000_000,
) -> dict[str, object]:
    """Write movies.csv and ratings.csv under `out`; returns the figures it prints."""
    started = time.perf_counter()
    if movies < MIN_PER_USER:
        raise SystemExit(f"need at least {MIN_PER_USER} movies (every user rates 20)")
    if ratings < movies:
        raise SystemExit("need at least one rating per movie")
    seeds = np.random.SeedSequence(seed)
    world_seed, catalog_seed, chunk_seed = seeds.spawn(3)
    world = build_world(np.random.default_rng(world_seed), users, movies, ratings)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "movies.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["movieId", "title", "genres"])
        writer.writerows(catalog_rows(np.random.default_rng(catalog_seed), world))
    bounds = chunk_bounds(world.counts, chunk_ratings)
    written = 0
    histogram = np.zeros(11, dtype=np.int64)
    with (out / "ratings.csv").open("wb") as handle:
        handle.write(b"userId,movieId,rating,timestamp\n")
        for (first, last), child in zip(bounds, chunk_seed.spawn(len(bounds)), strict=True):
            rng = np.random.default_rng(child)
            user, movie = pick_movies(rng, world, first, last)
            halves, stamp = rate(rng, world, first, user, movie)
            if order == "time":
                by_time = np.lexsort((stamp, user))
                user, movie, halves, stamp = (a[by_time] for a in (user, movie, halves, stamp))
            handle.write(csv_lines(first + 1 + user, world.movie_ids[movie], halves, stamp))
            histogram += np.bincount(halves, minlength=11)
            written += len(user)
    assert written == ratings, (written, ratings)
    seconds = time.perf_counter() - started
    return {
        "out": str(out),
        "users": users,
        "movies": movies,
        "ratings": written,
        "max_movie_id": int(world.movie_ids[-1]),
        "ratings_per_user": {
            "min": int(world.counts.min()),
            "median": float(np.median(world.counts)),
            "max": int(world.counts.max()),
        },
        "stars": {f"{h / 2:.1f}": int(n) for h, n in enumerate(histogram) if h},
        "mean_rating": round(float((histogram * np.arange(11)).sum() / 2 / written), 3),
        "seconds": round(seconds, 1),
        "ratings_csv_bytes": (out / "ratings.csv").stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--users", type=int, default=ML25M_USERS)
    parser.add_argument("--movies", type=int, default=ML25M_MOVIES)
    parser.add_argument("--ratings", type=int, default=ML25M_RATINGS)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the three above")
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--order", choices=("movie", "time"), default="movie")
    parser.add_argument("--chunk-ratings", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    scaled = [max(1, round(n * args.scale)) for n in (args.users, args.movies, args.ratings)]
    figures = generate(args.out, *scaled, args.seed, args.order, args.chunk_ratings)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
