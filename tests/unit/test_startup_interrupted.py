"""A service stopped while it starts (Ctrl-C, or SIGTERM, before it takes its signals itself)
ends in one line and exit 0, as its stop once serving: Ctrl-C was a traceback from the
start-up check's own event loop (48 lines from the front door), and SIGTERM ended it
without a word."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmq import startup

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
REMOTE = ROOT / "examples" / "models-remote.toml"
"""Two models; remote-large's worker starts no vLLM."""
SERVICES = {
    "gateway": "the front door",
    "streams": "the stream processor",
    "workers": "the worker",
    "autoscaler": "the autoscaler",
}
"""Each service's module and the name its lines give it."""
INTERRUPTIBLE = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)
"""`python -m <module>` with Ctrl-C's KeyboardInterrupt, as in a terminal: a job a shell
started in the background (CI's) ignores SIGINT, and so would the service, inheriting it."""


@pytest.fixture
def hung_kafka() -> Iterator[socket.socket]:
    """A broker that takes connections and never answers: the start-up check waits on it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)  # a service that never connects fails the test, not hangs it
        yield server


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("module", SERVICES)
def test_a_service_stopped_while_it_reaches_kafka_says_so_in_one_line(
    tmp_path: Path, hung_kafka: socket.socket, module: str, signum: signal.Signals
) -> None:
    with socket.socket() as probe:  # the front door's port, free
        probe.bind(("127.0.0.1", 0))
        api_port = probe.getsockname()[1]
    env = {name: value for name, value in os.environ.items() if not name.startswith("LLMQ_")}
    env |= {
        "LLMQ_KAFKA_BOOTSTRAP": f"127.0.0.1:{hung_kafka.getsockname()[1]}",
        "LLMQ_API_PORT": str(api_port),
        "LLMQ_DATA_DIR": str(tmp_path),
        "LLMQ_MODELS_FILE": str(REMOTE),
        "LLMQ_MODEL": "remote-large",
        "REMOTE_LLM_API_KEY": "k",
    }
    run = [sys.executable, "-c", INTERRUPTIBLE, module]
    with subprocess.Popen(
        run,
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    ) as service:
        try:
            connection, _ = hung_kafka.accept()  # it is in the check, waiting for an answer
            with connection:
                service.send_signal(signum)
                _, said = service.communicate(timeout=60)
        finally:
            service.kill()
    assert service.returncode == 0, said
    assert f"{SERVICES[module]} stopped while starting" in said
    assert "Traceback" not in said


def test_sigterm_is_as_it_was_once_the_service_returns() -> None:
    """Only the start is interrupted by it; what handled it before handles it after."""
    seen: list[object] = []

    def main() -> int:
        seen.append(signal.getsignal(signal.SIGTERM))
        return 0

    before = signal.getsignal(signal.SIGTERM)
    assert startup.run(main, startup.log, "the service") == 0
    assert seen == [signal.default_int_handler]
    assert signal.getsignal(signal.SIGTERM) == before
