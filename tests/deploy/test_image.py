"""deploy/Dockerfile: the image has the C speed-ups, runs as non-root under tini (needs Docker)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent



def _engine() -> bool:
    """A Docker engine answers (a docker client alone, without a daemon, builds nothing)."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not _engine(), reason="needs a Docker engine (none answers on this machine)")


def _docker(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def test_the_image_has_its_speed_ups_and_runs_as_non_root_under_tini():
    tag = "pgsource-image-test:latest"
    built = _docker("build", "-f", str(REPO / "deploy" / "Dockerfile"), "-t", tag, str(REPO))
    assert built.returncode == 0, built.stderr[-3000:]
    check = _docker("run", "--rm", "--entrypoint", "python", tag, "-c",
                    "import os, pgsource.decode._rowjson, pgsource.encode._frames;"
                    " print(os.getuid(), os.environ['PROMETHEUS_MULTIPROC_DIR'])", timeout=120)
    assert check.returncode == 0, check.stderr
    assert check.stdout.split() == ["10001", "/run/pgsource/metrics"]
    inspect = _docker("image", "inspect", "--format", "{{json .Config.Entrypoint}}", tag, timeout=60)
    assert inspect.stdout.strip() == '["/usr/bin/tini","--","pgsource"]'
    helped = _docker("run", "--rm", tag, "--help", timeout=120)
    assert helped.returncode == 0 and "verify" in helped.stdout
