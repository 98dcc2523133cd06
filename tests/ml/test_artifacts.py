"""Artifacts: exact round trip, clear errors, atomic writes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from app.ml.artifacts import (
    ArtifactError,
    data_fingerprint,
    load_artifact,
    new_version_id,
    save_artifact,
)
from app.ml.data import holdout_split
from app.ml.model import StackedAutoencoder, config_from, predict


@pytest.fixture()
def saved(tmp_path: Path, synthetic):
    torch.manual_seed(0)
    config = config_from("fast", hidden=(8,))
    model = StackedAutoencoder(synthetic.shape[1], config)
    model.set_statistics(3.3, np.linspace(-0.5, 0.5, synthetic.shape[1]), (1.0, 5.0))
    version = new_version_id()
    path = save_artifact(
        tmp_path,
        version,
        model,
        config,
        synthetic.movies,
        (1.0, 5.0),
        {"valid_rmse": 0.9},
        data_fingerprint(synthetic),
        {"users": synthetic.shape[0], "ratings": synthetic.nnz},
    )
    return path, model, version


def test_round_trip_identical_predictions(saved, synthetic) -> None:
    path, model, version = saved
    loaded = load_artifact(path)
    assert loaded.version == version and loaded.movies == synthetic.movies
    assert loaded.rating_scale == (1.0, 5.0) and loaded.metrics == {"valid_rmse": 0.9}
    assert not loaded.model.training and loaded.config == config_from("fast", hidden=(8,))
    assert set(loaded.libraries) == {"torch", "numpy", "python"}
    a = predict(model, synthetic.matrix[:20])
    b = predict(loaded.model, synthetic.matrix[:20])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    # fold-in helper: a user unknown to training, by raw movie ids (unknown ids ignored)
    scores, preds = loaded.predict_user(
        synthetic.movies.ids[[0, 5]].tolist() + [-1], [4.0, 2.5, 3.0]
    )
    assert scores.shape == preds.shape == (len(synthetic.movies),)


def test_atomic_write_leaves_no_temp_file(saved) -> None:
    path, _, _ = saved
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_missing_truncated_corrupted(saved, tmp_path: Path) -> None:
    path, _, _ = saved
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "nope.pt")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError):
        load_artifact(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model at all" * 100)
    with pytest.raises(ArtifactError):
        load_artifact(garbage)


def test_mismatched_artifact(tmp_path: Path, synthetic) -> None:
    config = config_from("fast", hidden=(8,))
    model = StackedAutoencoder(synthetic.shape[1], config)
    path = save_artifact(tmp_path, "v1", model, config, synthetic.movies, (1.0, 5.0), {}, "x", {})
    payload = torch.load(path, weights_only=True)
    payload["config"]["hidden"] = [9]  # weights no longer fit the config
    torch.save(payload, tmp_path / "shape.pt")
    with pytest.raises(ArtifactError, match="do not match"):
        load_artifact(tmp_path / "shape.pt")
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "format.pt")
    with pytest.raises(ArtifactError, match="format version"):
        load_artifact(tmp_path / "format.pt")
    payload["format_version"] = 1
    payload["config"]["no_such_field"] = 1
    torch.save(payload, tmp_path / "config.pt")
    with pytest.raises(ArtifactError, match="config"):
        load_artifact(tmp_path / "config.pt")
    with pytest.raises(ValueError):
        save_artifact(
            tmp_path,
            "v2",
            model,
            config,
            synthetic.movies[:1] if False else type(synthetic.movies)(synthetic.movies.ids[:3]),
            (1, 5),
            {},
            "x",
            {},
        )


def test_version_and_fingerprint(synthetic) -> None:
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", new_version_id())
    assert new_version_id() != new_version_id()
    train, _ = holdout_split(synthetic, 0.1, seed=0)
    assert data_fingerprint(synthetic) == data_fingerprint(synthetic)
    assert data_fingerprint(train) != data_fingerprint(synthetic)
