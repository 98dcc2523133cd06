"""Artifacts: exact round trip, clear errors, atomic writes."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from app.ml.artifacts import (
    ArtifactError,
    ArtifactMeta,
    ArtifactStore,
    data_fingerprint,
    load_artifact,
    new_version_id,
    sha256_of,
    write_atomically,
)
from app.ml.data import holdout_split
from app.ml.hybrid import Blend
from app.ml.model import StackedAutoencoder
from app.ml.scoring import FoldInScorer


@pytest.fixture()
def saved(tmp_path: Path, synthetic, trained):
    version = new_version_id()
    meta = ArtifactMeta(
        version,
        data_fingerprint(synthetic),
        {"users": synthetic.shape[0], "ratings": synthetic.nnz},
        {"valid_rmse": 0.9},
    )
    saved = ArtifactStore(tmp_path).save(trained.model, synthetic.movies, meta)
    return saved.path, trained.model, version


def test_round_trip_identical_predictions(saved, synthetic) -> None:
    path, model, version = saved
    loaded = load_artifact(path)
    assert loaded.version == version and loaded.movies == synthetic.movies
    assert loaded.rating_scale == model.rating_scale and loaded.metrics == {"valid_rmse": 0.9}
    assert not loaded.model.rank_net.training and loaded.config == model.config
    assert loaded.model.blend == model.blend and loaded.model.item_path is not None
    assert set(loaded.libraries) == {"torch", "numpy", "python"}
    assert model.rate_net.rank_out is None  # the rating network, with its own shape
    assert loaded.model.rate_net.config == model.rate_net.config != model.config
    a = FoldInScorer(model).score_rows(synthetic.matrix[:20])
    b = FoldInScorer(loaded.model).score_rows(synthetic.matrix[:20])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert model.validated is not None and loaded.model.validated is not None
    rows = synthetic.matrix[:20]
    gated = FoldInScorer(model.as_validated()).score_rows(rows)  # every part before the refit
    reread = FoldInScorer(loaded.model.as_validated()).score_rows(rows)
    np.testing.assert_array_equal(gated[0], reread[0])
    np.testing.assert_array_equal(gated[1], reread[1])
    assert not np.allclose(gated[1], a[1])  # their refit on every rating
    assert not np.allclose(gated[0], a[0])


def test_separate_rating_snapshot_round_trips(tmp_path: Path, synthetic, trained) -> None:
    """When the rating head's best epoch differs, its own weights travel in the artifact."""
    model = trained.model
    other = StackedAutoencoder(model.n_movies, model.config)
    other.load_state_dict(model.rank_net.state_dict())
    with torch.no_grad():
        other.rate_out.bias.add_(0.25)
    split = replace(model, rate_net=other.eval(), blend=replace(model.blend, rating_weight=1.0))
    path = ArtifactStore(tmp_path).save(split, synthetic.movies, ArtifactMeta("v1")).path
    loaded = load_artifact(path).model
    assert loaded.rate_net is not loaded.rank_net
    rows = synthetic.matrix[:5]
    np.testing.assert_array_equal(
        FoldInScorer(split).score_rows(rows)[1], FoldInScorer(loaded).score_rows(rows)[1]
    )
    assert not np.allclose(
        FoldInScorer(model.with_blend(split.blend)).score_rows(rows)[1],
        FoldInScorer(loaded).score_rows(rows)[1],
    )


def test_an_artifact_without_a_rating_network_config_still_loads(
    tmp_path: Path, synthetic, trained
) -> None:
    """Artifacts written before the rating network carried one config for both snapshots."""
    model = trained.model
    snapshot = replace(
        model, rate_net=model.rank_net, blend=replace(model.blend, rating_weight=1.0)
    )
    path = ArtifactStore(tmp_path).save(snapshot, synthetic.movies, ArtifactMeta("v1")).path
    payload = torch.load(path, weights_only=True)
    del payload["rate_config"]
    torch.save(payload, path)
    loaded = load_artifact(path).model
    assert loaded.rate_net is loaded.rank_net and loaded.rank_net.config == model.config


def test_store_layout_bytes_and_prune(saved, tmp_path: Path) -> None:
    """One folder per version holding <version>.pt; the bytes returned are the file's."""
    path, model, version = saved
    store = ArtifactStore(tmp_path)
    assert path == store.path(version) == tmp_path / version / f"{version}.pt"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    digest = sha256_of(path)
    assert digest is not None
    replica = ArtifactStore(tmp_path / "replica")
    pieces = [path.read_bytes()[i : i + 1000] for i in range(0, path.stat().st_size, 1000)]
    copy = replica.write(version, iter(pieces), digest)
    assert load_artifact(copy).version == version
    store.prune(version)
    assert not store.folder(version).exists() and copy.exists()
    with pytest.raises(ArtifactError, match="fails its checksum"):
        replica.write(version, iter([b"damaged", *pieces[1:]]), digest)
    assert sha256_of(copy) == digest  # a refused fetch leaves the file in place untouched
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]


def test_saved_checksum_and_size_are_the_file(tmp_path: Path, synthetic, trained) -> None:
    saved = ArtifactStore(tmp_path).save(trained.model, synthetic.movies, ArtifactMeta("v1"))
    assert saved.sha256 == sha256_of(saved.path)
    assert saved.size == saved.path.stat().st_size


def test_rating_scale_is_stored_once(saved) -> None:
    """The network's buffer carries it; the payload has no second copy to disagree."""
    path, model, _ = saved
    payload = torch.load(path, weights_only=True)
    assert "rating_scale" not in payload
    assert tuple(payload["rank_state"]["rating_scale"].tolist()) == model.rating_scale
    assert load_artifact(path).rating_scale == model.rating_scale


def test_write_atomically_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.bin"
    write_atomically(target, b"first")
    write_atomically(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


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


def test_mismatched_artifact(tmp_path: Path, synthetic, trained) -> None:
    store = ArtifactStore(tmp_path)
    path = store.save(trained.model, synthetic.movies, ArtifactMeta("v1")).path
    payload = torch.load(path, weights_only=True)
    payload["config"]["hidden"] = [9]  # weights no longer fit the config
    torch.save(payload, tmp_path / "shape.pt")
    with pytest.raises(ArtifactError, match="do not match"):
        load_artifact(tmp_path / "shape.pt")
    payload["format_version"] = 1
    torch.save(payload, tmp_path / "format.pt")
    with pytest.raises(ArtifactError, match="format version 1.*saerec train"):
        load_artifact(tmp_path / "format.pt")
    payload["format_version"] = 2
    payload["config"]["no_such_field"] = 1
    torch.save(payload, tmp_path / "config.pt")
    with pytest.raises(ArtifactError, match="config"):
        load_artifact(tmp_path / "config.pt")
    with pytest.raises(ValueError, match="movie map"):
        store.save(
            trained.model, type(synthetic.movies)(synthetic.movies.ids[:3]), ArtifactMeta("v2")
        )


def test_version_and_fingerprint(synthetic) -> None:
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", new_version_id())
    assert new_version_id() != new_version_id()
    train, _ = holdout_split(synthetic, 0.1, seed=0)
    assert data_fingerprint(synthetic) == data_fingerprint(synthetic)
    assert data_fingerprint(train) != data_fingerprint(synthetic)


def test_a_part_the_refit_kept_is_stored_once(tmp_path: Path, synthetic) -> None:
    """The validated parts share what the refit left alone (here both networks: the item
    path ranks and the bias terms rate alone), so the artifact holds them once; what the
    refit changed (the item path) travels in both versions."""
    from app.ml.config import config_from
    from app.ml.train import train_model

    train, valid = holdout_split(synthetic, 0.1, seed=0)
    config = config_from(
        "fast", hidden=(16,), epochs=3, seed=2, item_weight=1.0, rating_blend=0.0,
        popularity_penalty=0.0,
    )  # fmt: skip
    model = train_model(train, valid, config, threads=1).model
    assert model.validated is not None and model.validated.rank_net is model.rank_net
    path = ArtifactStore(tmp_path).save(model, synthetic.movies, ArtifactMeta("v1")).path
    stored = torch.load(path, weights_only=True)["validated"]
    assert stored["rank_state"] == stored["rate_state"] == "served"
    assert isinstance(stored["item_path"], dict)
    loaded = load_artifact(path).model
    assert loaded.validated is not None
    assert loaded.validated.rank_net is loaded.rank_net
    assert loaded.validated.rate_net is loaded.rate_net
    assert loaded.validated.item_path is not None and loaded.item_path is not None
    gated, served = loaded.validated.item_path.weights, loaded.item_path.weights
    assert (gated != served).nnz > 0
    rows = synthetic.matrix[:10]
    np.testing.assert_array_equal(
        FoldInScorer(model.as_validated()).score_rows(rows)[1],
        FoldInScorer(loaded.as_validated()).score_rows(rows)[1],
    )


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(path):
            start, stop = (int(v, 16) for v in fields[0].split("-"))
            ranges.append((start, stop))
    return ranges


def test_loaded_weights_are_read_in_place_from_the_mapped_file(saved) -> None:
    """The networks' weights, and the ranking head serving multiplies by, are views into the
    file's mapping (no per-process copy); a forward pass reads them there."""
    path, _, _ = saved
    loaded = load_artifact(path)
    ranges = _mapped_ranges(path)
    assert ranges, "the artifact is memory-mapped"
    scorer = FoldInScorer(loaded.model.with_blend(Blend(item_weight=0.0)))  # the deep part ranks
    head_t = scorer.rank_head_t
    assert head_t is not None
    net = loaded.model.rank_net
    for tensor in (net.first_layer.weight_t, net.rate_out.weight, head_t):
        assert any(start <= tensor.data_ptr() < stop for start, stop in ranges)
    assert net.rank_out is not None and head_t.data_ptr() == net.rank_out.weight.data_ptr()
    n_movies = loaded.model.n_movies
    user = sp.csr_matrix(([4.0, 2.0], ([0, 0], [0, n_movies - 1])), shape=(1, n_movies))
    assert np.isfinite(scorer.score_rows(user)[0]).all()
