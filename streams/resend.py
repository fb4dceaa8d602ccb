"""Sends tried again while Kafka's failure may pass: an agent that raised would let faust
commit past its record, unanswered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError, KafkaTimeoutError

log = logging.getLogger(__name__)

ACK_TIMEOUT_S = 30.0
"""How long a send waits for Kafka's acknowledgement (streams.app's FaustSend and faust's
producer): past it, the send raises TimeoutError."""
UNACKNOWLEDGED = f"Kafka did not acknowledge a send within {ACK_TIMEOUT_S:g} s"
"""A send's TimeoutError in words: the exception itself says nothing."""
MAX_PAUSE_S = 30.0
"""The longest pause between two tries of a send Kafka did not take."""
GIVE_UP_S = 300.0
"""How long a send is tried again while Kafka's failure may pass: past it (a reply topic
deleted), the failure is raised, and faust commits past the record."""


async def until_taken(send: Callable[[], Awaitable[object]], what: str) -> None:
    """`send()`, again with a growing pause while Kafka's failure may pass, for up to
    GIVE_UP_S; a failure that cannot pass, or lasts longer, is raised. A SIGTERM's
    cancellation stops the tries with the record not acknowledged. Each try again is a
    warning naming `what` (its request's id, where it has one), which llmq.throttle lets
    through once per interval for every send alike."""
    pause, deadline = 0.5, time.monotonic() + GIVE_UP_S
    while True:
        try:
            await send()
            return
        except (KafkaError, TimeoutError) as exc:
            if not _passing(exc) or time.monotonic() > deadline:
                raise
            # A KafkaError's str names its type.
            why = UNACKNOWLEDGED if isinstance(exc, TimeoutError) else str(exc)
            log.warning("could not send %s; again in %.1f s: %s", what, pause, why)
        await asyncio.sleep(pause)
        pause = min(2 * pause, MAX_PAUSE_S)


def _passing(exc: Exception) -> bool:
    """Whether waiting may mend a failed send: Kafka away or slow (a timeout, an error it
    calls retriable), not one it refuses for good (authorization, a record too large)."""
    return isinstance(exc, (TimeoutError, KafkaTimeoutError)) or (
        isinstance(exc, KafkaError) and exc.retriable
    )
