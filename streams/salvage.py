"""Who is waiting on a record that will not be served: the envelope fields an error reply
needs, read from whatever of the record can be read."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import BaseModel, ValidationError

from schemas.errors import LlmqError
from schemas.names import RESULTS
from schemas.request import DEFAULT_TENANT, IDENTIFIER, REPLY_TOPIC
from schemas.route import Route
from schemas.work import Completion, WorkItem
from streams.decode import decode, top_level_strings


@dataclass(frozen=True)
class Rejection:
    """A request that will not be served, with whatever of its envelope could be read."""

    error: LlmqError
    correlation_id: str | None
    tenant: str | None
    reply_to: str | None
    """Where to send the error reply: llmq.results when the record's reply_to is unusable
    (null, not a name, or a topic of llmq's or Kafka's own); None when it is no object."""
    route: Route | None = None
    """The route of a work or completion record's request, where it can be read: its error
    counts in its A/B test's arm, as its copies' do."""


class _Routed(BaseModel):
    """A work record's route alone, read where the whole record cannot be."""

    route: Route


def salvage(error: LlmqError, raw: bytes | None) -> Rejection:
    """Salvage the envelope fields an error reply needs from a llmq.requests record that
    failed validation."""
    return _envelope(error, lenient_object(raw))


def lenient_object(raw: bytes | None) -> dict[str, object] | None:
    """The record's JSON object as far as it can be read, for fields checked as they are
    taken; None for anything but an object."""
    data: object
    try:
        # Past bad bytes elsewhere in the record: the fields kept are checked by pattern.
        data = decode(raw, lenient=True)
    except ValueError:
        data = None
    except RecursionError:
        # A value nested too deep for json: the envelope's own fields are at the top.
        data = top_level_strings(raw or b"")
    return data if isinstance(data, dict) else None


def work_requester(error: LlmqError, raw: bytes | None) -> Rejection:
    """Who is waiting on a WorkItem or Completion record (both carry the request)."""
    try:
        work = WorkItem.model_validate_json(raw or b"")
    except ValidationError:
        try:
            work = Completion.model_validate_json(raw or b"").work
        except ValidationError:
            # Written by a newer llmq (a body field this one does not know), or broken: its
            # request's envelope, read as a llmq.requests record's is, and its route.
            data = lenient_object(raw)
            found = data.get("work", data) if data is not None else None
            envelope = found.get("request") if isinstance(found, dict) else None
            rejection = _envelope(error, envelope if isinstance(envelope, dict) else None)
            return replace(rejection, route=_route(found))
    request = work.request
    return Rejection(error, request.correlation_id, request.tenant, request.reply_to, work.route)


def _route(work: object) -> Route | None:
    """A work record's route, read alone, or None."""
    try:
        return _Routed.model_validate(work).route
    except ValidationError:
        return None


def _envelope(error: LlmqError, data: dict[str, object] | None) -> Rejection:
    """The sane envelope fields of a request's JSON object (None: nobody to answer)."""
    if data is None:
        return Rejection(error, None, None, None)
    # An unusable reply_to is answered on the default topic: a reply is always sent, and
    # never where llmq or Kafka would read it as their own record.
    reply_to = data.get("reply_to")
    return Rejection(
        error,
        correlation_id=_identifier(data.get("correlation_id")),
        tenant=_identifier(data.get("tenant", DEFAULT_TENANT)),  # as a request reads it
        reply_to=reply_to
        if isinstance(reply_to, str) and REPLY_TOPIC.fullmatch(reply_to)
        else RESULTS,
    )


def _identifier(value: object) -> str | None:
    """A salvaged id, only if it is a sane string (it will be echoed back and logged)."""
    if isinstance(value, str) and IDENTIFIER.fullmatch(value):
        return value
    return None
