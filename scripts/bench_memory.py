#!/usr/bin/env python
"""Memory benchmark: what `saerec serve --workers N` costs per worker once a model serves.

Registers one model version at a catalog of ``--movies`` (default: MovieLens-25M's 59,047)
with the preset's layer sizes, serves it with 1 and then 2 uvicorn workers on one host,
asks each worker for recommendations, and reads each worker's /proc/PID/smaps_rollup (RSS,
PSS) and its mapping of the version's cached artifact (smaps). Prints JSON, with the
baseline in the same run: ``pss_ratio`` = sum of PSS with 2 workers / PSS with 1 (one
private copy of the weights per worker would come near 2; the target is at most 1.5).

The weights are the network's initial ones (no training: memory depends on the shapes, not
on the values; training at the 25M scale takes ~30 minutes here). The deep part ranks
(no item path), so every request reads the ranking head, the first layer and the rating
heads. SQLite in a temporary folder; a minute or two at the default size.

  .venv/bin/python scripts/bench_memory.py [--movies 59047] [--preset default] [--users 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import create_db_engine, create_session_factory, transaction, upgrade_schema  # noqa: E402
from app.ml.artifacts import ArtifactMeta, ArtifactStore, new_version_id  # noqa: E402
from app.ml.config import config_from, rating_network_config  # noqa: E402
from app.ml.data import IdMap  # noqa: E402
from app.ml.hybrid import BiasTerms, Blend, HybridModel  # noqa: E402
from app.ml.model import StackedAutoencoder  # noqa: E402
from app.models import Movie, Rating  # noqa: E402
from app.services import registry  # noqa: E402
from tests.test_artifact_storage import mapped_memory  # noqa: E402
from tests.test_multiprocess import pinned, running_server  # noqa: E402


def untrained_model(n_movies: int, preset: str) -> HybridModel:
    """The preset's networks at this catalog, as initialised: the shapes of a trained one."""
    config = config_from(preset)
    rank_net = StackedAutoencoder(n_movies, config).eval()
    rate_net = StackedAutoencoder(n_movies, rating_network_config(config)).eval()
    zeros = np.zeros(n_movies, dtype=np.float32)
    return HybridModel(
        config,
        rank_net,
        rate_net,
        None,
        BiasTerms(3.5, zeros, 5.0),
        Blend(item_weight=0.0, rating_weight=1.0),
        zeros,
        (1.0, 5.0),  # the networks' own rating_scale buffer, as initialised
    )


def seed(settings: Settings, n_movies: int, n_users: int, preset: str) -> dict[str, Any]:
    """The catalog, a few users' ratings, and the model registered and active."""
    engine = create_db_engine(settings)
    upgrade_schema(engine)
    rng = np.random.default_rng(0)
    factory = create_session_factory(engine)
    with transaction(factory) as session:
        session.execute(
            insert(Movie), [{"id": m, "title": f"Movie {m}"} for m in range(1, n_movies + 1)]
        )
        rows = [
            {"user_id": u, "movie_id": int(m), "rating": float(rng.integers(1, 11)) / 2,
             "timestamp": 1}
            for u in range(1, n_users + 1)
            for m in rng.choice(np.arange(1, n_movies + 1), size=50, replace=False)
        ]  # fmt: skip
        session.execute(insert(Rating), rows)
    meta = ArtifactMeta(new_version_id(), "bench", {"movies": n_movies}, {})
    model = untrained_model(n_movies, preset)
    saved = ArtifactStore(settings.model_dir).save(
        model, IdMap(np.arange(1, n_movies + 1, dtype=np.int64)), meta
    )
    del model
    with transaction(factory) as session:
        registry.register_version(
            session, meta, model_config(preset), saved, settings.artifact_chunk_bytes
        )
        registry.activate(session, meta.version)
    engine.dispose()
    return {"version": meta.version, "artifact": saved.path, "artifact_bytes": saved.size}


def model_config(preset: str) -> dict[str, Any]:
    return config_from(preset).model_dump(mode="json")


def rollup(pid: int) -> dict[str, int]:
    """RSS and PSS (kB) of the whole process."""
    figures = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            figures[name.lower() + "_kb"] = int(rest.split()[0])
    return figures


def measure(settings: Settings, workdir: Path, workers: int, seeded: dict[str, Any], users: int):
    """Each worker's memory after it answered every user once."""
    per_worker = []
    server = running_server(settings.database_url, workdir, workers)
    with server as base, pinned(base, workers) as clients:
        for client in clients.values():
            for user_id in range(1, users + 1):
                body = client.get(f"/users/{user_id}/recommendations").json()
                assert body["model_version"] == seeded["version"], body
        for pid in sorted(clients):
            rss, pss = mapped_memory(pid, seeded["artifact"])
            per_worker.append(
                {"pid": pid, **rollup(pid), "artifact_rss_kb": rss, "artifact_pss_kb": pss}
            )
    return {
        "workers": per_worker,
        "sum_rss_kb": sum(w["rss_kb"] for w in per_worker),
        "sum_pss_kb": sum(w["pss_kb"] for w in per_worker),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, default=59_047)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        work = Path(folder)
        settings = Settings(
            database_url=f"sqlite:///{work / 'saerec.db'}", model_dir=work / "models",
            _env_file=None,
        )  # fmt: skip
        seeded = seed(settings, args.movies, args.users, args.preset)
        one = measure(settings, work, 1, seeded, args.users)
        two = measure(settings, work, 2, seeded, args.users)
    report = {
        "scale": {
            "movies": args.movies,
            "preset": args.preset,
            "weights": "untrained (the preset's shapes at this catalog)",
            "artifact_bytes": seeded["artifact_bytes"],
            "database": "sqlite",
        },
        "workers_1": one,
        "workers_2": two,
        "pss_ratio": round(two["sum_pss_kb"] / one["sum_pss_kb"], 3),
        "rss_ratio": round(two["sum_rss_kb"] / one["sum_rss_kb"], 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
