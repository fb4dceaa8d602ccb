"""`llmq batch` and its client while the front door restarts: a wait and a file's download go
on through an outage of the door and give up only after `BatchApi.outage_s`, naming the
command that fetches the files later, and never leave a short file under the final name; a
refusal (404) ends them at once. A door cut off mid-answer is named
with LLMQ_API_URL, not a bare OS error. The door is a small HTTP server in a thread of the
test, on a free loopback port."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, TypeAlias

import pytest

from llmq.cli import main
from tools.batch.client import BatchApi, BatchApiError

pytestmark = pytest.mark.timeout(60)

Reply: TypeAlias = Callable[[BaseHTTPRequestHandler], None]
COUNTS = {"total": 2, "completed": 2, "failed": 0}


def answer(body: dict[str, Any], code: int = 200) -> Reply:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        data = json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return reply


def batch(status: str) -> Reply:
    body = {"object": "batch", "id": "batch_1", "status": status, "request_counts": COUNTS}
    return answer(body | {"output_file_id": "file_out"} if status == "completed" else body)


def hang_up(handler: BaseHTTPRequestHandler) -> None:
    """Closes without a word: http.client's RemoteDisconnected, a ConnectionResetError."""
    handler.close_connection = True


def cut_short(handler: BaseHTTPRequestHandler) -> None:
    """A body shorter than its Content-Length: http.client's IncompleteRead."""
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    handler.wfile.write(b'{"id": ')


def chunks_cut(handler: BaseHTTPRequestHandler) -> None:
    """A streamed body (as the door sends a file) that ends before its last chunk."""
    handler.protocol_version = "HTTP/1.1"
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    handler.wfile.write(b'7\r\n{"id": \r\n')
    handler.close_connection = True


def reset(handler: BaseHTTPRequestHandler) -> None:
    """Resets the connection (TCP RST) mid-body: a bare ConnectionResetError."""
    cut_short(handler)
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()  # the RST goes once the handler's files close, before a FIN


REFUSED = answer({"error": {"message": "no batch batch_1"}}, 404)
LINE = answer({"custom_id": "a"})


@contextmanager
def door(
    polls: list[Reply], contents: list[Reply] | None = None
) -> Iterator[tuple[str, list[str]]]:
    """The door's base URL and the paths asked; the n-th look at the batch gets the n-th
    of `polls`, the n-th download of a file the n-th of `contents` (the last ones repeat)."""
    asked: list[str] = []
    files = contents or [LINE]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            if self.path.endswith("/content"):
                n = sum(path.endswith("/content") for path in asked)
                files[min(n, len(files)) - 1](self)
            else:
                n = sum(path.startswith("/v1/batches/") for path in asked)
                polls[min(n, len(polls)) - 1](self)

        def do_POST(self) -> None:
            asked.append(self.path)
            self.rfile.read(int(self.headers["Content-Length"]))
            created = self.path == "/v1/batches"
            (batch("validating") if created else answer({"object": "file", "id": "file_in"}))(self)

        def log_message(self, *_: Any) -> None:
            """Quiet: the tests read stderr."""

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_wait_goes_on_through_a_door_that_hangs_up_cuts_short_and_resets() -> None:
    said: list[str] = []
    polls = [batch("in_progress"), hang_up, cut_short, reset, batch("completed")]
    with door(polls) as (url, asked):
        done = BatchApi(url).wait("batch_1", poll_s=0.01, say=said.append)
    assert done["status"] == "completed" and len(asked) == 5
    [line] = said  # once for the outage, not for each failed look
    assert line.startswith(f"the front door at {url} broke off its answer (")
    assert "LLMQ_API_URL" in line and line.endswith("Still waiting up to 300 s for batch_1.")


def test_an_outage_does_not_carry_a_wait_past_its_timeout() -> None:
    """It went on for BatchApi.outage_s (5 minutes) past the caller's timeout_s (llmq faults
    waits for its batch so), and would time this test out; it ends as the timeout the
    caller asked for, TimeoutError."""
    with door([hang_up]) as (url, _), pytest.raises(TimeoutError, match="Gave up waiting"):
        BatchApi(url).wait("batch_1", poll_s=0.01, timeout_s=0.3, say=lambda _: None)


def test_a_refusal_ends_the_wait_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BatchApi, "outage_s", 3.0)  # a wait that retried it would end too
    said: list[str] = []
    with door([REFUSED]) as (url, asked), pytest.raises(BatchApiError) as caught:
        BatchApi(url).wait("batch_1", poll_s=0.01, say=said.append)
    assert str(caught.value) == "404 from the front door: no batch batch_1"
    assert not caught.value.retriable and len(asked) == 1 and said == []


def test_submit_wait_saves_the_files_after_the_door_came_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"custom_id": "a"}\n')
    with door([hang_up, hang_up, batch("completed")]) as (url, _):
        monkeypatch.setenv("LLMQ_API_URL", url)
        argv = ["batch", "submit", str(lines), "--wait", "--out", str(tmp_path)]
        assert main(argv) == 0
    assert (tmp_path / "batch_1_output.jsonl").read_text() == '{"custom_id": "a"}'
    assert capsys.readouterr().err.count("Still waiting") == 1


def test_submit_wait_gives_up_naming_how_to_fetch_the_files_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It gave up at the first failed look, as `cannot reach the front door`, no more."""
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"custom_id": "a"}\n')
    monkeypatch.setattr(BatchApi, "outage_s", 0.3)
    with door([batch("in_progress"), hang_up]) as (url, asked):
        monkeypatch.setenv("LLMQ_API_URL", url)
        assert main(["batch", "submit", str(lines), "--wait", "--out", str(tmp_path)]) == 1
    assert len(asked) > 4  # the upload, the batch, its first look, then tries
    *_, gave_up, hint = capsys.readouterr().err.strip().splitlines()
    assert gave_up.startswith(f"llmq: the front door at {url} broke off its answer")
    assert "LLMQ_API_URL right? Gave up waiting after " in gave_up and gave_up.endswith(" s.")
    assert hint == (
        f"the batch goes on: llmq batch results batch_1 --out {tmp_path} "
        "saves its files once it has ended"
    )


def test_a_download_cut_off_is_downloaded_again_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A download the door broke off left its first bytes under the final name, exit 0 (one
    cut short of its Content-Length passed as whole) or 1."""
    monkeypatch.setattr(BatchApi, "max_pause_s", 0.01)
    with door([batch("completed")], [cut_short, chunks_cut, hang_up, LINE]) as (url, asked):
        monkeypatch.setenv("LLMQ_API_URL", url)
        assert main(["batch", "results", "batch_1", "--out", str(tmp_path)]) == 0
    assert sum(path.endswith("/content") for path in asked) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["batch_1_output.jsonl"]
    assert (tmp_path / "batch_1_output.jsonl").read_text() == '{"custom_id": "a"}'
    [line] = [line for line in capsys.readouterr().err.splitlines() if "Still waiting" in line]
    assert line.endswith("Still waiting up to 300 s for file_out.")


def test_a_download_that_never_comes_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(BatchApi, "outage_s", 0.3)
    with door([batch("completed")], [cut_short]) as (url, _):
        monkeypatch.setenv("LLMQ_API_URL", url)
        assert main(["batch", "results", "batch_1", "--out", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []
    assert "Gave up waiting after " in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_download_refused_ends_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BatchApi, "outage_s", 3.0)  # a download that retried it would end too
    gone = answer({"error": {"message": "no file file_out"}}, 404)
    with door([batch("completed")], [gone]) as (url, asked), pytest.raises(BatchApiError):
        BatchApi(url).save("file_out", tmp_path / "out.jsonl", say=lambda _: None)
    assert len(asked) == 1 and list(tmp_path.iterdir()) == []


def test_a_door_cut_off_mid_answer_is_named_with_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was `llmq: [Errno 104] Connection reset by peer`, or IncompleteRead's traceback."""
    with door([hang_up, cut_short, reset]) as (url, _):
        monkeypatch.setenv("LLMQ_API_URL", url)
        for _ in range(3):
            assert main(["batch", "status", "batch_1"]) == 1
    closed, short, reset_ = capsys.readouterr().err.strip().splitlines()
    for line in (closed, short, reset_):
        assert line.startswith(f"llmq: the front door at {url} broke off its answer (")
        assert line.endswith("is LLMQ_API_URL right?")
    assert "IncompleteRead" in short and "Connection reset by peer" in reset_
