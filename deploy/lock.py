"""The lock: the exact, hashed version of everything llmq installs, so that every machine
installs what CI tested.

    python deploy/lock.py            re-resolve (`make lock`), keeping locked versions
                                     where the inputs still allow them
    python deploy/lock.py --upgrade [PACKAGE ...]
                                     move every package (or just these) to its newest
    python deploy/lock.py --check    fail, naming the input, when an input changed since

Python: deploy/lock/{cpu,gpu}.txt, one per engine build, each resolved by uv from
pyproject.toml (every extra) and deploy/lock/engine-<build>.in, with overrides.txt and
excludes.txt applied; the installer and the image install them with --require-hashes.
Kafka: deploy/kafka/jars.sha256, the checksum of every broker jar the pom brings.
Each lock records the digest of each of its inputs; --check compares them. Standard
library only: the installer runs it before the venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = ROOT / "deploy" / "lock"
POM = ROOT / "deploy" / "kafka" / "pom.xml"
JARS = ROOT / "deploy" / "kafka" / "jars.sha256"
BUILDS = ("cpu", "gpu")
UV_VERSION = "0.13.8"
PLATFORM = ("--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_31")
"""Every build targets CPython 3.11 on x86_64 Linux with glibc 2.31 or newer (Debian 11+,
Ubuntu 20.04+), and installs wheels only: nothing is compiled on the way."""
INPUT = "# input "


class LockError(RuntimeError):
    """The lock cannot be made or does not match its inputs; the message says what to do."""


def inputs(build: str) -> dict[str, str]:
    """Each input of one build's lock, by name, with the sha256 of its content."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = {
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
    }
    digests = {
        "pyproject.toml [project] dependencies": _sha256(
            json.dumps(requirements, sort_keys=True).encode()
        )
    }
    for path in (
        LOCK_DIR / f"engine-{build}.in",
        LOCK_DIR / "overrides.txt",
        LOCK_DIR / "excludes.txt",
    ):
        digests[str(path.relative_to(ROOT))] = _sha256(path.read_bytes())
    return digests


def lock_path(build: str) -> Path:
    return LOCK_DIR / f"{build}.txt"


def resolve(build: str, upgrade: list[str] | None) -> None:
    """Write deploy/lock/<build>.txt with uv, then its header of input digests."""
    out = lock_path(build)
    command = [
        _uv(),
        "pip",
        "compile",
        "pyproject.toml",
        str((LOCK_DIR / f"engine-{build}.in").relative_to(ROOT)),
        "--all-extras",
        "--overrides",
        str((LOCK_DIR / "overrides.txt").relative_to(ROOT)),
        "--excludes",
        str((LOCK_DIR / "excludes.txt").relative_to(ROOT)),
        *PLATFORM,
        "--only-binary",
        ":all:",
        "--generate-hashes",
        "--no-header",
        "--quiet",
        "-o",
        str(out.relative_to(ROOT)),
    ]
    if upgrade == []:
        command.append("--upgrade")
    for name in upgrade or []:
        command += ["--upgrade-package", name]
    subprocess.run(command, cwd=ROOT, check=True)
    header = [
        f"# The {build} build's lock: every Python package llmq installs, exact and hashed.",
        "# Made by `make lock` (deploy/lock.py) from the inputs below; do not edit by hand.",
        *(f"{INPUT}{name} sha256:{digest}" for name, digest in inputs(build).items()),
    ]
    out.write_text("\n".join(header) + "\n" + out.read_text())


def lock_jars() -> None:
    """Fetch the broker jars the pom names and record each one's checksum."""
    if shutil.which("mvn") is None:
        raise LockError("Maven (mvn) is needed to lock the Kafka jars: apt-get install maven")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-Dstyle.color=never",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
            ],
            check=False,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise LockError(f"Maven could not fetch the Kafka jars:\n{done.stdout[-2000:]}")
        jars = sorted(Path(tmp).glob("*.jar"))
        lines = [f"{_sha256(jar.read_bytes())}  {jar.name}" for jar in jars]
    header = [
        "# The Kafka broker's jars, as deploy/kafka/pom.xml brings them; checked after every",
        "# fetch. Made by `make lock` (deploy/lock.py); do not edit by hand.",
        f"{INPUT}deploy/kafka/pom.xml sha256:{_sha256(POM.read_bytes())}",
    ]
    JARS.write_text("\n".join(header + lines) + "\n")


def check() -> list[str]:
    """What disagrees between the locks and their inputs, one line each (empty: all agree)."""
    problems = []
    for build in BUILDS:
        problems += _stale(lock_path(build), inputs(build))
    problems += _stale(JARS, {"deploy/kafka/pom.xml": _sha256(POM.read_bytes())})
    return problems


def _stale(lock: Path, want: dict[str, str]) -> list[str]:
    name = lock.relative_to(ROOT)
    if not lock.is_file():
        return [f"{name} is missing"]
    have = {}
    for line in lock.read_text().splitlines():
        if line.startswith(INPUT):
            key, _, digest = line[len(INPUT) :].rpartition(" sha256:")
            have[key] = digest
    return [
        f"{key} changed since {name} was made"
        for key, digest in want.items()
        if have.get(key) != digest
    ]


def _uv() -> str:
    """uv from llmq's venv or the PATH, at the version the lock is made with."""
    candidates = [Path(sys.executable).with_name("uv"), shutil.which("uv")]
    for uv in candidates:
        if uv is None or not Path(uv).is_file():
            continue
        found = subprocess.run([str(uv), "--version"], check=False, capture_output=True, text=True)
        version = found.stdout
        if version.split()[1:2] == [UV_VERSION]:
            return str(uv)
    raise LockError(
        f"uv {UV_VERSION} is needed to make the lock: `make install` puts it in llmq's venv, "
        f"or pip install uv=={UV_VERSION}"
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check the locks' inputs")
    mode.add_argument(
        "--upgrade", nargs="*", metavar="PACKAGE", help="newest versions (of these packages)"
    )
    args = parser.parse_args(argv)
    try:
        if not args.check:
            for build in BUILDS:
                resolve(build, args.upgrade)
            lock_jars()
        problems = check()
    except (LockError, subprocess.CalledProcessError) as exc:
        print(f"lock: {exc}", file=sys.stderr)
        return 1
    if problems:
        print("lock: the lock does not match its inputs:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print(
            "Run `make lock` and commit deploy/lock/ and deploy/kafka/jars.sha256.", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
