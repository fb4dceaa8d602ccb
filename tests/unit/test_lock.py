"""The lock (deploy/lock/) agrees with pyproject.toml, and a change to its inputs is caught."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
BUILDS = ("cpu", "gpu")


def _locked(build: str) -> dict[str, Version]:
    text = (ROOT / "deploy" / "lock" / f"{build}.txt").read_text()
    return {
        _norm(name): Version(version)
        for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.M)
    }


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    return [Requirement(r) for r in [*project["dependencies"], *(r for e in extras for r in e)]]


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "deploy" / "lock.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("build", BUILDS)
def test_every_requirement_of_pyproject_is_locked_within_its_range(build: str) -> None:
    locked = _locked(build)
    for requirement in _requirements():
        version = locked.get(_norm(requirement.name))
        assert version is not None, f"{requirement.name} is not in deploy/lock/{build}.txt"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"deploy/lock/{build}.txt has {requirement.name}=={version}, outside {requirement}"
        )


@pytest.mark.parametrize("build", BUILDS)
def test_every_locked_package_carries_hashes(build: str) -> None:
    text = (ROOT / "deploy" / "lock" / f"{build}.txt").read_text()
    pins = re.findall(
        r"^[A-Za-z0-9._-]+==\S+ \\\n(?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+", text, re.M
    )
    assert len(pins) == len(_locked(build)) > 100


def test_the_committed_lock_matches_its_inputs() -> None:
    done = _check(ROOT)
    assert done.returncode == 0, done.stderr


def test_a_changed_input_is_named_with_what_to_do(tmp_path: Path) -> None:
    for part in ("pyproject.toml", "deploy/lock.py", "deploy/lock", "deploy/kafka"):
        source, target = ROOT / part, tmp_path / part
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"numpy>=', '"numpy>=1.27,'))
    done = _check(tmp_path)
    assert done.returncode == 1
    assert "pyproject.toml [project] dependencies changed since deploy/lock/cpu.txt" in done.stderr
    assert "pyproject.toml [project] dependencies changed since deploy/lock/gpu.txt" in done.stderr
    assert "Run `make lock`" in done.stderr
    (tmp_path / "deploy" / "kafka" / "pom.xml").write_text("<project/>")
    assert "deploy/kafka/pom.xml changed since deploy/kafka/jars.sha256" in _check(tmp_path).stderr
