"""`saerec train --distributed` under torchrun: 2 CPU processes (gloo), users sharded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.db import create_db_engine, upgrade_schema
from tests.factories import seed_synthetic

pytestmark = pytest.mark.slow
TRAIN_ARGS = ["--preset", "fast", "--epochs", "30", "--no-progress"]


def _run(args: list[str], env: dict[str, str], cwd: Path) -> dict:
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    start = result.stdout.index("{")
    return json.loads(result.stdout[start:])


def test_two_process_training_matches_single_process_quality(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ddp.db'}"
    engine = create_db_engine(Settings(database_url=url, _env_file=None))
    upgrade_schema(engine)
    seed_synthetic(engine, n_users=200, n_movies=60, per_user=12)
    engine.dispose()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "MODEL_DIR": str(tmp_path / "models"),
        "LOG_LEVEL": "WARNING",
        "QUALITY_GATE_MARGIN": "100",
        "QUALITY_GATE_NDCG_MARGIN": "0.99",
        "TORCH_THREADS": "1",
    }
    single = _run([sys.executable, "-m", "app.cli", "train", *TRAIN_ARGS], env, tmp_path)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "app.cli",
        "train",
        "--distributed",
        *TRAIN_ARGS,
    ]
    distributed = _run(torchrun, env, tmp_path)

    assert distributed["version"] != single["version"]
    assert distributed["activated"] is True  # rank 0 registered and activated it
    assert distributed["data"] == single["data"]
    one, two = single["metrics"], distributed["metrics"]
    assert abs(two["valid_ndcg@10"] - one["valid_ndcg@10"]) <= 0.08, (one, two)
    assert two["valid_rmse"] <= one["valid_rmse"] + 0.15, (one, two)


def test_distributed_without_torchrun_says_how(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    env.pop("RANK", None)
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "train", "--distributed", "--no-progress"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "torchrun" in result.stderr
