"""The responses kept to continue from (OpenAI's `store`, true unless the body says false),
per tenant in Redis for the retention time: each one's `response` object, and its turn of
the conversation (the messages it added: its input and its answer) for `previous_response_id`.
A conversation is read as the turns of the responses it continues, then its own: stored whole
at each response, turn n rewrote every earlier one (n squared bytes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from schemas.names import response_key, response_output_key, response_turn_key, result_key

RESPONSE_ID = "resp_"
"""How a response's id begins: resp_<the correlation id of its request>."""


@dataclass(frozen=True)
class Kept:
    """A stored response: its object, as answered, and its conversation as chat messages."""

    response: dict[str, Any]
    messages: list[dict[str, Any]]
    turns: tuple[str, ...] = ()
    """The responses whose turns make `messages`, oldest first, this one's last; none for one
    an older front door stored whole (a response continuing it keeps all of it as its turn)."""
    start: int = 0
    """Where this one's turn begins in `messages` (at the previous turn's last message where
    its input's calls joined that answer)."""


class TurnGoneError(LookupError):
    """A stored response whose conversation misses the turn of a response it continues, which
    was deleted: it can be fetched, but neither continued nor its input items listed."""

    def __init__(self, response_id: str, gone: str) -> None:
        super().__init__(f"{response_id} continues {gone}, deleted")
        self.response_id = response_id
        self.gone = gone


class ResponseStore:
    """Stored responses, shared by every front door through Redis."""

    def __init__(self, client: aioredis.Redis, retention_s: int) -> None:
        self._redis = client
        self._retention_s = retention_s

    async def keep(self, tenant: str, kept: Kept) -> None:
        """Store a response under its id, for the retention time: its object with the ids of
        the responses it continues, its output items beside it (`outputs`) and its turn; the
        responses it continues are kept as long again, each whole (object, output items and
        turn: one whose turn a conversation holds can still be fetched and deleted), as long
        as their newest response. Where the turn of one of those went meanwhile (past its
        retention while this one was generated), this one keeps the whole conversation as
        its turn."""
        chain = list(kept.turns[:-1])
        renewed = await self._keep(tenant, kept.response, chain, kept.start, kept.messages)
        if not all(renewed):
            await self._keep(tenant, kept.response, [], 0, kept.messages)

    async def _keep(
        self,
        tenant: str,
        response: dict[str, Any],
        chain: list[str],
        start: int,
        messages: list[dict[str, Any]],
    ) -> list[bool]:
        """Write the response and its turn (`messages` from `start`), renewing each response
        of the `chain` whole; whether each one's turn was there to renew."""
        response_id = response["id"]
        value = json.dumps({"response": response, "chain": chain})
        turn = json.dumps({"at": start, "messages": messages[start:]})
        async with self._redis.pipeline(transaction=True) as pipe:  # one slot: {tenant}
            pipe.set(response_key(tenant, response_id), value, ex=self._retention_s)
            output = json.dumps(response["output"])
            pipe.set(response_output_key(tenant, response_id), output, ex=self._retention_s)
            pipe.set(response_turn_key(tenant, response_id), turn, ex=self._retention_s)
            for continued in chain:
                for key in (response_turn_key, response_key, response_output_key):
                    pipe.expire(key(tenant, continued), self._retention_s)
            _, _, _, *renewed = await pipe.execute()
        return [bool(found) for found in renewed[::3]]  # each one's turn, renewed first

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

    async def response(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        """The `response` object of the tenant's stored response of that id, without its
        conversation; None if there is none (never stored, deleted, past its retention, or
        another tenant's)."""
        stored = await self._stored(tenant, response_id)
        return None if stored is None else dict(stored["response"])

    async def get(self, tenant: str, response_id: str) -> Kept | None:
        """The tenant's stored response of that id with its conversation, read in two round
        trips: its object, then its turn and those it continues together; None if there is
        none (never stored, deleted, past its retention, or another tenant's). TurnGoneError if
        one it continues was deleted. One an older front door stored is read whole."""
        stored = await self._stored(tenant, response_id)
        if stored is None:
            return None
        if "chain" not in stored:
            return Kept(stored["response"], stored["messages"])
        turns = (*stored["chain"], response_id)
        found = await self._redis.mget([response_turn_key(tenant, t) for t in turns])
        if found[-1] is None:  # deleted since its object was read
            return None
        messages: list[dict[str, Any]] = []
        at = 0
        for turn_id, turn in zip(turns, found, strict=True):
            if turn is None:
                raise TurnGoneError(response_id, turn_id)
            read = json.loads(turn)
            at = read["at"]
            messages[at:] = read["messages"]
        return Kept(stored["response"], messages, turns, at)

    async def _stored(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        """The stored value of a response, read."""
        value = await self._redis.get(response_key(tenant, response_id))
        return None if value is None else dict(json.loads(value))

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Forget the response, its output items, its turn (the responses continuing it can
        be continued no more) and its request's result (GET /v1/results/{id} read the answer
        on for a day); whether there was one, its object or its turn (the output items and
        result go even if not: an older door's delete left its output items). An older door
        renewed the turns of the responses continued without their objects: such a turn,
        its object past its retention, is deleted too, and counts as the response."""
        async with self._redis.pipeline(transaction=True) as pipe:  # one slot: {tenant}
            pipe.delete(response_key(tenant, response_id), response_turn_key(tenant, response_id))
            pipe.delete(
                response_output_key(tenant, response_id),
                result_key(tenant, response_id.removeprefix(RESPONSE_ID)),
            )
            deleted, _ = await pipe.execute()
        return bool(deleted)
