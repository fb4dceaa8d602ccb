"""deploy/install.sh on a fresh Debian, run against stand-ins (apt-get, sudo, Python, a venv)
that record what they are asked and change nothing on this machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "deploy" / "install.sh"
TOOLS = ["dirname", "id", "cat", "sha256sum", "cut", "env"]
"""What the script runs before it installs Python packages, taken from this machine."""
APT_TOOLS = ["java", "mvn", "redis-server", "kcat", "curl", "make", "promtool"]
PIP_STOP = 3
"""The stand-in venv's pip exits with this: a run ends where the packages would install."""

pytestmark = pytest.mark.timeout(60)

PYTHON = f"""#!/bin/sh
# A Python 3.11 whose ensurepip is there or not ($ENSUREPIP); it passes the lock's check and
# makes a venv whose python has pip and whose pip stops the run.
PATH=/usr/bin:/bin
echo "$*" >>"$LOG/python"
case "$*" in
  *ensurepip*) exit "$ENSUREPIP" ;;
  "-m venv "*)
    mkdir -p "$3/bin"
    printf '#!/bin/sh\\n[ "$*" = "-m pip --version" ]\\n' >"$3/bin/python"
    printf '#!/bin/sh\\nexit {PIP_STOP}\\n' >"$3/bin/pip"
    chmod +x "$3/bin/python" "$3/bin/pip" ;;
esac
"""


def _script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def _install(
    tmp_path: Path, *, present: list[str], ensurepip: bool
) -> subprocess.CompletedProcess[str]:
    """Run the installer with only TOOLS, the stand-ins and `present` on its PATH."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_ / tool).symlink_to(found)
    _script(bin_ / "apt-get", '#!/bin/sh\necho "$*" >>"$LOG/apt"\n')
    _script(bin_ / "sudo", '#!/bin/sh\nexec "$@"\n')
    _script(bin_ / "python3.11", PYTHON)
    for tool in present:
        _script(bin_ / tool, "#!/bin/sh\n")
    env = {
        "PATH": str(bin_),
        "HOME": str(tmp_path),
        "LOG": str(tmp_path),
        "ENSUREPIP": "0" if ensurepip else "1",
        "LLMQ_VENV": str(tmp_path / "venv"),
        "PYTHON": str(bin_ / "python3.11"),
    }
    bash = shutil.which("bash")
    assert bash
    done = subprocess.run(
        [bash, str(INSTALL)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == PIP_STOP, done.stdout + done.stderr
    return done


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_fresh_debian_gets_venv_and_make_and_promtool_without_its_daemons(
    tmp_path: Path,
) -> None:
    _install(tmp_path, present=[], ensurepip=False)
    updates, *installs = _lines(tmp_path / "apt")
    assert updates == "update -qq"
    [everything, lean] = [line.split() for line in installs]
    assert {"python3.11-venv", "make", "openjdk-17-jre-headless"} <= set(everything)
    assert "prometheus" not in everything
    assert lean[-2:] == ["--no-install-recommends", "prometheus"]


def test_nothing_comes_from_apt_when_all_is_there(tmp_path: Path) -> None:
    _install(tmp_path, present=APT_TOOLS, ensurepip=True)
    assert _lines(tmp_path / "apt") == []


def test_a_venv_without_pip_is_made_again(tmp_path: Path) -> None:
    """A venv whose making failed (no ensurepip) has bin/python and no bin/pip."""
    _script(tmp_path / "venv" / "bin" / "python", "#!/bin/sh\nexit 1\n")
    _install(tmp_path, present=APT_TOOLS, ensurepip=True)
    assert f"-m venv {tmp_path / 'venv'}" in _lines(tmp_path / "python")
