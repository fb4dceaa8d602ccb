"""Who is waiting on a record that will not be served: the envelope fields an error reply
needs, read from whatever of the record can be read."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from schemas.errors import LlmqError
from schemas.names import RESULTS
from schemas.request import DEFAULT_TENANT, IDENTIFIER, REPLY_TOPIC
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
        request = WorkItem.model_validate_json(raw or b"").request
    except ValidationError:
        try:
            request = Completion.model_validate_json(raw or b"").work.request
        except ValidationError:
            # Written by a newer llmq (a body field this one does not know), or broken: its
            # request's envelope, read as a llmq.requests record's is.
            data = lenient_object(raw)
            work = data.get("work", data) if data is not None else None
            envelope = work.get("request") if isinstance(work, dict) else None
            return _envelope(error, envelope if isinstance(envelope, dict) else None)
    return Rejection(error, request.correlation_id, request.tenant, request.reply_to)


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
