"""The Batch API on the real stack, driven by the real OpenAI SDK: a few hundred lines to the
output file, a file with bad lines, the API's refusals, a cancel, an expiry, tenants kept
apart, a kill of each component mid-batch, and `llmq batch submit --wait`."""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types import Batch
from openai.types.responses import Response

from gateway.batch.routes import MAX_UPLOAD_BYTES
from gateway.batch.store import TOO_LARGE
from schemas.tenants import key_hash, new_key
from tools.faults.rig import kill9
from tools.stack.ports import free_block
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "smollm2-135m"
KEYS = {"acme": new_key(), "other": new_key(), "limited": new_key()}
WINDOW_S = 10
"""The completion window of batches made through the short door: long enough for a few short
lines on a busy machine, shorter than a refused line of tenant `limited` waits (20 s)."""
LONG = 1500
"""Tokens of a line that cannot finish within any of these tests' waits on this CPU."""
FINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture(scope="module")
def short_door(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second front door with API keys whose batches have a WINDOW_S completion window."""
    tenants = tmp_path_factory.mktemp("batch-door") / "tenants.toml"
    lines = [f'"{key_hash(key)}" = "{tenant}"' for tenant, key in KEYS.items()]
    tenants.write_text("[api_keys]\n" + "\n".join(lines) + "\n")
    port = free_block(1)
    env = {"LLMQ_TENANTS_FILE": str(tenants), "LLMQ_BATCH_WINDOW_S": str(WINDOW_S)}
    component = stack.gateway(port, "gateway-batches", env)
    stack.start(component, say=lambda _: None)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        component.proc.stop()


def _keyed(url: str, tenant: str) -> OpenAI:
    return OpenAI(base_url=url, api_key=KEYS[tenant], max_retries=0, timeout=60)


def _line(custom_id: str, max_tokens: int = 4, **body: Any) -> dict[str, Any]:
    """A line whose prompt no other test asks (no cache answers it)."""
    question = f"Name a colour. ({custom_id} {uuid.uuid4().hex[:8]})"
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": 0,
            **body,
        },
    }


def _upload(sdk: OpenAI, lines: list[dict[str, Any]] | list[str]) -> str:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    return sdk.files.create(file=("lines.jsonl", io.BytesIO(text.encode())), purpose="batch").id


def _start(sdk: OpenAI, lines: list[dict[str, Any]] | list[str], **extra: Any) -> Batch:
    return sdk.batches.create(
        input_file_id=_upload(sdk, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **extra,
    )


def _wait(sdk: OpenAI, batch_id: str, until: Any = None, timeout_s: float = 240) -> Batch:
    """The batch once `until(batch)` holds (default: it is over)."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if (until(batch) if until else batch.status in FINAL) or time.monotonic() > deadline:
            return batch
        time.sleep(0.5)


def _files(sdk: OpenAI, batch: Batch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The output and error lines."""
    found = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        text = sdk.files.content(file_id).text if file_id else ""
        found.append([json.loads(line) for line in text.splitlines()])
    return found[0], found[1]


def _once_each(output: list[dict[str, Any]], errors: list[dict[str, Any]], ids: list[str]) -> None:
    """Every custom_id of the file exactly once, in one of the two files."""
    seen = sorted(line["custom_id"] for line in output + errors)
    assert seen == sorted(ids), (len(seen), len(ids))


def test_a_few_hundred_lines_reach_the_output_file(sdk: OpenAI) -> None:
    lines = [_line(f"line-{n}") for n in range(300)]
    started = _start(sdk, lines, metadata={"job": "colours"})
    assert started.status == "validating" and started.metadata == {"job": "colours"}
    batch = _wait(sdk, started.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (300, 300)
    assert batch.request_counts.failed == 0 and batch.error_file_id is None
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.usage is not None and batch.usage.output_tokens > 0
    output, errors = _files(sdk, batch)
    _once_each(output, errors, [line["custom_id"] for line in lines])
    for line in output:
        response = line["response"]
        assert response["status_code"] == 200 and line["error"] is None
        assert response["body"]["object"] == "chat.completion"
        assert response["body"]["model"] == MODEL
        assert response["body"]["llmq"]["route"]["requested"] == MODEL
    usage = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)
    assert usage == batch.usage.output_tokens
    details = [line["response"]["body"]["usage"]["prompt_tokens_details"] for line in output]
    assert (
        sum(d["cached_tokens"] for d in details) == batch.usage.input_tokens_details.cached_tokens
    )
    assert batch.output_file_id is not None
    assert sdk.files.retrieve(batch.output_file_id).bytes == sum(
        len(json.dumps(line, separators=(",", ":"))) + 1 for line in output
    )
    assert started.id in [b.id for b in sdk.batches.list(limit=100).data]


def test_a_batch_of_text_completions_answers_raw_prompts(sdk: OpenAI) -> None:
    """endpoint /v1/completions: each line a raw prompt, each answer a text_completion; a
    chat line in such a batch fails it, naming the line."""
    prompts = [f"Once upon a time ({n} {uuid.uuid4().hex[:8]})" for n in range(3)]
    lines: list[dict[str, Any]] = [
        {
            "custom_id": f"text-{n}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": MODEL, "prompt": prompt, "max_tokens": 4, "ignore_eos": True},
        }
        for n, prompt in enumerate(prompts)
    ]
    started = sdk.batches.create(
        input_file_id=_upload(sdk, lines), endpoint="/v1/completions", completion_window="24h"
    )
    assert started.endpoint == "/v1/completions"
    batch = _wait(sdk, started.id)
    assert batch.status == "completed", batch
    output, errors = _files(sdk, batch)
    _once_each(output, errors, [line["custom_id"] for line in lines])
    for line in output:
        body = line["response"]["body"]
        assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 4
        assert isinstance(body["choices"][0]["text"], str)
    mixed = sdk.batches.create(
        input_file_id=_upload(sdk, [*lines[:1], _line("chat")]),
        endpoint="/v1/completions",
        completion_window="24h",
    )
    failed = _wait(sdk, mixed.id)
    assert failed.status == "failed" and failed.errors is not None
    [error] = failed.errors.data or []
    assert error.line == 2 and "url must be /v1/completions" in (error.message or "")


def test_a_batch_of_responses_echoes_what_each_line_asked(sdk: OpenAI) -> None:
    """endpoint /v1/responses: each answer a `response` that echoes its own line's
    instructions and metadata, not stored; a line that continues a stored response fails
    the batch, naming the line (each line stands alone)."""
    lines: list[dict[str, Any]] = [
        {
            "custom_id": f"resp-{n}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {
                "model": MODEL,
                "input": f"Name a colour. ({n} {uuid.uuid4().hex[:8]})",
                "instructions": f"Be brief, {n}.",
                "metadata": {"n": str(n)},
                "max_output_tokens": 4,
                "ignore_eos": True,
            },
        }
        for n in range(3)
    ]
    started = sdk.batches.create(
        input_file_id=_upload(sdk, lines), endpoint="/v1/responses", completion_window="24h"
    )
    batch = _wait(sdk, started.id)
    assert batch.status == "completed", batch
    output, errors = _files(sdk, batch)
    _once_each(output, errors, [line["custom_id"] for line in lines])
    for line in output:
        n = line["custom_id"].removeprefix("resp-")
        answer = Response.model_validate(line["response"]["body"])
        assert (answer.instructions, answer.metadata) == (f"Be brief, {n}.", {"n": n})
        assert answer.status == "incomplete" and answer.output_text
        assert answer.usage is not None and answer.usage.output_tokens == 4
        with pytest.raises(openai.NotFoundError):  # a batch's responses are not stored
            sdk.responses.retrieve(answer.id)
    continued = {**lines[0], "body": {**lines[0]["body"], "previous_response_id": "resp_1"}}
    mixed = sdk.batches.create(
        input_file_id=_upload(sdk, [lines[1], continued]),
        endpoint="/v1/responses",
        completion_window="24h",
    )
    failed = _wait(sdk, mixed.id)
    assert failed.status == "failed" and failed.errors is not None
    [error] = failed.errors.data or []
    assert error.line == 2 and "previous_response_id" in (error.message or "")


def test_a_file_with_bad_lines_fails_naming_them(sdk: OpenAI) -> None:
    good = _line("ok")
    bad = [
        json.dumps(good),
        "{not json",
        json.dumps(_line("ok")),  # the custom_id again
        json.dumps({**_line("get"), "method": "GET"}),
        json.dumps({**_line("embed"), "url": "/v1/embeddings"}),
        json.dumps(_line("unknown", model="no-such-model")),
        json.dumps(_line("negative", max_tokens=-1)),
        json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": good["body"]}),
    ]
    batch = _wait(sdk, _start(sdk, bad).id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    assert [e.line for e in batch.errors.data] == [2, 3, 4, 5, 6, 7, 8]
    codes = {e.line: e.code for e in batch.errors.data}
    assert codes[2] == "invalid_json" and codes[3] == "duplicate_custom_id"
    assert codes[6] == "unknown_model"
    assert all(e.message for e in batch.errors.data)
    assert batch.output_file_id is None and batch.error_file_id is None


def test_the_api_refuses_what_it_cannot_run(sdk: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="purpose"):
        sdk.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="no lines"):
        sdk.files.create(file=("x.jsonl", io.BytesIO(b"\n\n")), purpose="batch")
    file_id = _upload(sdk, [_line("one")])
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        sdk.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="48h",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        sdk.batches.create(
            input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        sdk.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        sdk.batches.retrieve("batch_nope")
    done = _wait(sdk, _start(sdk, [_line("one")]).id)
    assert done.status == "completed"
    with pytest.raises(openai.ConflictError, match="completed"):
        sdk.batches.cancel(done.id)


def test_an_uploaded_file_reads_back_as_it_came(sdk: OpenAI) -> None:
    first, second = json.dumps(_line("a")), json.dumps(_line("b"))
    text = f"{first}\n\n{second}"  # a blank line, and no newline at the end
    uploaded = sdk.files.create(file=("two.jsonl", io.BytesIO(text.encode())), purpose="batch")
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == (
        "two.jsonl",
        len(text),
        "batch",
    )
    assert sdk.files.retrieve(uploaded.id).id == uploaded.id
    assert sdk.files.content(uploaded.id).text == f"{first}\n{second}\n"
    assert uploaded.id in [f.id for f in sdk.files.list().data]


def test_a_cancel_keeps_what_was_answered_and_stops_the_rest(sdk: OpenAI) -> None:
    short = [_line(f"short-{n}") for n in range(3)]
    long = [_line(f"long-{n}", LONG, ignore_eos=True) for n in range(12)]
    started = _start(sdk, short + long)
    running = _wait(sdk, started.id, lambda b: b.request_counts and b.request_counts.completed >= 3)
    assert running.status == "in_progress"
    cancelling = sdk.batches.cancel(started.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = _wait(sdk, started.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    output, errors = _files(sdk, batch)
    _once_each(output, errors, [line["custom_id"] for line in short + long])
    assert {line["custom_id"] for line in short} <= {line["custom_id"] for line in output}
    stopped = {line["custom_id"] for line in errors}
    assert {line["custom_id"] for line in long} == stopped
    assert batch.request_counts is not None and batch.request_counts.failed == len(long)


def test_a_file_is_deleted_once_no_batch_reads_or_writes_it(sdk: OpenAI) -> None:
    started = _start(sdk, [_line(f"held-{n}", LONG, ignore_eos=True) for n in range(2)])
    reading = f"batch {started.id}, which is (validating|in_progress)"
    with pytest.raises(openai.ConflictError, match=reading):
        sdk.files.delete(started.input_file_id)
    running = _wait(sdk, started.id, lambda b: b.status != "validating")
    assert running.status == "in_progress", running  # its lines are out: they get cancelled
    with pytest.raises(openai.ConflictError, match=f"batch {started.id}, which is in_progress"):
        sdk.files.delete(started.input_file_id)
    sdk.batches.cancel(started.id)
    batch = _wait(sdk, started.id)
    assert batch.status == "cancelled" and batch.error_file_id is not None
    for file_id in (started.input_file_id, batch.error_file_id):
        deleted = sdk.files.delete(file_id)
        assert deleted.deleted and deleted.id == file_id
        for gone in (sdk.files.retrieve, sdk.files.content, sdk.files.delete):
            with pytest.raises(openai.NotFoundError):
                gone(file_id)
        assert file_id not in [f.id for f in sdk.files.list(limit=100).data]
    assert sdk.batches.retrieve(started.id).status == "cancelled"  # the batch itself stays


def test_an_expired_batch_reports_its_unfinished_lines(short_door: str) -> None:
    with _keyed(short_door, "acme") as sdk:
        long = [_line(f"long-{n}", LONG, ignore_eos=True) for n in range(4)]
        started = _start(sdk, long)
        assert started.expires_at is not None
        assert started.expires_at - started.created_at <= WINDOW_S
        batch = _wait(sdk, started.id, timeout_s=60)
        assert batch.status == "expired" and batch.expired_at is not None
        output, errors = _files(sdk, batch)
    assert not output
    _once_each(output, errors, [line["custom_id"] for line in long])
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert batch.request_counts is not None and batch.request_counts.failed == len(long)


def test_lines_refused_past_the_window_say_why(short_door: str) -> None:
    """Tenant `limited` may send 3 requests a minute: a line refused for longer than the
    batch has left is an error line with the refusal, not a wait."""
    with _keyed(short_door, "limited") as sdk:
        lines = [_line(f"limited-{n}") for n in range(8)]
        batch = _wait(sdk, _start(sdk, lines).id, timeout_s=60)
        output, errors = _files(sdk, batch)
    assert batch.status == "completed", batch
    _once_each(output, errors, [line["custom_id"] for line in lines])
    limited = [e for e in errors if e["response"]["body"]["error"]["code"] == "rate_limited"]
    assert len(limited) >= 4 and all(e["response"]["status_code"] == 429 for e in limited)


def _unsent_upload(url: str, key: str | None) -> tuple[int, str]:
    """The door's answer to an upload declared past the limit whose body is never sent: a
    door that read the body before looking at the key and the length would never answer."""
    host, _, port = url.removeprefix("http://").removesuffix("/v1").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest("POST", "/v1/files")
        connection.putheader("Content-Type", "multipart/form-data; boundary=b")
        connection.putheader("Content-Length", str(MAX_UPLOAD_BYTES + 1))
        if key is not None:
            connection.putheader("Authorization", f"Bearer {key}")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())["error"]["message"]
    finally:
        connection.close()


def test_an_upload_is_refused_before_it_is_read(short_door: str) -> None:
    assert _unsent_upload(short_door, None) == (401, "no API key: send Authorization: Bearer KEY")
    with _keyed(short_door, "other") as sdk:
        kept = [f.id for f in sdk.files.list(limit=100).data]
        assert _unsent_upload(short_door, KEYS["other"]) == (400, TOO_LARGE)
        assert [f.id for f in sdk.files.list(limit=100).data] == kept


def test_tenants_see_only_their_own(short_door: str) -> None:
    with _keyed(short_door, "acme") as acme, _keyed(short_door, "other") as other:
        file_id = _upload(acme, [_line("mine")])
        with pytest.raises(openai.NotFoundError):
            other.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            other.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        batch = acme.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        with pytest.raises(openai.NotFoundError):
            other.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            other.batches.cancel(batch.id)
        assert batch.id not in [b.id for b in other.batches.list().data]
        assert _wait(acme, batch.id).status == "completed"


def test_a_batch_goes_on_through_a_kill_of_each_component(sdk: OpenAI, stack: LocalStack) -> None:
    """kill -9 of every front door, then of the stream processor, then of the worker, each
    brought back by `llmq local up`, while a batch runs: it completes with every line once."""
    lines = [_line(f"resume-{n}", 16) for n in range(150)]
    started = _start(sdk, lines)
    for name, answered in (("gateway", 10), ("streams", 40), (f"worker-{MODEL}", 70)):
        _wait(sdk, started.id, lambda b, at=answered: _answered(b) >= at)
        kill9(next(c for c in stack.components() if c.proc.name == name))
        stack.up(say=lambda _: None)
    batch = _wait(sdk, started.id)
    assert batch.status == "completed", batch
    output, errors = _files(sdk, batch)
    _once_each(output, errors, [line["custom_id"] for line in lines])
    assert not errors


def _answered(batch: Batch) -> int:
    counts = batch.request_counts
    return 0 if counts is None else counts.completed + counts.failed


def test_llmq_batch_submit_waits_and_saves_the_results(
    stack: LocalStack, tmp_path: Path, llmq_bin: Path, cli_env: dict[str, str]
) -> None:
    lines = [_line(f"cli-{n}") for n in range(20)]
    source = tmp_path / "lines.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    env = {**cli_env, "LLMQ_API_URL": f"http://127.0.0.1:{stack.settings.api_port}/v1"}
    command = [str(llmq_bin), "batch", "submit", str(source), "--wait", "--out", str(tmp_path)]

    def submit(*extra: str) -> subprocess.CompletedProcess[str]:
        run = [*command, *extra]
        done = subprocess.run(
            run, env=env, capture_output=True, text=True, timeout=240, check=False
        )
        assert done.returncode == 0, done.stderr
        return done

    done = submit()
    batch_id = done.stdout.splitlines()[0]
    assert "completed: 20 completed, 0 failed of 20" in done.stdout
    assert "20/20" in done.stderr  # the progress bar at its end
    saved = (tmp_path / f"{batch_id}_output.jsonl").read_text().splitlines()
    assert sorted(json.loads(s)["custom_id"] for s in saved) == sorted(
        line["custom_id"] for line in lines
    )
    # Text completions: the lines' endpoint named on the command line.
    text = {"model": MODEL, "prompt": f"Once upon a time ({uuid.uuid4().hex[:8]})", "max_tokens": 2}
    source.write_text(json.dumps({**lines[0], "url": "/v1/completions", "body": text}) + "\n")
    done = submit("--endpoint", "/v1/completions")
    [saved_text] = (tmp_path / f"{done.stdout.split()[0]}_output.jsonl").read_text().splitlines()
    assert json.loads(saved_text)["response"]["body"]["object"] == "text_completion"
