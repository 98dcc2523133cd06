"""The real image and the compose deployment, built and run: scripts/container-check.sh.

Minutes long (a build, three trainings), so it is marked `container` and left out of the
default run; `.ci/run` runs it on its own (`scripts/test.sh -m container`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the check runs podman and debootstrap as root"),
]


def test_the_image_and_compose_deployment_work() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "container-check.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-6000:]
    summary = result.stdout
    assert "container check passed" in summary
    for step in (
        "build the Dockerfile",
        "HEALTHCHECK reports healthy",
        "runs as the non-root user",
        "retrain job taken by the worker",
        "compose down keeps the volume",
    ):
        assert step in summary, step
