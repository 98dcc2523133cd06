"""Report files next to an artifact."""

from __future__ import annotations

import json
import math
from pathlib import Path

from app.ml.report import write_report
from app.ml.train import EpochReport


def test_write_report(tmp_path: Path) -> None:
    history = [
        EpochReport(1, 2, 1.5, 0.99, 0.2, 0.1, best_ranking=True, best_rating=True),
        EpochReport(2, 2, 1.2, math.nan, 0.25, 0.1),
    ]
    paths = write_report(tmp_path / "v1.pt", {"valid_rmse": 0.99}, history)
    body = json.loads(paths["metrics"].read_text())
    assert body["metrics"] == {"valid_rmse": 0.99}
    assert body["history"][1]["valid_rmse"] is None and len(body["history"]) == 2
    assert paths["curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1.curve.png", "v1.metrics.json"]
