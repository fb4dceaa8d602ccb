"""A small client of the front door's Batch API over plain HTTP (the standard library's), for
people and tools without the OpenAI SDK: upload a file as it streams from disk, create,
follow, cancel a batch, read its files."""

from __future__ import annotations

import http.client
import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeGuard, TypeVar

from schemas.redact import mask_url

CHUNK = 1 << 20
T = TypeVar("T")
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
SHOWN_CHARS = 200
"""How much of an answer that is not the door's a message quotes (an HTML page, whole, is
no error line)."""
NOT_TO_FIX = frozenset({404, 408, 409, 429})
"""The 4xx refusals that are no fault of how the call was made: no such batch or file, too
slow, a batch in a state that refuses it (cancelling an ended one), too busy."""
PROXIED = frozenset({429, 502, 503, 504})
"""What a proxy in front of the door (an ingress) answers in a page of its own, not the
door's JSON, while the door restarts or is busy: asked again later (another page is not)."""


class BatchApiError(RuntimeError):
    """The front door refused, or could not be reached; the message says which and why.
    `retriable`: the door was away or busy (a restart), not a refusal of the call itself.
    `to_fix`: what was asked (a line, the key, LLMQ_API_URL) is at fault; asked the same
    way again, it fails the same way."""

    def __init__(self, message: str, *, retriable: bool = False, to_fix: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.to_fix = to_fix


class BatchApi:
    """One front door, as one tenant (its API key; none for an open door on loopback)."""

    call_timeout_s = 30.0
    """How long a small call (create, status, cancel) waits for each answer from the door: it
    only reads and writes a few Redis keys, so a longer silence is a door that is not there."""
    transfer_timeout_s = 120.0
    """How long an upload or a file's download waits for the door: an upload is answered
    once the door has stored all its lines."""
    outage_s = 300.0
    """How long `wait` and `save` go on asking a door that does not answer (a restart,
    rolling or not) before they give up; the batch itself goes on meanwhile."""
    max_pause_s = 10.0
    """The longest pause between two asks in such an outage (each pause doubles)."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def upload(self, path: Path) -> dict[str, Any]:
        """POST /v1/files (purpose batch), the file streamed from disk."""
        boundary = f"llmq-{secrets.token_hex(12)}"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body() -> Iterator[bytes]:
            yield head
            with path.open("rb") as file:
                while chunk := file.read(CHUNK):
                    yield chunk
            yield tail

        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + path.stat().st_size + len(tail)),
        }
        return self._call("POST", "/files", body(), headers, self.transfer_timeout_s, shape="file")

    def create(
        self,
        file_id: str,
        metadata: dict[str, str] | None = None,
        endpoint: str = "/v1/chat/completions",
    ) -> dict[str, Any]:
        """POST /v1/batches: run the file's lines, each calling `endpoint`, within 24 hours."""
        wanted = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": metadata,
        }
        return self._json("POST", "/batches", wanted)

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._json("GET", f"/batches/{batch_id}")

    def cancel(self, batch_id: str) -> dict[str, Any]:
        return self._json("POST", f"/batches/{batch_id}/cancel")

    def content(self, file_id: str) -> Iterator[bytes]:
        """A file's lines, as they stream in; BatchApiError where the door broke off."""
        rest = b""
        for block in self._blocks(file_id):
            *lines, rest = (rest + block).split(b"\n")
            yield from (line + b"\n" for line in lines)
        if rest:
            yield rest

    def _blocks(self, file_id: str) -> Iterator[bytes]:
        """A file's bytes, a block at a time as they stream in; BatchApiError where the door
        broke off."""
        request = urllib.request.Request(
            f"{self.base_url}/files/{file_id}/content", headers=self._headers
        )
        with self._open(request, self.transfer_timeout_s) as response:
            # Blocks, not the response's own lines: those end quietly where the door broke
            # off a streamed body (http.client's peek swallows the IncompleteRead).
            while block := response.read(CHUNK):
                yield block
            if response.length:  # read(n) stops short of a Content-Length quietly too
                raise http.client.IncompleteRead(b"", response.length)

    def save(
        self,
        file_id: str,
        path: Path,
        say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    ) -> None:
        """A file written whole to `path`: downloaded to `path`.part, renamed once all of it
        came, and downloaded again from its start through an outage of the door (a cut-off
        download left a short file under the final name)."""
        part = path.with_name(f"{path.name}.part")

        def download() -> None:
            with part.open("wb") as file:
                for block in self._blocks(file_id):
                    file.write(block)

        try:
            self._patient(download, file_id, 1.0, say, None)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        part.replace(path)

    def wait(
        self,
        batch_id: str,
        seen: Callable[[dict[str, Any]], None] = lambda _: None,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    ) -> dict[str, Any]:
        """The batch once it is completed, failed, expired or cancelled; `seen` gets it at
        every look, `say` a line when the door stops answering. TimeoutError past
        `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            batch = self._patient(lambda: self.batch(batch_id), batch_id, poll_s, say, deadline)
            seen(batch)
            if batch["status"] in FINAL:
                return batch
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} still {batch['status']}")
            time.sleep(poll_s)

    def _patient(
        self,
        call: Callable[[], T],
        what: str,
        pause_s: float,
        say: Callable[[str], None],
        deadline: float | None,
    ) -> T:
        """`call`'s answer, asked again through an outage of the door for up to `outage_s`
        (and not past `deadline`, a time.monotonic()), pauses doubling from `pause_s`; a
        refusal (404, 401) at once. `what` names the batch or file in what is said."""
        since, said = time.monotonic(), False
        end = since + self.outage_s if deadline is None else min(since + self.outage_s, deadline)
        while True:
            try:
                return call()
            except BatchApiError as exc:
                now = time.monotonic()
                if not exc.retriable:
                    raise
                if now >= end:
                    gave_up = f"{exc} Gave up waiting after {now - since:.0f} s."
                    if deadline is not None and end == deadline:  # the caller's bound
                        raise TimeoutError(f"{what} unanswered: {gave_up}") from None
                    raise BatchApiError(gave_up, retriable=True) from None
                if not said:
                    say(f"{exc} Still waiting up to {end - since:.0f} s for {what}.")
                    said = True
                time.sleep(min(pause_s, self.max_pause_s, end - now))
                pause_s = min(2 * pause_s, self.max_pause_s)

    def _json(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        return self._call(method, path, data, headers, self.call_timeout_s, shape="batch")

    def _call(
        self,
        method: str,
        path: str,
        data: Any,
        headers: dict[str, str],
        timeout_s: float,
        *,
        shape: Literal["file", "batch"],
    ) -> dict[str, Any]:
        """The door's answer, a `shape` (file, batch) object; BatchApiError where it is not
        one (another service at LLMQ_API_URL)."""
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={**self._headers, **headers}
        )
        with self._open(request, timeout_s) as response:
            status, raw = response.status, response.read()
        try:
            found: object = json.loads(raw)
        except ValueError:  # UnicodeDecodeError among them
            found = None
        if not _shaped(found, shape):
            raise _no_door(self.base_url, request, status, raw)
        return found

    @contextmanager
    def _open(self, request: urllib.request.Request, timeout_s: float) -> Iterator[Any]:
        """The door's response while it is read; BatchApiError naming the door (its password
        masked) where it refuses, cannot be reached, falls silent for `timeout_s` or breaks
        off its answer."""
        where = mask_url(self.base_url)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                yield response
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            message = _message(raw)
            if message is None and exc.code == 404:  # a page for a path unknown there
                raise _no_door(self.base_url, request, exc.code, raw) from None
            # The door's refusal, or a page of what stands in front of it (an ingress's 413
            # for an upload over its body size, its 503 while the door restarts).
            said = (
                f"the front door: {message}"
                if message is not None
                else f"{where}: {_shown(raw) or exc.reason}"
            )
            raise BatchApiError(
                f"{exc.code} from {said}",
                retriable=exc.code in PROXIED or (message is not None and exc.code >= 500),
                to_fix=400 <= exc.code < 500 and exc.code not in NOT_TO_FIX,
            ) from None
        except urllib.error.URLError as exc:
            raise _away(f"cannot reach the front door at {where} ({exc.reason})") from None
        except TimeoutError:  # a socket's read timeout is not wrapped in a URLError
            raise _away(
                f"the front door at {where} did not answer within {timeout_s:g} s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:  # cut off while it answered
            raise _away(f"the front door at {where} broke off its answer ({exc})") from None


def _away(what: str) -> BatchApiError:
    return BatchApiError(
        f"{what}; is it up (llmq local up), and is LLMQ_API_URL right?", retriable=True
    )


def _shaped(found: object, kind: str) -> TypeGuard[dict[str, Any]]:
    """Whether `found` is the door's `kind` object (file, batch), with the fields read here:
    a batch's status and request counts."""
    if not isinstance(found, dict) or found.get("object") != kind:
        return False
    if kind == "file":
        return isinstance(found.get("id"), str)
    counts = found.get("request_counts")
    return (
        all(isinstance(found.get(name), str) for name in ("id", "status"))
        and isinstance(counts, dict)
        and all(isinstance(counts.get(name), int) for name in ("total", "completed", "failed"))
    )


def _no_door(
    base_url: str, request: urllib.request.Request, status: int, raw: bytes
) -> BatchApiError:
    """An answer no llmq front door gives (JSON of another shape, a page for a path unknown
    there): another service listens at LLMQ_API_URL (named with its password masked; the call
    by its path under it)."""
    call = f"{request.get_method()} {request.full_url.removeprefix(base_url)}"
    said = f"{call} answered {status}: {_shown(raw) or '(empty)'}"
    return BatchApiError(
        f"not llmq's front door at {mask_url(base_url)} ({said}); is LLMQ_API_URL right?",
        to_fix=True,
    )


def _message(raw: bytes) -> str | None:
    """OpenAI's error message from an error's body; None where the body is not one."""
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return None


def _shown(raw: bytes) -> str:
    """A body on one line, cut after SHOWN_CHARS."""
    text = " ".join(raw.decode(errors="replace").split())
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}…"
