"""What the Batch API tests on a real Redis share: a tenant, its lines, an uploaded batch,
and where the runner's requests go (recorded, not published)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence

from gateway.batch.store import BatchStore
from schemas.catalog import Catalog
from schemas.errors import LlmqError
from schemas.request import InferenceRequest, RecordRefusedError

CATALOG = Catalog.builtin()
TENANT = "acme"


class Recorder:
    """Where the runner's lines and cancels go."""

    def __init__(self, too_large: frozenset[int] = frozenset()) -> None:
        self.sent: list[InferenceRequest] = []
        self.cancelled: list[str] = []
        self._too_large = too_large
        """Numbers of the lines Kafka refuses for their size."""

    async def publish(self, requests: Sequence[InferenceRequest]) -> dict[str, LlmqError]:
        refused: dict[str, LlmqError] = {
            r.correlation_id: RecordRefusedError("llmq.requests", 20_000, 10_000)
            for r in requests
            if int(r.correlation_id.split(".")[1]) in self._too_large
        }
        self.sent += [r for r in requests if r.correlation_id not in refused]
        return refused

    async def cancel(self, correlation_id: str, *, tenant: str | None = None) -> None:
        assert tenant == TENANT
        self.cancelled.append(correlation_id)


def line(n: int) -> str:
    body = {"model": CATALOG.default, "messages": [{"role": "user", "content": f"q {n}"}]}
    return json.dumps(
        {"custom_id": f"c{n}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


async def chunks(text: str, size: int = 7) -> AsyncIterator[bytes]:
    data = text.encode()
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def batch(
    store: BatchStore,
    lines: list[str],
    window_s: float = 3600,
    expires_after_s: int | None = None,
) -> str:
    """A batch of these lines (validating); its input file's `expires_after_s`, if given."""
    text = chunks("\n".join(lines))
    meta = await store.create_file(TENANT, "in.jsonl", "batch", text, expires_after_s)
    batch_id = f"batch_{time.time_ns():x}"
    now = time.time()
    await store.create_batch(
        {
            "id": batch_id,
            "tenant": TENANT,
            "endpoint": "/v1/chat/completions",
            "input_file_id": meta["id"],
            "lines": meta["lines"],
            "completion_window": "24h",
            "status": "validating",
            "created_at": str(int(now)),
            "expires_at": str(now + window_s),
        }
    )
    return batch_id
