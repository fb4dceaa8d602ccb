"""What every route of the front door shares: the client library, the catalog, the keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncGenerator, Coroutine, Mapping
from typing import Annotated, Any

from fastapi import Depends, Request
from redis.exceptions import RedisError

from gateway import metrics
from gateway.batch.collector import Collector
from gateway.batch.runner import Pace, Runner
from gateway.batch.store import BatchStore
from gateway.openai import Call, Chunks, error_body, retry_after
from gateway.response_store import ResponseStore
from gateway.settings import GatewaySettings
from gateway.text import TextChunks
from llmq.aio import CLOSE_FLUSH_S, AsyncClient
from llmq.deadline import exit_after
from llmq.redis_client import bounded_client
from llmq.serving import Serving
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.names import readers_key
from schemas.redact import explain
from schemas.request import DEFAULT_TENANT
from schemas.tenants import NANO, TenantPolicy, usd, worst_cost

log = logging.getLogger(__name__)

CLOSE_CANCELS_S = 10.0
"""How long a stopping front door waits for the cancels it still owes (Kafka away: the
requests' deadlines end them)."""
CLOSE_GRACE_S = 5.0
"""The longest a stopping front door still gives a stream cut off to be resumed at another
door (what is left of LLMQ_RESUME_GRACE_S, if less): the rest of CLOSE_CANCELS_S is for
sending the cancels."""
CANCEL_TRIES = 3
"""How many times a cancel is sent before it is given up (cancels are idempotent)."""
CANCEL_BACKOFF_S = 0.5
"""The wait before a cancel Kafka did not take is sent again, doubled after each try."""
UNWIND_S = 0.1
"""How long a stopping front door lets the calls its drain bound cut off unwind before it
sends the cancels they owe: a stream's events run in a task of their own, which learns of
the cut a loop turn after its call."""
CLOSE_BOUND_S = UNWIND_S + CLOSE_CANCELS_S + CLOSE_FLUSH_S + 5.0
"""The longest a stopping front door's close may take before the process exits, saying why
(llmq.deadline): its cancels, the Kafka producer's flush (llmq.aio), and 5 s for the rest
(the batch collector leaving its group, Redis), whatever waits on a broker away. The drain
before it is uvicorn's own bound (LLMQ_DRAIN_TIMEOUT_S, 30 s); with preStop's 5 s the three
stay under deploy/k8s's 60 s grace period."""
STUCK = (
    "its clients did not close (is Kafka away?); exiting: what it had not sent to Kafka yet is lost"
)
AWAY_RETRY_S = 5.0
"""The Retry-After of a 503 for Kafka or Redis out of reach: the openai SDK waits it (up to
60 s) before its next try, rather than its own 0.5 to 8 s; a failover takes seconds."""


class ApiError(Exception):
    """An HTTP error in OpenAI's shape; one that retrying cannot mend tells the SDK not to
    (`x-should-retry: false`): it retries a 408 (expired) and every 5xx otherwise."""

    def __init__(
        self, error: LlmqError, status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error.message)
        self.status, self.body = error_body(error.code, error.message, status, error.param)
        self.headers = {**retry_after(error), **(headers or {})}
        # The SDK retries 408, 409, 429 and 5xx by default: not what waiting cannot mend (a
        # budget's refusal that names a retry_after is mended by waiting: the SDK waits it).
        if not error.retriable and error.retry_after_s is None:
            self.headers["x-should-retry"] = "false"


MAX_JSON_BYTES = 8 << 20
"""The largest JSON body read: a request at every bound (400,000 prompt characters and a
32,768-character schema, each character a 12-byte JSON escape, 1,024 logit biases, 4 stop
sequences) takes under 6 MB."""


async def body_chunks(
    request: Request, most: int, too_large: ApiError
) -> AsyncGenerator[bytes, None]:
    """The request's body as it comes; `too_large` is raised when its length is declared
    past `most` bytes (nothing read) or the body grows past them: never held whole first."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > most:
        raise too_large
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > most:
            raise too_large
        yield chunk


async def json_body(request: Request) -> Any:
    """The request's JSON body: a 413 past MAX_JSON_BYTES, a 400 when it is not JSON."""
    why = f"the body is larger than {MAX_JSON_BYTES} bytes"
    too_large = ApiError(LlmqError(ErrorCode.INVALID_REQUEST, why), 413)
    body = b"".join([chunk async for chunk in body_chunks(request, MAX_JSON_BYTES, too_large)])
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ApiError(LlmqError(ErrorCode.INVALID_JSON, f"the body is not JSON: {exc}")) from None
    except RecursionError:  # a few kB nested a thousand deep: no ValueError, a 500 before
        why = "the body's JSON is nested too deeply"
        raise ApiError(LlmqError(ErrorCode.INVALID_JSON, why)) from None


DECREMENT = """
local left = redis.call('DECR', KEYS[1])
if left <= 0 then redis.call('DEL', KEYS[1]) end
return left
"""
"""One reader fewer of a resumed stream; none left (or the count lapsed before: it would be
-1, kept for good) takes the key away."""


def bearer_key(headers: Mapping[str, str]) -> str | None:
    """The API key of an `Authorization: Bearer KEY` header; None without one."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return (key.strip() or None) if scheme.lower() == "bearer" else None


class FrontDoor:
    """One process's client of llmq (one reply consumer for every waiting request), and
    what it knows: the catalog, the keys, the settings."""

    def __init__(
        self,
        settings: GatewaySettings,
        catalog: Catalog,
        policy: TenantPolicy,
        *,
        exits_when_stuck: bool = False,
    ) -> None:
        self.settings = settings
        self._exits_when_stuck = exits_when_stuck
        """A close past CLOSE_BOUND_S ends the process (`python -m gateway`'s door alone: an
        app served in another process, a test's, is not the door's to end)."""
        self.catalog = catalog
        self.policy = policy
        self.client = AsyncClient(
            settings,
            client_id=settings.instance_id,
            stream_retention_s=settings.stream_retention_s,
        )
        self.serving = Serving(settings, settings.instance_id)
        self._redis = bounded_client(settings.redis_url, socket_timeout=5)
        self._decrement = self._redis.register_script(DECREMENT)
        self.batches = BatchStore(self._redis, settings.batch_retention_s)
        self.responses = ResponseStore(self._redis, settings.response_retention_s)
        pace = Pace(settings.batch_in_flight, settings.batch_cancel_grace_s)
        self._runner = Runner(self.batches, self.client, catalog, settings.instance_id, pace)
        self._collector = Collector(settings, self.batches, settings.instance_id)
        self.ready = False
        self._doomed: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        """Stopping: a call cut off now is not counted as its client gone, and is cancelled in
        close's bound (a stream once its grace is over, CLOSE_GRACE_S at most)."""
        self._batch_tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.client.start()
        await self.serving.start()
        await self._collector.start()
        self._batch_tasks = [
            asyncio.create_task(self._runner.run(), name="llmq-batch-runner"),
            asyncio.create_task(self._collector.run(), name="llmq-batch-collector"),
        ]
        self.ready = True
        metrics.READY.set(1)

    async def close(self) -> None:
        """Stop: once the calls the drain cut off have unwound (UNWIND_S), the cancels still
        owed (those calls; a stream once what is left of its grace is over, unless resumed at
        another door by then) are sent together, for CLOSE_CANCELS_S at most; then the batch
        tasks stop and every client closes, each step whatever the one before met. Not done
        in CLOSE_BOUND_S, the process exits, saying why, where the door `exits_when_stuck`."""
        deadline = exit_after(CLOSE_BOUND_S, STUCK) if self._exits_when_stuck else None
        try:
            await self._close()
        finally:
            if deadline is not None:
                deadline.cancel()

    async def _close(self) -> None:
        self.ready, self._closing = False, True
        metrics.READY.set(0)
        await asyncio.sleep(UNWIND_S)
        now = asyncio.get_running_loop().time()
        for key in list(self._doomed):  # its grace runs on, for a resume at another door
            handle = self._doomed.pop(key)
            handle.cancel()
            self._in_background(self._cancel_after(key, handle.when() - now), key)
        await self._settle_background()
        for task in self._batch_tasks:  # a batch's progress is in Redis: the next door resumes
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for close in (self._collector.close, self.serving.close, self.client.close):
            try:
                await close()
            except Exception as exc:  # the next one closes all the same
                log.warning("stopping the front door: %s", explain(exc))
        await self._redis.aclose()

    async def _settle_background(self) -> None:
        """Wait for the background work (cancels) for CLOSE_CANCELS_S at most; say what
        failed or was not done."""
        if not self._background:
            return
        done, pending = await asyncio.wait(set(self._background), timeout=CLOSE_CANCELS_S)
        for task in pending:
            task.cancel()
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if failed or pending:
            first = failed[0].exception() if failed else None
            log.warning(
                "stopping: %d cancel(s) failed, %d not sent in %.0f s%s",
                len(failed),
                len(pending),
                CLOSE_CANCELS_S,
                f" ({explain(first)})" if first is not None else "",
            )

    def tenant(self, request: Request) -> str:
        """The tenant of the request's bearer key (never of its body); `default` when the
        front door has no keys (it then listens on loopback only)."""
        if not self.policy.api_keys:
            return DEFAULT_TENANT
        key = bearer_key(request.headers)
        if key is None:
            why = "no API key: send Authorization: Bearer KEY"
            raise ApiError(LlmqError(ErrorCode.INVALID_REQUEST, why), 401)
        tenant = self.policy.tenant_of(key)
        if tenant is None:
            raise ApiError(LlmqError(ErrorCode.INVALID_REQUEST, "invalid API key"), 401)
        return tenant

    def check_choices(self, call: Call) -> None:
        """A 400 (not retriable, naming `n`) for choices the tenant's rate limits or budget
        can never admit together: each is a request charged to its buckets (all at once, as
        one call's: streams.ratelimit), and holding its worst case of the budget, at once, so
        past them every try would be refused (a budget's in part, told to wait 5 s, which the
        SDK retries, after the rest went to the engines), here before anything is published.
        One choice over tokens_per_minute or the budget alone is admission's refusal
        (invalid_request naming max_tokens, budget_exceeded)."""
        tenant, each = call.request.tenant, call.request.body.estimated_tokens()
        limits = self.policy.limits(tenant)
        why = limits.choices_never_fit(tenant, call.n, each) or self._over_budget(call)
        if why is not None:
            raise ApiError(LlmqError(ErrorCode.INVALID_REQUEST, why, param="n"))

    def _over_budget(self, call: Call) -> str | None:
        """Why the tenant's budget can never hold the call's choices together, idle: each
        holds at least its worst case on the cheapest model that may serve it (its route, and
        so its hold, is the stream processor's: streams.budget.worst_case)."""
        request, n = call.request, call.n
        limits = self.policy.limits(request.tenant)
        budget = limits.budget_usd
        if budget is None or n == 1:
            return None
        body = request.body
        starting = self.catalog.starting(request.requested_model, calls=body.chooses_calls)
        models = {m.name for m in starting} | {f for m in starting for f in m.fallback}
        least = min((worst_cost(body, [model], self.catalog) for model in models), default=0.0)
        each = math.ceil(least * NANO)  # whole nano-dollars, summed as admission sums holds
        if not each / NANO <= budget < n * each / NANO:
            return None
        most = max(m for m in range(1, n) if m * each / NANO <= budget)
        return (
            f"n is {n}: each choice is a request that holds at least {usd(each / NANO)} (its "
            f"prompt and max_tokens at the model's prices) of tenant {request.tenant}'s "
            f"{usd(budget)} budget a {limits.budget_period} until it is answered, so {n} never "
            f"fit together; ask for at most {most} choices or lower max_tokens"
        )

    async def check_served(self, model: str | None, *, calls: bool = False) -> None:
        """503 when no worker serves the model nor ever did (for `auto`: no model at all, or
        with `calls`, under tool_choice "auto", no model that reads calls)."""
        if not await self.serving.serves(self.catalog.serving(model, calls=calls)):
            why = f"no worker serves {model}: start one (llmq local up) and try again"
            raise ApiError(LlmqError(ErrorCode.ENGINE_UNAVAILABLE, why))

    def cancel(
        self, tenant: str, correlation_id: str, *, grace: bool = True, left: bool = True
    ) -> None:
        """Nobody waits for the request any more: its client went away (`left`, counted in
        llmq_gateway_cancelled_total), or another choice of its call failed. Unless a client
        resumes its stream within the grace time (`grace`), here or at another front door,
        tell the workers (the generation is aborted)."""
        key = (tenant, correlation_id)
        left = left and not self._closing  # a stopping door's drain cut the call
        if not grace:
            self._cancel_now(key, left=left)
            return
        if self._closing:  # its grace, for a resume at another door, within close's bound
            grace_s = self.settings.resume_grace_s
            self._in_background(self._cancel_after(key, grace_s, left=left), key)
            return
        loop = asyncio.get_running_loop()
        self._doomed[key] = loop.call_later(self.settings.resume_grace_s, self._cancel_unread, key)

    async def resumed(self, tenant: str, correlation_id: str) -> None:
        """Its client came back (a resumed stream): no cancellation, here nor at the door it
        left (`unread` once the stream ends). Redis away: only here."""
        handle = self._doomed.pop((tenant, correlation_id), None)
        if handle is not None:
            handle.cancel()
        key = readers_key(tenant, correlation_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, math.ceil(self.settings.request_timeout_s))
                await pipe.execute()
        except RedisError as exc:
            log.warning("a resumed stream is not known to other front doors: %s", explain(exc))

    def unread(self, tenant: str, correlation_id: str) -> None:
        """A resumed stream ended (or its client left again). In the background: the stream's
        own task is being cancelled as its client leaves, and so would be an await there."""
        key = (tenant, correlation_id)
        self._in_background(self._unread(readers_key(*key)), key, "count of readers")

    async def _unread(self, key: str) -> None:
        with contextlib.suppress(RedisError):  # its count lapses with the request's time
            await self._decrement(keys=[key])

    def _cancel_unread(self, key: tuple[str, str]) -> None:
        self._doomed.pop(key, None)
        self._in_background(self._cancel_if_unread(key), key)

    async def _cancel_after(
        self, key: tuple[str, str], grace_s: float, *, left: bool = True
    ) -> None:
        """A stopping door's cancel of a stream cut off: once `grace_s` (CLOSE_GRACE_S at
        most) is over, unless its client resumed it at another door by then."""
        await asyncio.sleep(min(grace_s, CLOSE_GRACE_S))
        await self._cancel_if_unread(key, left=left)

    async def _cancel_if_unread(self, key: tuple[str, str], *, left: bool = True) -> None:
        """Cancel the request unless a resumed stream of it is read at another door (Redis
        away: cancel, as a door alone would)."""
        try:
            readers = await self._redis.get(readers_key(*key))
        except RedisError:
            readers = None
        if readers is not None and int(readers) > 0:
            log.info("%s/%s is read again at another front door: not cancelled", *key)
            return
        await self._cancel(key, left=left)

    def _cancel_now(self, key: tuple[str, str], *, left: bool) -> None:
        self._doomed.pop(key, None)
        self._in_background(self._cancel(key, left=left), key)

    async def _cancel(self, key: tuple[str, str], *, left: bool = True) -> None:
        """Send the cancel, again after a backoff where Kafka did not take it (slow or away),
        CANCEL_TRIES times at most; the last failure is raised."""
        if left:
            metrics.CANCELLED.inc()
        for tried in range(1, CANCEL_TRIES + 1):
            try:
                await self.client.cancel(key[1], tenant=key[0])
                return
            except Exception as exc:
                if tried == CANCEL_TRIES:
                    raise
                wait_s = CANCEL_BACKOFF_S * 2 ** (tried - 1)
                why = explain(exc)
                log.warning(
                    "the cancel of %s/%s was not sent (%s): again in %g s", *key, why, wait_s
                )
                await asyncio.sleep(wait_s)

    def _in_background(
        self, work: Coroutine[Any, Any, None], key: tuple[str, str], what: str = "cancel"
    ) -> None:
        """Run `work`, `what` of request `key`, in a task of its own (see _settled)."""
        task = asyncio.create_task(work, name=f"the {what} of {key[0]}/{key[1]}")
        self._background.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        """A background task's end: its failure (a cancel not sent) is one warning, not left
        for asyncio to log as never retrieved, with a traceback."""
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("%s failed: %s", task.get_name(), explain(exc))

    def chunks(self, call: Call) -> Chunks:
        """The chunks of the request's streamed answer, in the name of the model asked for
        until its first piece names the one serving (gateway.sse)."""
        request = call.request
        kind = TextChunks if call.text else Chunks
        return kind(
            request.correlation_id,
            int(request.created_at),
            request.model or self.catalog.default,
            call.include_usage,
            None if call.text else request.body,
        )


def caller(request: Request) -> str:
    """A route's first step, as its dependency: the caller's key, checked before its query
    or body is read (FastAPI validates a typed parameter before the handler runs)."""
    door: FrontDoor = request.app.state.door
    return door.tenant(request)


Tenant = Annotated[str, Depends(caller)]
"""A route's tenant, by its caller's key (see caller)."""
