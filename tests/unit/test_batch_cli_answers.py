"""`llmq batch` against what answers at LLMQ_API_URL: another service (JSON of another shape,
an HTML page for a path unknown there) is named as not llmq's front door in one `llmq:` line,
its page cut short, exit status 2 (LLMQ_API_URL is to fix); another error page (an ingress's
413) by its status and the URL, exit status 2 where the request is to fix; the door's
refusals exit 2 where the request or key is to fix, 1 where nothing is (no such batch, busy);
a batch that completed with failed lines exits 0 and says how many failed and where their
errors are. The door is a small HTTP server in a thread of the test, on a free loopback
port."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, TypeAlias

import pytest

from llmq.cli import main
from tools.batch.client import SHOWN_CHARS, BatchApi, BatchApiError

pytestmark = pytest.mark.timeout(60)

Reply: TypeAlias = Callable[[BaseHTTPRequestHandler], None]
PAGE = "<html><body>" + "<p>a page of another service</p>\n" * 100 + "THE END</body></html>"


def send(body: str, code: int = 200) -> Reply:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        data = body.encode()
        handler.send_response(code)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return reply


def refused(code: int, message: str) -> Reply:
    """A refusal in OpenAI's shape, as the door's are."""
    return send(json.dumps({"error": {"message": message}}), code)


def batch(status: str, **fields: Any) -> Reply:
    counts = fields.pop("request_counts", {"total": 1, "completed": 1, "failed": 0})
    body = {"object": "batch", "id": "batch_1", "status": status, "request_counts": counts}
    return send(json.dumps(body | fields))


FILE = send(json.dumps({"object": "file", "id": "file_in"}))


@contextmanager
def door(replies: dict[str, list[Reply]], bodies: list[bytes] | None = None) -> Iterator[str]:
    """The base URL of a server that answers a path (after /v1) with its replies in turn
    (the last one repeats), any other path with those of "*"; the bodies posted go to
    `bodies`."""
    asked: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.removeprefix("/v1")
            key = path if path in replies else "*"
            asked[key] = asked.get(key, 0) + 1
            answers = replies[key]
            answers[min(asked[key], len(answers)) - 1](self)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if bodies is not None:
                bodies.append(body)
            self.do_GET()

        def log_message(self, *_: Any) -> None:
            """Quiet: the tests read stderr."""

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def lines(tmp_path: Path) -> Path:
    path = tmp_path / "lines.jsonl"
    path.write_text('{"custom_id": "a"}\n')
    return path


@pytest.mark.parametrize(
    "reply",
    [
        send("{}"),  # was a traceback: KeyError 'id'
        send(PAGE),  # was `llmq: Expecting value: line 1 column 1 (char 0)`, exit status 2
        send(PAGE, 404),  # was the whole page
        send(json.dumps({"object": "batch", "id": "batch_1", "status": "completed"})),
    ],
    ids=["json-of-another-shape", "html", "html-404", "batch-without-counts"],
)
def test_another_service_is_not_llmqs_front_door(
    reply: Reply,
    lines: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`batch results` of a batch without its counts was a traceback (KeyError
    'request_counts')."""
    commands = [
        ["batch", "status", "batch_1"],
        ["batch", "submit", str(lines)],
        ["batch", "results", "batch_1", "--out", str(tmp_path)],
    ]
    with door({"*": [reply]}) as url:
        monkeypatch.setenv("LLMQ_API_URL", url)
        for argv in commands:
            assert main(argv) == 2
            [line] = capsys.readouterr().err.strip().splitlines()
            assert line.startswith(f"llmq: not llmq's front door at {url} (")
            assert line.endswith("); is LLMQ_API_URL right?")
            assert "THE END" not in line and len(line) < SHOWN_CHARS + 200


def test_a_page_is_cut_short_and_its_url_named_without_its_password() -> None:
    with door({"*": [send(PAGE, 404)]}) as url, pytest.raises(BatchApiError) as caught:
        BatchApi(f"{url}?password=secret").batch("batch_1")
    said = str(caught.value)
    assert said.startswith(f"not llmq's front door at {url}?password=***")
    assert "(GET /batches/batch_1 answered 404: <html><body><p>a page of" in said
    assert "secret" not in said and "…); is LLMQ_API_URL right?" in said
    assert caught.value.to_fix and not caught.value.retriable


@pytest.mark.parametrize(("code", "status"), [(413, 2), (403, 2), (500, 1), (501, 1)])
def test_another_page_is_named_by_its_status(
    code: int,
    status: int,
    lines: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An ingress's 413 for an upload over its body size said `not llmq's front door ...; is
    LLMQ_API_URL right?`: the wrong setting to look at. A 5xx page is not waited through."""
    commands = [
        ["batch", "submit", str(lines)],
        ["batch", "status", "batch_1"],
        ["batch", "results", "batch_1", "--out", str(lines.parent)],
    ]
    with door({"*": [send(PAGE, code)]}) as url:
        monkeypatch.setenv("LLMQ_API_URL", url)
        for argv in commands:
            assert main(argv) == status
            [line] = capsys.readouterr().err.strip().splitlines()
            assert line.startswith(f"llmq: {code} from {url}: <html><body><p>a page of")
            assert "THE END" not in line and len(line) < SHOWN_CHARS + 100


def test_a_page_names_the_door_without_its_password() -> None:
    with door({"*": [send(PAGE, 413)]}) as url, pytest.raises(BatchApiError) as caught:
        BatchApi(f"{url}?password=secret").batch("batch_1")
    said = str(caught.value)
    assert said.startswith(f"413 from {url}?password=***: <html>") and "secret" not in said
    assert caught.value.to_fix and not caught.value.retriable


def test_a_proxys_page_while_the_door_restarts_is_waited_through() -> None:
    """A 503 page of an ingress in front of a restarting door is no other service."""
    said: list[str] = []
    replies = {"/batches/batch_1": [send(PAGE, 503), batch("completed")]}
    with door(replies) as url:
        done = BatchApi(url).wait("batch_1", poll_s=0.01, say=said.append)
    assert done["status"] == "completed"
    [line] = said
    assert line.startswith(f"503 from {url}: <html><body><p>a page of")
    assert "THE END" not in line


@pytest.mark.parametrize(
    ("code", "status"),
    [(400, 2), (401, 2), (403, 2), (413, 2), (404, 1), (409, 1), (429, 1), (500, 1)],
)
def test_a_refusal_to_fix_exits_2_and_any_other_1(
    code: int,
    status: int,
    lines: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A line too long (400) or a file too large (413) exited 1, as if the door were away:
    `llmq --help` says 2 is for a request to fix."""
    with door({"*": [refused(code, "why")]}) as url:
        monkeypatch.setenv("LLMQ_API_URL", url)
        for argv in (["batch", "submit", str(lines)], ["batch", "cancel", "batch_1"]):
            assert main(argv) == status
            [line] = capsys.readouterr().err.strip().splitlines()
            assert line == f"llmq: {code} from the front door: why"


def test_a_batch_with_failed_lines_says_how_many_and_where_their_errors_are(
    lines: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It completed (exit status 0) with every line failed, and said so only in its
    summary's counts. Its progress, off a terminal, is plain lines."""
    counts = {"total": 3, "completed": 0, "failed": 3}
    ended = batch("completed", request_counts=counts, error_file_id="file_err")
    replies = {
        "/files": [FILE],
        "/batches": [batch("validating")],
        "/batches/batch_1": [ended],
        "/files/file_err/content": [send('{"custom_id": "a"}\n')],
    }
    with door(replies) as url:
        monkeypatch.setenv("LLMQ_API_URL", url)
        assert main(["batch", "submit", str(lines), "--wait", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    errors = tmp_path / "batch_1_errors.jsonl"
    assert errors.read_text() == '{"custom_id": "a"}\n'
    assert out.splitlines() == [
        "batch_1",
        f"errors: {errors}",
        "completed: 0 completed, 3 failed of 3",
    ]
    assert f"llmq batch: 3 of 3 lines failed; see {errors}\n" in err
    assert "\r" not in err


def test_metadata_without_a_value_is_a_usage_error(
    lines: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was sent as {"novalue": ""}."""
    with pytest.raises(SystemExit) as exited:
        main(["batch", "submit", str(lines), "--metadata", "novalue"])
    assert exited.value.code == 2
    assert "argument --metadata: expected KEY=VALUE, got 'novalue'" in capsys.readouterr().err


def test_metadata_is_sent_as_given(lines: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bodies: list[bytes] = []
    with door({"/files": [FILE], "/batches": [batch("validating")]}, bodies) as url:
        monkeypatch.setenv("LLMQ_API_URL", url)
        argv = ["batch", "submit", str(lines), "--metadata", "a=1", "--metadata", "b=x=y"]
        assert main(argv) == 0
    assert json.loads(bodies[-1])["metadata"] == {"a": "1", "b": "x=y"}


def test_a_missing_file_is_an_llmq_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch", "submit", str(tmp_path / "none.jsonl")]) == 2
    assert capsys.readouterr().err == f"llmq: no file {tmp_path / 'none.jsonl'}\n"
