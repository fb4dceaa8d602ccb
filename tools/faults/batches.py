"""A batch through the Batch API while its front door, the stream processor and the worker
are each killed (kill -9) and restarted: every line must be in the output or error file
exactly once, and the batch must complete."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from schemas.names import METERING
from tools.batch.client import BatchApi
from tools.faults.load import ends, generation, read_back
from tools.faults.outcome import Outcome
from tools.faults.rig import Rig, kill9, wait_until
from tools.faults.scenarios import BUSY_WAIT_S, DRAIN_S
from tools.faults.tally import Reply, Request, count
from tools.stack.ports import free_block
from tools.stack.stack import Component

IN_FLIGHT = 8
"""Lines the batch's own front door keeps out at once: most lines are still to send when
it is killed, so its successor must go on from where it stopped."""
TOKENS = 16


def batch_restarts(rig: Rig, out: Outcome) -> None:
    """A batch runs on a front door of its own (the stack's is stopped, so this one drives
    it); that door, then streams, then the worker are killed and brought back."""
    lines = max(40, round(160 * rig.scale))
    tag = f"faults-batch-{uuid.uuid4().hex[:8]}"
    main = rig.component("gateway")
    rig.say(f"stopping {main.proc.name}, so the batch's own front door drives the batch")
    rig.stop(main)
    door = rig.stack.gateway(
        free_block(1), "gateway-batch", {"LLMQ_BATCH_IN_FLIGHT": str(IN_FLIGHT)}
    )
    metering_from = ends(rig.bootstrap, METERING)
    try:
        rig.stack.start(door, say=lambda line: rig.say(f"  {line}"))
        api = BatchApi(door.endpoint)
        batch_id = _submit(api, tag, lines)
        rig.say(f"batch {batch_id}: {lines} lines, {IN_FLIGHT} in flight at a time")
        fault_at = time.monotonic()
        notes = [_kill(rig, out, api, batch_id, door, after=lines // 6)]
        for name, share in (("streams", 3), ("worker", 2)):
            notes.append(_kill(rig, out, api, batch_id, rig.component(name), after=lines // share))
        try:
            batch = api.wait(batch_id, timeout_s=DRAIN_S)
        except TimeoutError:
            out.notes += notes
            raise RuntimeError(f"batch unfinished: {api.batch(batch_id)}") from None
        replies = _replies(api, batch)
    finally:
        door.proc.stop()
        rig.heal()  # the stack's own front door again
    generated = [
        f"{tag}-{number}"
        for r in read_back(rig.bootstrap, metering_from)
        if (cid := generation(r.value)) and cid.startswith(f"{batch_id}.")
        for number in [cid.split(".")[1]]
    ]
    requests = [Request(f"{tag}-{n}", fault_at, accepted=True) for n in range(lines)]
    out.tally = count(requests, replies, None, generated)
    counts = batch["request_counts"]
    out.notes += [
        *notes,
        f"batch {batch['status']}: {counts['completed']} completed, {counts['failed']} failed "
        f"of {counts['total']}",
    ]
    if batch["status"] != "completed":
        out.broken(f"the batch ended {batch['status']}, not completed")


def _submit(api: BatchApi, tag: str, lines: int) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lines.jsonl"
        path.write_text("\n".join(json.dumps(_line(tag, n)) for n in range(lines)) + "\n")
        return str(api.create(api.upload(path)["id"])["id"])


def _line(tag: str, number: int) -> dict[str, Any]:
    question = f"Write one sentence about the number {number}. ({tag})"
    return {
        "custom_id": f"{tag}-{number}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "messages": [{"role": "user", "content": question}],
            "max_tokens": TOKENS,
            "temperature": 0,
        },
    }


def _kill(
    rig: Rig, out: Outcome, api: BatchApi, batch_id: str, component: Component, *, after: int
) -> str:
    """Once `after` lines are answered, kill -9 the component and bring it back."""
    out.reached(
        wait_until(lambda: _answered(api.batch(batch_id)) >= after, BUSY_WAIT_S, interval_s=0.5),
        f"{after} lines answered before the kill of {component.proc.name}",
    )
    done = _answered(api.batch(batch_id))
    rig.say(f"killing {component.proc.name} with {done} lines answered (kill -9)")
    began = time.monotonic()
    kill9(component)
    rig.stack.start(component, say=lambda line: rig.say(f"  {line}"))
    return (
        f"{component.proc.name} killed at {done} lines, back after {time.monotonic() - began:.0f} s"
    )


def _answered(batch: dict[str, Any]) -> int:
    counts = batch["request_counts"]
    return int(counts["completed"]) + int(counts["failed"])


def _replies(api: BatchApi, batch: dict[str, Any]) -> list[Reply]:
    """Every line of the output and error files, as the tally reads replies."""
    found = []
    for field in ("output_file_id", "error_file_id"):
        if not batch.get(field):
            continue
        for raw in api.content(batch[field]):
            line = json.loads(raw)
            body = (line.get("response") or {}).get("body") or {}
            error = body.get("error") or line.get("error")
            text = None if error else body["choices"][0]["message"]["content"]
            status = "error" if error else "ok"
            code = error.get("code") if error else None
            found.append(Reply(0.0, line["custom_id"], status, error_code=code, text=text))
    return found
