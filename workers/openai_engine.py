"""Any OpenAI-compatible completions server (a remote vLLM, ...), behind Engine."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import aiohttp

from schemas.catalog import ModelSpec
from schemas.errors import ErrorCode, LlmqError
from schemas.redact import content_log, mask_url
from schemas.request import CHARS_PER_TOKEN, ChatBody, ChatMessage, tokens_in
from schemas.result import TokenLogprob
from schemas.retry import RetryPolicy
from schemas.tools import Tool, tool_dicts
from schemas.work import CascadeBody
from workers.breaker import CircuitBreaker
from workers.engine import EngineStep

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 425, 429})
"""Client-side statuses that mean "not now" rather than "never"; 5xx are retried too."""
_ERROR_BODY_BYTES = 64 * 1024
_CONTEXT = "context length"
"""What OpenAI's and vLLM's messages about an over-long prompt say."""
_CHAT, _TEXT = "/chat/completions", "/completions"
"""Where a chat request goes, and a raw prompt: below the server's base URL."""
_FAILED_FINISH = frozenset({"abort", "error"})
"""vLLM's finish reasons for a generation the server gave up on."""
_FALLBACK_S = 1.0
"""A retry's wait must end this long before the request's deadline, else the engine gives
up at once: the fallback model needs the time (the failure's trip through the stream
processor and the next model's queue, a few Kafka hops, then its first tokens), and an
attempt that starts later would be cut off by the deadline anyway."""
_UNSUPPORTED = "unsupported_parameter"
"""The code of OpenAI's 400 for a field the model does not take (its reasoning models)."""
_MAX_TOKENS, _MAX_COMPLETION_TOKENS = "max_tokens", "max_completion_tokens"
"""The answer's length limit under its old name (vLLM's /completions, many servers) and its
new one, which OpenAI's reasoning models require in a chat request."""
UNJUDGED_KEPT = 1024
"""Calls cut before a verdict that OpenAIEngine remembers, for the worker to say why."""
_LOGPROBS = "logprobs"
"""Left out once refused where llmq asked for it (CascadeBody), not the app."""
_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
"""OpenAI's defaults of the sampling fields every request holds. Sent even at these values:
vLLM's server fills a field left out from the model's generation_config.json (its default
--generation-config auto), so the answer would differ from llmq's own engine's. Left out
only once a server refused the field."""


class _ServerError(Exception):
    """The server failed (not the request): counted by the breaker, retried if `retry`.

    One not to retry (a wrong key, URL or model name) fails as retried, so that the stream
    processor does not try the same model again either, but falls back to the next one.
    """

    def __init__(
        self,
        reason: str,
        retry_after_s: float | None = None,
        retry: bool = True,
        detail: str | None = None,
        said: str | None = None,
    ):
        super().__init__(reason)
        self.reason = reason
        """What the app is told (its error's message), the breaker keeps and the log says:
        the failure's kind, free of content (the breaker tells it to every tenant)."""
        self.detail = detail or reason
        """What the worker's log says: the client's own text, which may name the address."""
        self.said = said
        """What the server sent with the failure (its error's message, the unreadable
        event): perhaps a prompt or an answer echoed (a proxy's), so for content_log alone."""
        self.retry_after_s = retry_after_s
        self.retry = retry

    def log_said(self, request_id: str, attempt: int) -> None:
        """What the server said with the failure, if anything, to content_log alone."""
        if self.said is not None:
            content_log.debug("%s: attempt %d: the server said %r", request_id, attempt, self.said)


class _RefusedFieldError(Exception):
    """The server refused a field (OpenAI's "unsupported_parameter"): sent again without it
    where it held its default, else the request's fault (INVALID_REQUEST)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param
        self.message = message


class OpenAIEngine:
    """Streams chat completions (text completions for a raw prompt) over HTTP, with retries,
    backoff and a circuit breaker.

    A failed attempt is retried (exponential backoff with jitter, Retry-After honoured) only
    before the first step reached the caller: after that a retry would repeat text. A server
    that keeps failing ends in ENGINE_ERROR, never ENGINE_UNAVAILABLE (which stops the
    worker), so the stream processor's fallback chain takes over; the breaker makes that
    fast during an outage. The whole generation is bounded by the worker (timeout_s). A
    server's failure is named by its kind (its HTTP status, an unreadable event's size) to
    the app, the log and the breaker, which tells every tenant; what the server sent with it
    (an echoed prompt, the answer's text) goes to content_log alone.

    A field the server refuses (OpenAI's reasoning models: max_tokens, top_p, the penalties)
    is left out from then on where the request held its default (max_tokens is renamed
    max_completion_tokens), and the request sent again at once: one refusal per field and
    worker start, with nothing to set in the catalog. So are logprobs that llmq asked for
    itself (a cascade's signal, CascadeBody): the answer comes without them, and stands.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        send_priority: bool = False,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        """`api_key` goes in a bearer header (WorkerSettings.api_key reads the one the catalog
        names), `headers` in every request. `send_priority` passes the lane as vLLM's
        `priority` field: only for a vLLM started with --scheduling-policy priority (vLLM
        documents an error for a non-zero priority otherwise, and OpenAI's API rejects
        unknown fields). `read_timeout_s` bounds the silence between two bytes of a
        response."""
        if spec.url is None:
            raise ValueError(f"model {spec.name!r} has no `url` to an OpenAI-compatible server")
        self._spec = spec
        self._base = spec.url.rstrip("/")
        self._model = spec.remote_model or spec.name
        self._headers = {**(headers or {}), "Accept": "text/event-stream"}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._retry = retry or RetryPolicy()
        self._breaker = breaker or CircuitBreaker(spec.name)
        self._send_priority = send_priority
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._refused: set[str] = set()
        """Fields the server refused, left out (or renamed) from then on."""
        self._no_usage_said = False
        """Whether the log said that the server sends no usage report (_say_no_usage)."""
        self._unjudged: dict[str, None] = {}
        """Requests whose call was cut while it waited on the server, before any verdict (not
        while it waited to retry, its failure counted): the worker's timeout may blame the
        server for them (timed_out). The newest UNJUDGED_KEPT, in order."""

    async def generate(
        self,
        request_id: str,
        body: ChatBody,
        priority: int,
        tenant: str | None = None,
        deadline: float | None = None,
    ) -> AsyncGenerator[EngineStep, None]:
        """Stream deltas; closing this iterator early closes the HTTP request (the server
        aborts the generation when its client goes away). The tenant is not sent: the
        server's prefix cache is its own to scope. A raw prompt goes to the server's
        /completions, as it came (the server adds its model's special tokens)."""
        url = self._base + (_TEXT if body.raw_prompt else _CHAT)
        payload = self._payload(body, priority)
        top = body.top_logprobs or 0
        prompt_estimate = tokens_in(body.prompt_chars())
        started = time.monotonic()
        attempt, sent = 1, 0  # the attempt (a failure's retry is the next), the requests sent
        while True:
            sent += 1
            # 1) Fail fast while the circuit is open. This also cuts a retry loop short, not
            #    marked retried (no call was made): the stream processor retries it after the
            #    wait the breaker says, instead of failing it for good.
            probe = self._breaker.acquire()
            verdict = yielded = False
            try:
                # 2) Stream one attempt; its first step is the server's proof of health.
                steps_of = self._attempt(url, payload, top, f"{request_id}.{sent}", prompt_estimate)
                async with aclosing(steps_of) as steps:
                    async for step in steps:
                        if not verdict:
                            self._breaker.success()
                            verdict = True
                        yielded = True
                        yield step
                return
            except _RefusedFieldError as exc:
                # The server judged the request: it is up. Send it again without the field,
                # at once and not as a retry, unless the request asked for a value of it.
                self._breaker.success()
                verdict = True
                payload = self._without(exc, payload, body, priority)
            except LlmqError:
                # The server judged the request: it is up.
                self._breaker.success()
                verdict = True
                raise
            except _ServerError as exc:
                # 3) The server failed: count it, then retry if nothing reached the caller
                #    yet and the policy's attempts and time allow.
                self._breaker.failure(exc.reason)
                verdict = True
                exc.log_said(request_id, attempt)
                elapsed = time.monotonic() - started
                delay = self._retry_delay(exc, attempt, elapsed, yielded, deadline)
                log.warning(
                    "%s: attempt %d to %s at %s failed (%s); retrying in %.2f s",
                    request_id,
                    attempt,
                    self._spec.name,
                    mask_url(self._base),
                    exc.detail,
                    delay,
                )
                await asyncio.sleep(delay)
                attempt += 1
            finally:
                if not verdict:
                    self._cut_unjudged(request_id, probe)

    def _cut_unjudged(self, request_id: str, probe: bool) -> None:
        """A call ended before the server judged it (cut, most likely): a probe's gives the
        breaker's next call the probe, and the worker may yet say it was cut at its timeout."""
        if probe:
            self._breaker.abandon()
        self._unjudged[request_id] = None
        if len(self._unjudged) > UNJUDGED_KEPT:
            del self._unjudged[next(iter(self._unjudged))]

    def _retry_delay(
        self,
        exc: _ServerError,
        attempt: int,
        elapsed: float,
        yielded: bool,
        deadline: float | None,
    ) -> float:
        """The wait before the next attempt; raises ENGINE_ERROR when there is none, or when
        it would end within _FALLBACK_S of the request's `deadline`: then as retried, so
        the stream processor falls back to the next model at once instead of the deadline
        passing here (an expired request is not routed again)."""
        if yielded:
            raise LlmqError(
                ErrorCode.ENGINE_ERROR,
                f"the stream from {self._where} broke mid-answer (not retried: it would "
                f"repeat text): {exc.reason}",
            ) from exc
        delay = self._retry.delay(attempt, elapsed, exc.retry_after_s) if exc.retry else None
        late = (
            delay is not None
            and deadline is not None
            and time.time() + delay > deadline - _FALLBACK_S
        )
        if delay is None or late:
            log.warning("%s at %s failed: %s", self._spec.name, mask_url(self._base), exc.detail)
            why = " (no time to wait for a retry before the deadline)" if late else ""
            raise LlmqError(
                ErrorCode.ENGINE_ERROR,
                f"{self._where} failed {attempt} time(s) in {elapsed:.1f} s{why}; "
                f"last error: {exc.reason}",
                retry_after_s=exc.retry_after_s,
                retried=late or attempt > 1 or not exc.retry,
            ) from exc
        return delay

    def timed_out(self, request_id: str) -> None:
        """The worker cut a generation at timeout_s before the server sent anything: if its
        call was then waiting on the server, the server hangs, a failure for the breaker (a
        probe cut so opens it again); not if it was waiting to retry a failure counted
        already. The call's own end, cancelled, is no verdict: so ends one whose app left,
        or answered elsewhere."""
        if self._unjudged.pop(request_id, False) is None:
            self._breaker.failure(f"no answer in {self._spec.timeout_s:g}s (timeout_s)")

    def prompt_tokens(
        self, messages: list[ChatMessage], tools: list[Tool] | None = None
    ) -> int | None:
        """The server's tokenizer is not at hand: unknown until its usage report."""
        return None

    def _say_no_usage(self) -> None:
        """Log once that the server sends no usage report: what it generates is metered
        with estimates (_steps)."""
        if not self._no_usage_said:
            self._no_usage_said = True
            log.warning(
                "%s at %s sends no usage report (it ignores stream_options.include_usage): "
                "its generations are metered with estimated tokens, %d characters a token",
                self._spec.name,
                mask_url(self._base),
                CHARS_PER_TOKEN,
            )

    async def abort_all(self) -> None:
        """Close the HTTP session: requests still open are cut, connections released."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def shutdown(self) -> None:
        """Nothing runs in this process: `abort_all` already released the connections."""

    @property
    def _where(self) -> str:
        """The server, as errors name it to the app: by its model, not its address (an
        internal host, perhaps credentials), which only the worker's log shows."""
        return f"{self._spec.name}'s server"

    def _without(
        self, refused: _RefusedFieldError, payload: dict[str, Any], body: ChatBody, priority: int
    ) -> dict[str, Any]:
        """The payload without the field the server refused (remembered for the next ones):
        max_tokens in a chat request (renamed), a sampling field at its default, logprobs
        that llmq asked for (CascadeBody); else the request's fault, INVALID_REQUEST."""
        param = refused.param
        if param == _MAX_TOKENS:
            fits = _MAX_TOKENS in payload and not body.raw_prompt
        elif param == _LOGPROBS:
            fits = isinstance(body, CascadeBody)  # llmq's, not the app's: its answer stands
        else:
            fits = param in _DEFAULTS and payload.get(param) == _DEFAULTS[param]
        if not fits:
            raise LlmqError(ErrorCode.INVALID_REQUEST, refused.message) from refused
        if param not in self._refused:
            self._refused.add(param)
            log.info("%s refuses %r: it is left out from now on", self._where, param)
        return self._payload(body, priority)

    def _payload(self, body: ChatBody, priority: int) -> dict[str, Any]:
        chat_limit = _MAX_TOKENS in self._refused and not body.raw_prompt
        sampling = {
            "temperature": body.temperature,
            "top_p": body.top_p,
            "presence_penalty": body.presence_penalty,
            "frequency_penalty": body.frequency_penalty,
        }
        payload: dict[str, Any] = {
            "model": self._model,
            _MAX_COMPLETION_TOKENS if chat_limit else _MAX_TOKENS: body.max_tokens,
            **{
                name: value
                for name, value in sampling.items()
                if name not in self._refused or value != _DEFAULTS[name]
            },
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        fmt = body.json_format
        as_json = None if fmt is None else fmt.model_dump(mode="json", exclude_none=True)
        calls = body.tool_schema
        if calls is not None:  # read back from the text, as from llmq's own engine
            as_json = {"type": "json_schema", "json_schema": {"name": "calls", "schema": calls}}
        tools = tool_dicts(body.tools)
        bias = body.logit_bias
        asked = body.logprobs and not (_LOGPROBS in self._refused and isinstance(body, CascadeBody))
        if body.raw_prompt:  # text completions: `logprobs` is the number of likeliest tokens
            payload["prompt"] = body.messages[0].content
            logprobs = {_LOGPROBS: (body.top_logprobs or 0) if asked else None}
        else:
            payload["messages"] = [m.model_dump() for m in body.messages]
            logprobs = {_LOGPROBS: asked or None, "top_logprobs": body.top_logprobs}
        optional = {  # sent only when set (ignore_eos and priority: vLLM's server takes them)
            "stop": body.stop or None,
            "seed": body.seed,
            **logprobs,
            "logit_bias": {str(token): b for token, b in bias.items()} if bias else None,
            "ignore_eos": body.ignore_eos or None,
            "response_format": as_json,
            "tools": tools,  # shown to the model by the server's chat template; its answer is text
            "tool_choice": None if tools is None else "none",
            "priority": priority if self._send_priority else None,
        }
        payload.update((name, value) for name, value in optional.items() if value is not None)
        payload.update(body.vllm_sampling)  # vLLM's server's too
        return payload

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._spec.max_inflight),
                headers=self._headers,
            )
        return self._session

    async def _attempt(
        self, url: str, payload: dict[str, Any], top: int, attempt_id: str, prompt_estimate: int
    ) -> AsyncGenerator[EngineStep, None]:
        """One HTTP request; its failures are _ServerError, or LlmqError for the request's.
        Each token keeps its `top` likeliest alternatives; `prompt_estimate` stands for the
        prompt's tokens where the server sends no usage report.

        `attempt_id` goes out as X-Request-Id (the server's logs): one per attempt, so a retry
        never reuses the id of an attempt the server may still be running.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._connect_timeout_s, sock_read=self._read_timeout_s
        )
        try:
            async with self._open_session().post(
                url, json=payload, timeout=timeout, headers={"X-Request-Id": attempt_id}
            ) as resp:
                if resp.status != 200:
                    raise await self._status_error(resp)
                if resp.content_type != "text/event-stream":
                    raise _ServerError(
                        f"the server answered {resp.content_type}, not an event stream",
                        retry=False,
                    )
                # Leaving early releases the response unread, which closes its connection:
                # the server sees its client go and aborts the generation.
                async for step in _steps(resp.content, top, prompt_estimate, self._say_no_usage):
                    yield step
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # ValueError: e.g. a line over aiohttp's limit (uncaught, it would stop the worker).
            detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
            raise _ServerError(_exchange_failed(exc), detail=detail) from exc

    async def _status_error(self, resp: aiohttp.ClientResponse) -> Exception:
        """An HTTP error status as _ServerError (the server's fault) or LlmqError (ours)."""
        raw = await resp.content.read(_ERROR_BODY_BYTES)
        message, code, param = _error_details(raw.decode("utf-8", "replace"))
        status = resp.status
        if status == 501:
            return LlmqError(ErrorCode.UNSUPPORTED, message)
        path = resp.url.path
        if status in (404, 405) and path.endswith(_TEXT) and not path.endswith(_CHAT):
            # A server of chat only (OpenAI's chat models, some proxies): the request's
            # fault, so neither retried nor counted against the server by the breaker.
            why = f"{self._where} serves no text completions at {path}: HTTP {status}: {message}"
            return LlmqError(ErrorCode.UNSUPPORTED, why)
        # The server's failures, by their status alone: a body may echo the request (proxies
        # such as LiteLLM do), and their reason reaches the log and every tenant.
        kind = f"HTTP {status}"
        if status >= 500 or status in _RETRY_STATUSES:
            retry_after_s = _retry_after_s(resp.headers.get("Retry-After"))
            return _ServerError(kind, retry_after_s, said=message)
        if status in (401, 403):
            key = self._spec.api_key_env or "api_key_env"
            return _ServerError(f"{kind} (check the key in ${key})", retry=False, said=message)
        if status == 404:
            why = f"{kind} at {path} (check url and remote_model {self._model!r})"
            return _ServerError(why, retry=False, said=message)
        if status == 400 and code == _UNSUPPORTED and param is not None:
            return _RefusedFieldError(param, message)
        if status == 413 or code == "context_length_exceeded" or _CONTEXT in message.lower():
            return LlmqError(ErrorCode.PROMPT_TOO_LARGE, message)
        return LlmqError(ErrorCode.INVALID_REQUEST, message)


async def _steps(
    content: aiohttp.StreamReader, top: int, prompt_estimate: int, no_usage: Callable[[], None]
) -> AsyncIterator[EngineStep]:
    """Parse the server-sent events of one completion stream into steps.

    Completion tokens are counted per chunk (its logprobs entries, else one per chunk with
    text); the usage report at the end is the truth, and the final step carries the
    difference, so the steps' `new_tokens` add up to the server's count (or to the chunks
    counted, where they are more: a step adds no fewer than 0).

    A stream without a usage report (a server that ignores stream_options) is metered with
    estimates, which `no_usage` is told of: `prompt_estimate` prompt tokens, and the text
    that no logprobs counted at CHARS_PER_TOKEN characters a token.
    """
    counted = listed = unlisted_chars = 0
    prompt_tokens = completion_tokens = cached_tokens = None
    finish_reason: str | None = None
    async for chunk in _chunks(content, top):
        if chunk.prompt_tokens is not None:
            prompt_tokens = chunk.prompt_tokens
        cached_tokens = chunk.cached_tokens if chunk.cached_tokens is not None else cached_tokens
        completion_tokens = chunk.completion_tokens or completion_tokens
        finish_reason = chunk.finish_reason or finish_reason
        if chunk.text or chunk.logprobs:
            tokens = len(chunk.logprobs) or 1
            counted += tokens
            if chunk.logprobs:
                listed += len(chunk.logprobs)
            else:
                unlisted_chars += len(chunk.text)
            yield EngineStep(chunk.text, tokens, prompt_tokens or 0, logprobs=chunk.logprobs)
    if finish_reason is None:
        raise _ServerError("the stream ended before the generation finished")
    if finish_reason in _FAILED_FINISH:
        raise _ServerError(f"the server ended the generation with {finish_reason!r}")
    if prompt_tokens is None:
        no_usage()
        prompt_tokens = prompt_estimate
        completion_tokens = listed + tokens_in(unlisted_chars)
    total = counted if completion_tokens is None else completion_tokens
    yield EngineStep(
        "", max(0, total - counted), prompt_tokens, True, finish_reason, cached_tokens=cached_tokens
    )


def _logprob(entry: dict[str, Any], top: int) -> dict[str, Any]:
    """An OpenAI chat logprobs entry as llmq keeps it: no bytes, the `top` likeliest."""
    likely = sorted(entry.get("top_logprobs") or [], key=lambda t: -t["logprob"])[:top]
    return {
        "token": entry["token"],
        "logprob": entry["logprob"],
        "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]} for t in likely],
    }


def _text_entries(logprobs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A text completion's logprobs (lists side by side, the likeliest as a dict that may
    hold the sampled token too) as chat's entries."""
    if not logprobs:
        return []
    tokens = logprobs["tokens"]
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    return [
        {
            "token": token,
            "logprob": logprob,
            "top_logprobs": [{"token": t, "logprob": v} for t, v in (likely or {}).items()],
        }
        for token, logprob, likely in zip(tokens, logprobs["token_logprobs"], tops, strict=True)
    ]


async def _chunks(content: aiohttp.StreamReader, top: int) -> AsyncIterator[_Chunk]:
    """The `data:` events of a server-sent event stream, read, up to `[DONE]`."""
    async for raw in content:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return
        try:
            chunk = _Chunk.parse(data, top)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            # RecursionError: JSON nested too deep (uncaught, it would stop the worker). Named
            # by its kind and size: the event holds the answer's text.
            kind = f"{type(exc).__name__}, {len(data)} characters"
            raise _ServerError(f"an unreadable event in the stream ({kind})", said=data) from exc
        if chunk.error is not None:
            raise _ServerError("the server reported an error mid-stream", said=chunk.error)
        yield chunk


@dataclass(frozen=True)
class _Chunk:
    """What llmq reads from one `chat.completion.chunk` or `text_completion` event (choice 0;
    n is always 1)."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None

    @classmethod
    def parse(cls, data: str, top: int) -> _Chunk:
        """Raises ValueError, TypeError, KeyError, AttributeError or RecursionError (nested
        too deep) on a malformed event."""
        event = json.loads(data)
        if "error" in event:
            return cls(error=_error_details(data).message)
        usage = event.get("usage") or {}
        choices = event.get("choices") or [{}]
        choice = choices[0]
        if "text" in choice:  # a text completion's
            text = choice["text"] or ""
            entries = _text_entries(choice.get("logprobs"))
        else:
            text = (choice.get("delta") or {}).get("content") or ""
            entries = (choice.get("logprobs") or {}).get("content") or []
        chunk = cls(
            text=text,
            logprobs=[TokenLogprob.model_validate(_logprob(e, top)) for e in entries],
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cached_tokens=_cached_tokens(usage),
        )
        chunk.check()
        return chunk

    def check(self) -> None:
        """TypeError unless each field holds what OpenAI's events do (a server's list of
        parts or "5" for a count would fail the worker where its text is joined, its
        tokens summed)."""
        counts = (self.prompt_tokens, self.completion_tokens)
        if not isinstance(self.text, str) or not isinstance(self.finish_reason, str | None):
            raise TypeError("content and finish_reason must be strings")
        if any(c is not None and (isinstance(c, bool) or not isinstance(c, int)) for c in counts):
            raise TypeError("usage counts must be integers")


def _cached_tokens(usage: dict[str, Any]) -> int | None:
    """usage.prompt_tokens_details.cached_tokens, when the server reports a count."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) and cached >= 0 else None


class _ErrorDetails(NamedTuple):
    """What an error body says."""

    message: str
    code: str | None = None
    param: str | None = None
    """The field the error is about, where the server names one."""


def _error_details(text: str) -> _ErrorDetails:
    """What an OpenAI-style error body ({"error": {...}}) says, else the text (also where
    it is JSON nested too deep to read: RecursionError would stop the worker)."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return _ErrorDetails(text.strip()[:500] or "(no body)")
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or json.dumps(error)[:500]
        code, param = error.get("code"), error.get("param")
        return _ErrorDetails(
            str(message),
            None if code is None else str(code),
            param if isinstance(param, str) else None,
        )
    return _ErrorDetails(str(error)[:500])


def _retry_after_s(header: str | None) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _exchange_failed(exc: Exception) -> str:
    """What the app is told of an exchange with the server that failed: its kind, and the
    system's reason where a connection failed; not the HTTP client's text, which names the
    server's host and port, or its URL (the worker's log has it)."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        # By its number: the system's text here names the address too.
        return f"{name}: {os.strerror(exc.errno) if exc.errno else 'cannot connect'}"
    if isinstance(exc, aiohttp.ClientError):
        return name
    return f"{name}: {exc}".rstrip(": ")
