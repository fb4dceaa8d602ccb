"""The responses kept to continue from (OpenAI's `store`, true unless the body says false):
each one's `response` object, and its conversation (the input before it, its own input and
its answer) for `previous_response_id`, per tenant in Redis for the retention time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from schemas.names import response_key, response_output_key, result_key

RESPONSE_ID = "resp_"
"""How a response's id begins: resp_<the correlation id of its request>."""


@dataclass(frozen=True)
class Kept:
    """A stored response: its object, as answered, and its conversation as chat messages."""

    response: dict[str, Any]
    messages: list[dict[str, Any]]


class ResponseStore:
    """Stored responses, shared by every front door through Redis."""

    def __init__(self, client: aioredis.Redis, retention_s: int) -> None:
        self._redis = client
        self._retention_s = retention_s

    async def keep(self, tenant: str, kept: Kept) -> None:
        """Store a response under its id, for the retention time, and its output items beside
        it (`outputs`)."""
        response_id = kept.response["id"]
        value = json.dumps({"response": kept.response, "messages": kept.messages})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(response_key(tenant, response_id), value, ex=self._retention_s)
            output = json.dumps(kept.response["output"])
            pipe.set(response_output_key(tenant, response_id), output, ex=self._retention_s)
            await pipe.execute()

    async def outputs(
        self, tenant: str, response_ids: list[str]
    ) -> dict[str, list[dict[str, Any]] | None]:
        """The output items of the tenant's stored responses of those ids, in one round trip,
        without their conversations (turn n of a chat referencing every earlier answer read
        them all whole: n squared); None for one not stored (output items whose response an
        older door deleted are not). One stored by a front door before outputs were kept
        apart is read whole."""
        if not response_ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.mget([response_output_key(tenant, r) for r in response_ids])
            for response_id in response_ids:  # an output left by an older door's delete
                pipe.exists(response_key(tenant, response_id))
            outputs, *stored = await pipe.execute()
        found: dict[str, list[dict[str, Any]] | None] = {}
        for response_id, output, kept in zip(response_ids, outputs, stored, strict=True):
            found[response_id] = None if not kept or output is None else json.loads(output)
            if kept and output is None:
                whole = await self.get(tenant, response_id)
                found[response_id] = None if whole is None else whole.response["output"]
        return found

    async def get(self, tenant: str, response_id: str) -> Kept | None:
        """The tenant's stored response of that id; None if there is none (never stored,
        deleted, past its retention, or another tenant's)."""
        value = await self._redis.get(response_key(tenant, response_id))
        if value is None:
            return None
        stored = json.loads(value)
        return Kept(stored["response"], stored["messages"])

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Forget the response, its output items and its request's result (GET
        /v1/results/{id} read the answer on for a day), together; whether there was one (the
        others go even if not: an older door's delete left its output items)."""
        async with self._redis.pipeline(transaction=True) as pipe:  # one slot: {tenant}
            pipe.delete(response_key(tenant, response_id))
            pipe.delete(
                response_output_key(tenant, response_id),
                result_key(tenant, response_id.removeprefix(RESPONSE_ID)),
            )
            deleted, _ = await pipe.execute()
        return bool(deleted)
