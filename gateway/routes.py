"""The front door's routes: OpenAI's chat and text completions (whole, or streamed as
server-sent events) and responses (stored ones too, and their input items), the models,
stored results and their streams, health."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any, NoReturn, TypeVar

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from gateway import metrics, sse
from gateway.door import AWAY_RETRY_S, ApiError, FrontDoor, Tenant, json_body
from gateway.openai import Call, Chunks, check_model, completion_of, read_call
from gateway.response_events import ResponseEvents
from gateway.response_items import input_items, page, referenced
from gateway.response_store import TurnGoneError
from gateway.responses import ResponseCall, read_response_call, response_of
from gateway.text import TextChunks, read_text_call, text_completion_of
from llmq.futures import read_outcome
from llmq.streaming import Delta
from schemas.errors import ErrorCode, LlmqError
from schemas.redact import explain
from schemas.result import InferenceResult

log = logging.getLogger(__name__)

T = TypeVar("T")
Reader = Callable[..., Call]
"""read_call, read_text_call or read_response_call: an HTTP body as a call."""
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
LATE = LlmqError(ErrorCode.EXPIRED, "no answer before the deadline")
RESUMED = {kind.OBJECT: kind for kind in (Chunks, TextChunks)}
"""A resumed stream's chunks by their `object` (the resume route's query parameter)."""
MAX_LAST_DIGITS = 15
"""A longer Last-Event-ID counts more characters than any answer has (and past 4300 digits
Python refuses to read it as a number)."""
PREVIOUS_NOT_FOUND = "previous_response_not_found"
"""OpenAI's error code for a previous_response_id it holds no response of (a 400)."""
HEADERS_WAIT_S = 10.0
"""How long a stream waits for its first pieces before its response starts without them
(sse.First): until then an error is an HTTP error (400, 429, ...), which the SDK raises as
its own exception; after, an error event. Below sse.KEEPALIVE_S, so that no stream is silent
for longer, and far below the 60 s after which a proxy cuts a silent response: a request
may wait minutes in its lane's queue."""
SUBMIT_WAIT_S = 10.0
"""How long a call waits for Kafka to take its requests before it is answered 503: a few
milliseconds with Kafka up, seconds through a broker's failover. The client's producer is
idempotent and never gives a record up, so with Kafka away the wait lasted the outage,
holding one of LLMQ_API_OPEN_CALLS, while the SDK waited 600 s and tried again twice."""
KAFKA_AWAY = LlmqError(
    ErrorCode.INTERNAL_ERROR,
    "Kafka, which carries requests to the workers, did not take the request; try again",
    AWAY_RETRY_S,
)

router = APIRouter()


def _door(request: Request) -> FrontDoor:
    door: FrontDoor = request.app.state.door
    return door


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """Publish the request; answer with its chat.completion, or stream its chunks."""
    return await _complete(request, partial(_read, reader=read_call))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """A text completion of a raw prompt: as a chat completion, in that API's shape."""
    return await _complete(request, partial(_read, reader=read_text_call))


@router.post("/v1/responses")
async def responses(request: Request) -> Response:
    """A response to text input (OpenAI's Responses API), following the conversation of
    the response it continues: as a chat completion, in that API's shape; stored unless
    the body says `store: false`."""
    return await _complete(request, _read_response)


@router.post("/v1/responses/input_tokens")
@router.post("/v1/responses/compact")
async def unserved_response_endpoint() -> Response:
    """OpenAI's token count and compaction, which llmq does not serve: the router's 404, as
    any endpoint llmq does not offer (app._not_routed), not the 405 of the path's match
    with /v1/responses/{response_id}."""
    raise HTTPException(404)


@router.get("/v1/responses/{response_id}")
async def stored_response(
    response_id: str, request: Request, *, stream: bool = False
) -> dict[str, Any]:
    """A stored response, as it was answered (one continuing a deleted one too). `stream`
    (OpenAI's, for a background response's events) is refused: llmq answers no response in
    the background, and a stream of JSON yielded no event, silently."""
    door = _door(request)
    tenant = door.tenant(request)
    if stream:
        why = (
            "stream true is not served: llmq serves no background responses, so a stored "
            "response is whole; retrieve it without stream"
        )
        raise ApiError(LlmqError(ErrorCode.UNSUPPORTED, why, param="stream"))
    response = await door.responses.response(tenant, response_id)
    if response is None:
        raise _no_response(response_id)
    return response


@router.get("/v1/responses/{response_id}/input_items")
async def response_input_items(
    response_id: str,
    request: Request,
    tenant: Tenant,
    *,
    after: str | None = None,
    limit: int = 20,
    order: str = "desc",
) -> dict[str, Any]:
    """The conversation a stored response followed, as input items, a page at a time."""
    try:
        kept = await _door(request).responses.get(tenant, response_id)
    except TurnGoneError as exc:
        raise _gone(exc) from None
    if kept is None:
        raise _no_response(response_id)
    items = input_items(response_id, kept.messages[:-1])  # the last is its answer
    try:
        return page(items, after=after, limit=limit, order=order)
    except LlmqError as exc:
        raise ApiError(exc) from None


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    """Forget a stored response: it can be neither fetched nor continued from, nor can the
    responses continuing it (their conversation lacks its turn)."""
    door = _door(request)
    if not await door.responses.delete(door.tenant(request), response_id):
        raise _no_response(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


def _no_response(response_id: str) -> ApiError:
    return ApiError(LlmqError(ErrorCode.INVALID_REQUEST, _not_stored(response_id)), 404)


def _no_previous(response_id: str) -> ApiError:
    """A continued response that is not stored: a 400 naming previous_response_id, with
    OpenAI's code for it. That code is this route's alone (no result carries it, as
    response_events' OpenAI codes): set here, not an ErrorCode of llmq's."""
    why = _not_stored(response_id)
    refused = ApiError(LlmqError(ErrorCode.INVALID_REQUEST, why, param="previous_response_id"))
    refused.body["error"]["code"] = PREVIOUS_NOT_FOUND
    return refused


def _gone(exc: TurnGoneError, param: str | None = None) -> ApiError:
    """A stored response whose conversation lacks a deleted response's turn: a 404."""
    why = (
        f"the conversation of response {exc.response_id} cannot be read: response {exc.gone}, "
        "which it continues, was deleted; start a new conversation (without "
        "previous_response_id) or continue one that does not include it"
    )
    return ApiError(LlmqError(ErrorCode.INVALID_REQUEST, why, param=param), 404)


def _not_stored(response_id: str) -> str:
    return (
        f"no stored response {response_id} for this tenant (answered with store false, "
        "deleted, past its retention, or never made)"
    )


async def _complete(
    request: Request, read: Callable[[FrontDoor, Request], Awaitable[Call]]
) -> Response:
    """Read the call, publish its requests, and answer: whole, or streamed. Its latency is
    timed from before its body is read, streamed or not; a stream's events observe it when
    they end, every other answer (an error, a client gone before the first piece) here."""
    door = _door(request)
    started, status, stream = _now(), 500, "false"
    response: Response | None = None
    try:
        call = await read(door, request)
        stream = str(call.request.body.stream).lower()
        door.check_choices(call)
        await door.check_served(call.request.model, calls=call.request.body.chooses_calls)
        await _submit(door, call)
        metrics.WAITING.inc()
        try:
            if call.request.body.stream:
                response = await _streamed(door, request, call, started)
            else:
                response = await _whole(door, request, call)
        finally:
            metrics.WAITING.dec()
        status = response.status_code
        return response
    except ApiError as exc:
        status = exc.status
        raise
    finally:
        metrics.REQUESTS.labels(str(status), stream).inc()
        if not isinstance(response, sse.EventStream):
            metrics.LATENCY.labels(stream).observe(_now() - started)


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """The catalog's models, `auto` (llmq picks by difficulty) and experiments' own names."""
    door = _door(request)
    door.tenant(request)  # a key, when the front door has keys
    return {"object": "list", "data": [_model(n) for n in door.catalog.requestable]}


@router.get("/v1/models/{model:path}")  # a name may hold slashes (org/model)
async def model(model: str, request: Request) -> dict[str, Any]:
    """One of the models /v1/models lists; 404 for any other."""
    door = _door(request)
    door.tenant(request)
    try:
        check_model(model, door.catalog)
    except LlmqError as exc:
        raise ApiError(exc) from None
    return _model(model)


def _model(name: str) -> dict[str, Any]:
    """OpenAI's model object."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmq"}


@router.get("/v1/results/{correlation_id}")
async def stored_result(correlation_id: str, request: Request) -> Response:
    """The tenant's stored result of a request (llmq's InferenceResult)."""
    door = _door(request)
    found = await door.client.stored(correlation_id, tenant=door.tenant(request))
    if found is None:
        why = f"no result {correlation_id} for this tenant (yet)"
        raise ApiError(LlmqError(ErrorCode.INVALID_REQUEST, why), 404)
    return Response(found.model_dump_json(), media_type="application/json")


@router.get("/v1/results/{correlation_id}/stream")
async def resume(correlation_id: str, request: Request) -> Response:
    """The rest of a streamed answer after the characters a client has (their count as
    Last-Event-ID): chat chunks, or text completion chunks with `?object=text_completion`."""
    door = _door(request)
    tenant = door.tenant(request)
    kind = RESUMED.get(request.query_params.get("object", Chunks.OBJECT))
    if kind is None:
        why = f"object must be one of {', '.join(RESUMED)}, the chunks of the stream resumed"
        raise ApiError(LlmqError(ErrorCode.INVALID_REQUEST, why))
    last = request.headers.get("last-event-id", "0")
    if not (last.isascii() and last.isdigit() and len(last) <= MAX_LAST_DIGITS):
        why = f"Last-Event-ID {last[:32]!r} is not a count of characters"
        raise ApiError(LlmqError(ErrorCode.INVALID_REQUEST, why))
    await door.resumed(tenant, correlation_id)
    try:
        return await _resume(
            door, request, kind=kind, correlation_id=correlation_id, tenant=tenant, last=int(last)
        )
    except BaseException:
        door.unread(tenant, correlation_id)
        raise


async def _resume(
    door: FrontDoor,
    request: Request,
    *,
    kind: type[Chunks],
    correlation_id: str,
    tenant: str,
    last: int,
) -> Response:
    """The resumed stream's response, read once it ends (`unread`); its first piece waited
    for as a call's (_came). An answer already stored is read through the door's pieces
    too: where they show which generation the client had, one generated again after it
    that differs is an error, not spliced on."""
    ended = await door.client.stored(correlation_id, tenant=tenant) is not None
    wait_s = door.settings.request_timeout_s
    pieces = door.client.follow(correlation_id, tenant=tenant, offset=last, wait_s=wait_s)
    given_up = partial(_resume_given_up, door, tenant, correlation_id, ended)
    # Its client may leave again: the request is cancelled after the grace time, as at first.
    leaves = None if ended else partial(door.cancel, tenant, correlation_id)
    first = asyncio.ensure_future(anext(pieces, None))
    try:
        came = await _came(request, first)
    except asyncio.CancelledError:  # the drain bound cut it off
        given_up(None)
        raise
    except LlmqError as exc:
        raise ApiError(exc) from None
    except TimeoutError as exc:
        given_up(exc)
        raise ApiError(LATE) from None
    if came is None:
        if leaves is not None:
            leaves()
        door.unread(tenant, correlation_id)
        return Response(status_code=499)
    usage = request.query_params.get("include_usage", "false").lower() == "true"
    chunks = kind(correlation_id, int(time.time()), door.catalog.default, usage)
    events = sse.events(chunks, first.result() if came else first, pieces, leaves, given_up)
    read = _read_until_done(events, partial(door.unread, tenant, correlation_id))
    return sse.EventStream(read, {**SSE_HEADERS, **_ids_of(correlation_id)})


def _resume_given_up(
    door: FrontDoor, tenant: str, correlation_id: str, ended: bool, exc: Exception | None
) -> None:
    """The door gave up on a resumed stream (its wait past, its drain bound, its own failure
    to read it; `exc` None: the drain): its request is cancelled, as _given_up does a call's,
    unless it had ended already. Not for the request's own failure (an LlmqError)."""
    if not ended and not isinstance(exc, LlmqError):
        door.cancel(tenant, correlation_id, grace=False, left=False)


async def _read_until_done(
    events: AsyncIterator[str], done: Callable[[], None]
) -> AsyncGenerator[str]:
    """The events, then `done`, however the stream ends."""
    try:
        async for event in events:
            yield event
    finally:
        done()


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    """200 once the front door reads replies and takes requests."""
    ready = _door(request).ready
    return JSONResponse({"ready": ready}, 200 if ready else 503)


async def _read(door: FrontDoor, request: Request, reader: Reader) -> Call:
    """The call the request's body asks for, by `reader`."""
    tenant = door.tenant(request)
    return _call(door, request, reader, tenant, await json_body(request))


def _call(
    door: FrontDoor, request: Request, reader: Reader, tenant: str, data: object, **extra: Any
) -> Call:
    """The call a body asks for, by `reader` with the `extra` arguments it takes."""
    try:
        return reader(
            data,
            tenant=tenant,
            lane=request.headers.get("x-llmq-lane"),
            default_lane=door.settings.api_default_lane.value,
            catalog=door.catalog,
            timeout_s=door.settings.request_timeout_s,
            **extra,
        )
    except LlmqError as exc:
        raise ApiError(exc) from None


async def _read_response(door: FrontDoor, request: Request) -> Call:
    """A Responses body's call, after the conversation of the stored response it continues
    (previous_response_id; its instructions are not carried over, as OpenAI's are not), the
    stored items it references in their place."""
    tenant = door.tenant(request)
    try:
        data = await referenced(door.responses, tenant, await json_body(request))
    except LlmqError as exc:
        raise ApiError(exc) from None
    previous = data.get("previous_response_id") if isinstance(data, dict) else None
    if previous is None:
        return _call(door, request, read_response_call, tenant, data)
    if not isinstance(previous, str):
        why = "previous_response_id must be a string, the id of a stored response"
        raise ApiError(LlmqError(ErrorCode.INVALID_REQUEST, why, param="previous_response_id"))
    try:
        kept = await door.responses.get(tenant, previous)
    except TurnGoneError as exc:
        raise _gone(exc, "previous_response_id") from None
    if kept is None:
        raise _no_previous(previous)
    history, chain = kept.messages, kept.turns
    return _call(door, request, read_response_call, tenant, data, history=history, chain=chain)


async def _keep(door: FrontDoor, call: ResponseCall, response: dict[str, Any]) -> None:
    """Store the response, unless its call says `store: false`. Redis out of reach does not
    cost the client its answer: it is logged, and the answer says `store: false`."""
    if not call.store:
        return
    try:
        await door.responses.keep(call.request.tenant, call.kept(response))
    except RedisError as exc:
        log.warning("response %s is not stored: %s", response["id"], explain(exc))
        response["store"] = False


async def _submit(door: FrontDoor, call: Call) -> None:
    """Publish each choice's request, for SUBMIT_WAIT_S at most; when one cannot be, the
    others are cancelled. Kafka failing or past the wait is a 503 (_kafka_away). Past the
    wait, or cut off by the drain bound, every choice is cancelled: a record Kafka has not
    taken yet still goes once it is back."""
    try:
        async with asyncio.timeout(SUBMIT_WAIT_S):
            sent = await asyncio.gather(
                *(door.client.submit_request(r) for r in call.requests), return_exceptions=True
            )
    except asyncio.CancelledError:
        _given_up(door, call)
        raise
    except TimeoutError:
        _given_up(door, call)
        raise _kafka_away(door, call, f"did not take its requests in {SUBMIT_WAIT_S:g} s") from None
    failed = [e for e in sent if isinstance(e, BaseException)]
    if failed:
        for wanted, outcome in zip(call.requests, sent, strict=True):
            if not isinstance(outcome, BaseException):
                door.cancel(wanted.tenant, wanted.correlation_id, grace=False, left=False)
        if isinstance(failed[0], LlmqError):  # too large a record: refused before publishing
            raise ApiError(failed[0]) from None
        if isinstance(failed[0], KafkaError):
            raise _kafka_away(door, call, f"failed a request: {explain(failed[0])}") from None
        raise failed[0]


def _kafka_away(door: FrontDoor, call: Call, why: str) -> ApiError:
    """Kafka out of reach (or failing): a 503 with Retry-After and the call's ids. The warning
    (one per interval: llmq.throttle) names Kafka's address, which the answer does not."""
    log.warning("a call is refused: Kafka at %s %s", door.settings.kafka_bootstrap, why)
    return ApiError(KAFKA_AWAY, 503, headers=_ids(call))


async def _whole(door: FrontDoor, request: Request, call: Call) -> Response:
    """Wait for the results (one per choice); a client that leaves first cancels them. The
    first error among them is the answer, and cancels the others."""
    wait_s = door.settings.reply_wait_s
    try:
        results = await _unless_gone(request, _results(door, call, wait_s))
    except asyncio.CancelledError:  # the drain bound cut it off
        _given_up(door, call)
        raise
    except TimeoutError:
        _given_up(door, call)
        raise ApiError(LATE, headers=_ids(call)) from None
    except LlmqError as exc:
        _failed(door, call)
        raise ApiError(exc, headers=_ids(call)) from None
    if results is None:
        _abandon(door, call)
        return Response(status_code=499)
    return JSONResponse(await _answer(door, call, results), headers=_ids(call))


async def _answer(door: FrontDoor, call: Call, results: list[InferenceResult]) -> dict[str, Any]:
    """The whole answer in the shape of the API the call came by (a response, stored)."""
    if isinstance(call, ResponseCall):
        answer = response_of(call.echo, results)
        await _keep(door, call, answer)
        return answer
    return text_completion_of(results) if call.text else completion_of(results)


def _ids(call: Call) -> dict[str, str]:
    """The call's correlation id as headers of its answer or error (with n choices, the
    first's): _ids_of."""
    return _ids_of(call.request.correlation_id)


def _ids_of(correlation_id: str) -> dict[str, str]:
    """A request's correlation id as headers of its answer, error or resumed stream: llmq's,
    and OpenAI's X-Request-Id, which the SDK keeps (`answer._request_id`, an error's
    `request_id`). GET /v1/results/{id} finds its result by it."""
    return {"X-Llmq-Correlation-Id": correlation_id, "X-Request-Id": correlation_id}


async def _results(door: FrontDoor, call: Call, wait_s: float) -> list[InferenceResult]:
    """Each choice's result in order; LlmqError at the first error result."""
    waits = [
        asyncio.ensure_future(door.client.result(r.correlation_id, wait_s, tenant=r.tenant))
        for r in call.requests
    ]
    try:
        for done in asyncio.as_completed(waits):
            error = (await done).error
            if error is not None:
                raise LlmqError(error.code, error.message, error.retry_after_s)
        return [w.result() for w in waits]
    finally:
        for waiting in waits:
            waiting.cancel()


async def _streamed(door: FrontDoor, request: Request, call: Call, started: float) -> Response:
    """Server-sent events of the call's choices. An error before their first pieces is an
    HTTP error (429, 400, ...) while they come within HEADERS_WAIT_S; past it the response
    starts without them (sse.First), and an error is an error event, as after them.
    `started`: when the request came (_now), which its first pieces and its end
    are timed from."""
    wait_s = door.settings.reply_wait_s
    streams = [
        door.client.follow(r.correlation_id, tenant=r.tenant, wait_s=wait_s) for r in call.requests
    ]
    firsts = [asyncio.ensure_future(anext(stream)) for stream in streams]
    pieces = asyncio.gather(*firsts)
    pieces.add_done_callback(partial(_first_came, started))
    try:
        came = await _came(request, pieces)
    except asyncio.CancelledError:  # the drain bound cut it off
        _given_up(door, call)
        raise
    except (LlmqError, TimeoutError) as exc:
        for waiting in firsts:
            waiting.cancel()
        _refused(door, call, exc)
    if came is None:  # before the response started: no id to resume by, no grace
        _abandon(door, call, grace=False)
        return Response(status_code=499)
    if not came:  # the call waits for its first pieces in its stream
        metrics.WAITING.inc()
        pieces.add_done_callback(lambda _: metrics.WAITING.dec())
    events = _events(door, call, pieces.result() if came else firsts, streams)
    return sse.EventStream(_timed(events, started), {**SSE_HEADERS, **_ids(call)})


def _refused(door: FrontDoor, call: Call, exc: LlmqError | TimeoutError) -> NoReturn:
    """A stream's error before its response started: the HTTP error of its failure (the
    call's other choices cancelled), or of its wait past (every choice cancelled)."""
    if isinstance(exc, LlmqError):
        _failed(door, call)
        raise ApiError(exc, headers=_ids(call)) from None
    _given_up(door, call)
    raise ApiError(LATE, headers=_ids(call)) from None


def _events(
    door: FrontDoor,
    call: Call,
    firsts: Sequence[sse.First],
    streams: list[AsyncIterator[Delta]],
) -> AsyncGenerator[str]:
    """The events of the call's choices, from their first pieces (or what awaits them)."""
    resumable = call.n == 1 and not isinstance(call, ResponseCall)
    resumable = resumable and not call.request.body.calls_tools  # the resume route sends text
    ended = partial(_ended, door, call)
    chunks = door.chunks(call)
    if isinstance(call, ResponseCall):  # the resume route sends chunks, not these: no grace
        shape = ResponseEvents(call.echo, chunks.created, chunks.model, chunks.body)
        stop = partial(_abandon, door, call, grace=False)
        keep = partial(_keep, door, call)
        return sse.response_events(shape, firsts[0], streams[0], stop, keep=keep, on_error=ended)
    if call.n == 1:  # one of tool calls does not resume: no grace
        stop = partial(_abandon, door, call, grace=resumable)
        return sse.events(chunks, firsts[0], streams[0], stop, ended)
    stop = partial(_abandon, door, call, grace=False)  # such a stream does not resume
    return sse.choices(chunks, firsts, streams, stop, ended)


async def _came(request: Request, pieces: asyncio.Future[Any]) -> bool | None:
    """Whether a stream's first pieces came within HEADERS_WAIT_S (their error raised, where
    they failed); None where its client left first. Cut off (the client gone, the drain
    bound), their wait is cancelled."""
    try:
        waited = await _unless_gone(request, asyncio.wait({pieces}, timeout=HEADERS_WAIT_S))
    except asyncio.CancelledError:
        pieces.cancel()
        raise
    if waited is None:
        pieces.cancel()
        return None
    if not pieces.done():
        return False
    pieces.result()  # its error, if any
    return True


def _now() -> float:
    """The loop's clock, which its timers read (HEADERS_WAIT_S, sse.KEEPALIVE_S)."""
    return asyncio.get_running_loop().time()


def _first_came(started: float, pieces: asyncio.Future[Any]) -> None:
    """A stream's first pieces came (or failed, or were given up on): the time to them is
    observed from `started`, where they came."""
    if not pieces.cancelled() and pieces.exception() is None:
        metrics.FIRST_PIECE.observe(_now() - started)


def _abandon(door: FrontDoor, call: Call, *, grace: bool = True, left: bool = True) -> None:
    """Nobody waits for the call's choices: cancel each one's request, after the grace to
    resume a stream (`grace`); `left`: because its client went away."""
    for wanted in call.requests:
        door.cancel(wanted.tenant, wanted.correlation_id, grace=grace, left=left)


def _failed(door: FrontDoor, call: Call) -> None:
    """One choice failed, and so the call: its other choices are cancelled at once (a call
    of one choice has none), not counted as left by their client."""
    if call.n > 1:
        _abandon(door, call, grace=False, left=False)


def _ended(door: FrontDoor, call: Call, exc: Exception) -> None:
    """An error ended a stream after its first pieces: a request's failure cancels the other
    choices of its call (_failed); the door giving up on it (its wait past, or its own
    failure to read it) cancels every choice (_given_up)."""
    if isinstance(exc, LlmqError):
        _failed(door, call)
    else:
        _given_up(door, call)


def _given_up(door: FrontDoor, call: Call) -> None:
    """The door gave up on the call (its wait past: its client is told the request expired;
    or its drain bound, LLMQ_DRAIN_TIMEOUT_S, cut the call off): every choice is cancelled,
    lest a worker generate on, its answer stored and billed for nobody. Not counted as a
    client that left."""
    _abandon(door, call, grace=False, left=False)


async def _timed(events: AsyncIterator[str], started: float) -> AsyncGenerator[str]:
    """The events; their end observes the stream's latency, a client's leaving too."""
    try:
        async for event in events:
            yield event
    finally:
        metrics.LATENCY.labels("true").observe(_now() - started)


async def _unless_gone(request: Request, work: Awaitable[T]) -> T | None:
    """What `work` gives, or None when the client went away first (`work` is cancelled)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_until_gone(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the caller's own (a drain cut short): `work` goes too
        task.cancel()
        task.add_done_callback(read_outcome)
        raise
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    # Its outcome is nobody's now; a gather's is its CancelledError, which asyncio would log
    # at ERROR, as never retrieved, for each client that leaves before its first piece.
    task.add_done_callback(read_outcome)
    return None


async def _until_gone(request: Request) -> None:
    """Returns when the client has gone away (its body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
