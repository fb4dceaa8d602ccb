"""The responses kept to continue from (OpenAI's `store`, true unless the body says false):
each one's `response` object, and its conversation (the input before it, its own input and
its answer) for `previous_response_id`, per tenant in Redis for the retention time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from schemas.names import response_key, result_key

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
        """Store a response under its id, for the retention time."""
        value = json.dumps({"response": kept.response, "messages": kept.messages})
        key = response_key(tenant, kept.response["id"])
        await self._redis.set(key, value, ex=self._retention_s)

    async def get(self, tenant: str, response_id: str) -> Kept | None:
        """The tenant's stored response of that id; None if there is none (never stored,
        deleted, past its retention, or another tenant's)."""
        value = await self._redis.get(response_key(tenant, response_id))
        if value is None:
            return None
        stored = json.loads(value)
        return Kept(stored["response"], stored["messages"])

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Forget the response, and its request's result (GET /v1/results/{id} read the
        answer on for a day); whether there was one."""
        if not await self._redis.delete(response_key(tenant, response_id)):
            return False
        await self._redis.delete(result_key(tenant, response_id.removeprefix(RESPONSE_ID)))
        return True
