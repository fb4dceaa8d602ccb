"""The fingerprint: one hash over everything that changes a request's output."""

from __future__ import annotations

import hashlib
import json

from schemas.request import ChatMessage, InferenceRequest
from schemas.tools import NamedToolChoice, tool_dicts

FINGERPRINT_VERSION = 1


def fingerprint(request: InferenceRequest, model: str) -> str:
    """Hex SHA-256 of the canonical form of (tenant, model, messages, sampling parameters).

    Two requests with the same fingerprint get the same answer from a deterministic engine,
    so they may share a cached or in-flight generation. The tenant is included so that no
    tenant is ever served another's answer.
    """
    body = request.body
    canonical = {
        "v": FINGERPRINT_VERSION,
        "tenant": request.tenant,
        "model": model,
        "messages": [[m.role, m.content, *_tool_fields(m)] for m in body.messages],
        "max_tokens": body.max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stop": body.stop or [],
        "seed": body.seed,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "logprobs": body.logprobs,
    }
    if body.ignore_eos:  # only when set, so that every other request keeps its fingerprint
        canonical["ignore_eos"] = True
    if body.top_logprobs is not None:  # the same for each field added since
        canonical["top_logprobs"] = body.top_logprobs
    if body.logit_bias:  # in any order: the same biases
        canonical["logit_bias"] = sorted(body.logit_bias.items())
    canonical.update(body.vllm_sampling)  # each only when it changes the sampling
    if body.raw_prompt:
        canonical["raw_prompt"] = True
    if body.tools is not None:
        # As written, as response_format below: the template shows the tools, and their
        # parameters' properties, in this order, and the engine writes a call's arguments so.
        canonical["tools"] = json.dumps(
            tool_dicts(body.tools), separators=(",", ":"), ensure_ascii=False
        )
        choice = body.tool_choice
        named = choice.model_dump() if isinstance(choice, NamedToolChoice) else None
        canonical["tool_choice"] = named or choice
        if body.parallel_tool_calls is not None:
            canonical["parallel_tool_calls"] = body.parallel_tool_calls
    if body.json_format is not None:  # plain text among them
        # As written, not sorted: the engine writes an object's properties in the schema's
        # order, so two orders are two different answers.
        canonical["response_format"] = body.json_format.model_dump_json(exclude_none=True)
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


def _tool_fields(message: ChatMessage) -> list[object]:
    """A message's tool calls, or the call a tool message answers; nothing for any other
    message (so that its fingerprint is what it was before tools)."""
    if message.tool_calls is not None:
        return [[c.model_dump() for c in message.tool_calls]]
    return [] if message.tool_call_id is None else [message.tool_call_id]
