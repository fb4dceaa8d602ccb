"""A chat request in llmq's envelope, from a prompt and the OpenAI fields, and which request
a correlation id names."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from schemas.lanes import Lane
from schemas.request import CacheMode, ChatBody, ChatMessage, InferenceRequest

Prompt = str | Sequence[ChatMessage] | Sequence[dict[str, str]]
"""A user message, or a whole chat."""

Key = tuple[str, str]
"""(tenant, correlation_id): a correlation id is unique only per tenant."""
MAX_WAITING = 10_000
"""The most requests a client keeps as submitted and not yet collected; past it the oldest
is forgotten, and its result() reads only the result store (under the client's tenant
unless given another)."""


def request_key(correlation_id: str, tenant: str | None, submitted: Iterable[Key], own: str) -> Key:
    """The request of `tenant`; by default of the tenant a client `submitted` the id as, or
    its `own` where it submitted the id as several, or not at all."""
    if tenant is None:
        tenants = [t for t, cid in submitted if cid == correlation_id]
        tenant = tenants[0] if len(tenants) == 1 else own
    return (tenant, correlation_id)


def chat_request(
    prompt: Prompt,
    *,
    tenant: str,
    reply_to: str,
    model: str | None = None,
    lane: Lane = Lane.STANDARD,
    cache: CacheMode = CacheMode.AUTO,
    correlation_id: str | None = None,
    deadline_s: float | None = None,
    **body: Any,
) -> InferenceRequest:
    """The request for `prompt`; `body` takes the OpenAI fields (max_tokens, temperature,
    top_p, stop, seed, stream, ...). A new correlation_id unless one is given."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    now = time.time()
    return InferenceRequest(
        correlation_id=correlation_id or uuid.uuid4().hex,
        tenant=tenant,
        model=model,
        lane=lane,
        reply_to=reply_to,
        cache=cache,
        deadline=None if deadline_s is None else now + deadline_s,
        created_at=now,
        body=ChatBody.model_validate({"messages": messages, **body}),
    )
