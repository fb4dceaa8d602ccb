"""Model routing: explicit models and their fallbacks, "auto" by difficulty, the cascade.

Pure functions of the request, the completion and the catalog; docs/routing.md explains the
policy, its weights and how they were calibrated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass, fields

from schemas.catalog import Catalog, ModelSpec
from schemas.errors import FALLBACK_CODES, ErrorCode, LlmqError
from schemas.request import CHARS_PER_TOKEN, ChatBody, InferenceRequest
from schemas.route import AUTO, Route
from schemas.work import Completion
from streams.experiments import arm_of

SCAN_CHARS = 16_000
"""Content features read at most this much of a text (its head and tail): they saturate long
before, and a 1 MiB record must cost the stream processor milliseconds, not seconds."""

WEIGHTS = {
    "length": 0.40,  # a long prompt strains a small model's attention and context
    "output": 0.15,  # a long answer has more room to go wrong; apps often set it high anyway
    "depth": 0.20,  # later turns depend on everything said before
    "code": 0.40,  # reading or writing code is where small models fail first
    "math": 0.40,  # so is exact symbolic or numeric work
    "parts": 0.30,  # several questions or sub-tasks in one turn, each of which must be answered
    "reasoning": 0.40,  # "prove", "compare", "step by step": the app asks for reasoning
}
"""A feature's share of the score is its strength (0..1) times its weight; the score is the
sum, capped at 1. The weights sum to more than 1 on purpose: one strong signal takes a request
to the middle of three tiers, two to the top (calibrated in docs/routing.md)."""

_FENCE = re.compile(r"^\s*(?:```|~~~)", re.MULTILINE)
_CODE_LINE = re.compile(
    r"""^\s*(?:
        (?:def|async\s+def|fn|func)\s+\w+\s*[(<]
      | function\s*\w*\s*\(
      | class\s+[A-Z]\w*
      | (?:import\s+[\w.{*]|from\s+[\w.]+\s+import\s|\#include\s*[<"]|package\s+[\w.]+;?$)
      | (?:return|elif|except|await|yield)\b
      | (?:try|else|finally):\s*$
      | (?:for|while|if)\s*\(
      | (?:for|while|if|with)\s.*:\s*$
      | (?:const|let|var)\s+\w+\s*=
      | (?:public|private|protected|static)\s+\w+.*[({;]
      | (?:SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|CREATE\s+TABLE)\b
      | @\w+(?:\(.*\))?\s*$
      | [A-Za-z_][\w.]*(?:\[[^\]]*\])?\s*[-+*/]?=\s*\S
      | [\w.]+\(.*\)\s*;?\s*$
      | (?://|/\*|\*/|<!--)
      | .*[{}]\s*$
      | .*[)\]'"+\d]\s*;\s*$
      | .*(?:=>|->|::|===|!==|&&|\|\||\+=|</?[a-z][\w-]*(?:\s[^>]*)?>)
      | \$\s+\w+
    )""",
    re.VERBOSE,
)
_CODE_TALK = re.compile(
    r"\b(?:python|javascript|typescript|java|c\+\+|c\#|golang|rust|kotlin|php|ruby|sql|bash"
    r"|regex|html|css|react|function|method|script|code|api|bug|error|compile\w*|database)\b",
    re.IGNORECASE,
)
_LATEX = re.compile(
    r"\\(?:frac|sum|int|sqrt|lim|prod|cdot|times|le|ge|neq|infty|mathbb)\b"
    r"|\$[^$\n]*[\\^_=][^$\n]*\$"  # inline $...$ with a command, power, index or equals
)
_EXPRESSION = re.compile(
    r"(?<![\w.:/-])\d+(?:\.\d+)?\s*(?:[+*/^\u00d7\u00f7]|\s-\s)\s*\(?\d+(?:\.\d+)?(?![\w/:-])"
)
_ALGEBRA = re.compile(r"\b\d*[a-z]\s*\^\s*\d|\b\d+[a-z]\s+[-+=]\s|(?<![\w.])[a-z]\s*[=≤≥≠]\s*-?\d")
_MATH_SYMBOL = re.compile(r"[∫∑∏√π∞≈≤≥≠∂∇±θλμσ]|\b(?:sin|cos|tan|log|ln|exp)\(")
_MATH_TALK = re.compile(
    r"\b(?:equations?|integral|derivative|theorem|lemma|matrix|matrices|probability|polynomial"
    r"|eigen\w*|logarithm|factorial|modulo|prime\s+numbers?|inequality)\b",
    re.IGNORECASE,
)
_QUESTION = re.compile(r"\?+(?:\s|$)")
_ITEM = re.compile(r"^\s*[-*•]\s+\S|(?<!\S)\(?(?:\d{1,2}|[a-hA-H])[.)]\s+\S", re.MULTILINE)
_REASONING = re.compile(
    r"\b(?:prove|proof|derive|explain\s+(?:why|how)|step[\s-]by[\s-]step|compare|contrast"
    r"|analy[sz]e|design|architect\w*|optimi[sz]e|debug|refactor|evaluate|critique|justify"
    r"|trade-?offs?|pros\s+and\s+cons|implement|algorithm|why\s+(?:does|do|is|are)"
    r"|what\s+would\s+happen|reason\s+about|in\s+detail)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Difficulty:
    """How hard a request looks: the score in [0, 1] and each feature's share of it.

    For logs, so that a choice of model can be explained: the score is the shares' sum, capped
    at 1. Each share is the feature's weight (WEIGHTS) times its strength; strengths ramp from
    0 to 1 as described below.
    """

    score: float
    length: float
    """Prompt length in estimated tokens, log-scaled: 16 tokens -> 0, 2048 -> 1."""
    output: float
    """Requested max_tokens, log-scaled: 256 (the default) -> 0, 4096 -> 1."""
    depth: float
    """User turns of the conversation: one -> 0, five or more -> 1."""
    code: float
    """Code-like lines plus distinct programming terms, a fenced block counting 8: 8 -> 1."""
    math: float
    """LaTeX (counting 2), expressions, equations, math symbols and terms: 4 -> 1."""
    parts: float
    """Questions or enumerated sub-tasks in the last user turn: one -> 0, four or more -> 1."""
    reasoning: float
    """Distinct task verbs that ask for reasoning ("prove", "compare"...): 2 -> 1."""

    def describe(self) -> str:
        """One line for a log: the score and its largest shares, e.g. `0.62 (code 0.15, ...)`."""
        shares = sorted(
            ((f.name, getattr(self, f.name)) for f in fields(self) if f.name != "score"),
            key=lambda kv: -kv[1],
        )
        top = ", ".join(f"{name} {share:.2f}" for name, share in shares[:3] if share > 0)
        return f"{self.score:.2f} ({top or 'no signal'})"


def difficulty(body: ChatBody) -> Difficulty:
    """Score a chat body from its structure and wording; deterministic, no model call."""
    shares = {name: round(WEIGHTS[name] * s, 4) for name, s in strengths(body).items()}
    return Difficulty(score=round(min(1.0, sum(shares.values())), 4), **shares)


def strengths(body: ChatBody) -> dict[str, float]:
    """Each feature's strength in [0, 1], before weighting.

    Code and math are read over the whole conversation (the model must read them; math only
    outside code-like lines, so that code is not counted twice); questions and task verbs
    over the last user turn (what it is asked to do now).
    """
    users = [m.content for m in body.messages if m.role == "user"]
    last = _scan(users[-1] if users else body.messages[-1].content)
    text = _scan("\n".join(m.content for m in body.messages))
    lines = text.splitlines()
    is_code = [_CODE_LINE.match(line) is not None for line in lines]
    code_talk = len({m.lower() for m in _CODE_TALK.findall(text)})
    prose = "\n".join(line for line, c in zip(lines, is_code, strict=True) if not c)
    math_signs = (
        2 * len(_LATEX.findall(prose))
        + len(_EXPRESSION.findall(prose))
        + len(_ALGEBRA.findall(prose))
        + len(_MATH_SYMBOL.findall(prose))
        + len({m.lower() for m in _MATH_TALK.findall(prose)})
    )
    asked = max(len(_QUESTION.findall(last)), len(_ITEM.findall(last)))
    return {
        "length": _log_ramp(body.prompt_chars() / CHARS_PER_TOKEN, 16, 2048),
        "output": _log_ramp(body.max_tokens, 256, 4096),
        "depth": _ramp(len(users) - 1, 4),
        "code": _ramp(sum(is_code) + code_talk + (8 if _FENCE.search(text) else 0), 8),
        "math": _ramp(math_signs, 4),
        "parts": _ramp(asked - 1, 3),
        "reasoning": _ramp(len({m.lower() for m in _REASONING.findall(last)}), 2),
    }


def _scan(text: str) -> str:
    """The part of a text the content features read: all of it, or its head and tail."""
    if len(text) <= SCAN_CHARS:
        return text
    half = SCAN_CHARS // 2
    return f"{text[:half]}\n{text[-half:]}"


def _ramp(value: float, full: float) -> float:
    """0 at or below 0, 1 at or above `full`, linear between."""
    return min(1.0, max(0.0, value / full))


def _log_ramp(value: float, low: float, high: float) -> float:
    """0 at or below `low`, 1 at or above `high`, linear in log(value) between."""
    if value <= low:
        return 0.0
    return min(1.0, math.log(value / low) / math.log(high / low))


def plan(request: InferenceRequest, catalog: Catalog) -> Route:
    """The route for a request: its model, then the models to try after it.

    An explicit model (or the catalog default) is followed by its configured fallbacks.
    "auto" starts at the tier the difficulty score points to, then climbs the higher tiers
    (one model each), then the fallbacks of those models; either way, only fallbacks that
    can take the request. A requested name that an experiment covers is served by the
    tenant's arm instead, if the tenant takes part. A request with logit_bias gets the model
    it names and no other.
    """
    name = request.requested_model or catalog.default
    if request.body.logit_bias:
        return _pinned(name, catalog)
    experiment = catalog.experiment(name)
    arm = None if experiment is None else arm_of(experiment, request.tenant)
    if experiment is not None and arm is not None:
        served = _plan(arm.model, request, catalog)
        return served.model_copy(
            update={"requested": name, "experiment": experiment.name, "arm": arm.name}
        )
    return _plan(name, request, catalog)


def _pinned(name: str, catalog: Catalog) -> Route:
    """A request with logit_bias: its token ids are one tokenizer's, so the model it names
    serves it, with no fallback, cascade or experiment arm."""
    if name not in catalog.requestable:
        raise _unknown(name, catalog)
    if catalog.get(name) is None:
        raise LlmqError(
            ErrorCode.INVALID_REQUEST,
            f"logit_bias names token ids of one model's tokenizer: ask for one of "
            f"{catalog.names}, not {name!r}",
        )
    return Route(requested=name, chain=[name])


def _unknown(name: str, catalog: Catalog) -> LlmqError:
    return LlmqError(
        ErrorCode.UNKNOWN_MODEL, f"unknown model {name!r}; this deployment serves {catalog.names}"
    )


def _plan(name: str, request: InferenceRequest, catalog: Catalog) -> Route:
    """The route for `name`, a catalog model or "auto".

    Fallbacks that cannot take the request are left out (`_fallbacks`), so that a fallback or
    an escalation never reaches a model that must reject it. A first model that cannot take
    it is passed over for the first of the chain that can (`_taken`); with none, it stays, so
    that admission says why it cannot serve.
    """
    body = request.body
    if name != AUTO:
        spec = catalog.get(name)
        if spec is None:
            raise _unknown(name, catalog)
        chain = [name, *_fallbacks([spec], [name], catalog, body)]
        return _taken(Route(requested=name, chain=chain), catalog, body)
    ladder = _ladder(catalog, body)
    start = tier_index(difficulty(body).score, len(ladder))
    chain = [m.name for m in ladder[start:]]
    chain.extend(_fallbacks(ladder[start:], chain, catalog, body))
    # A streamed answer is shown as it comes: one escalated after it was shown would leave
    # the app with the unsure answer, and the result store with another.
    cascade = catalog.routing.cascade and start < len(ladder) - 1 and not body.stream
    return _taken(Route(requested=AUTO, chain=chain, cascade=cascade), catalog, body)


def _taken(route: Route, catalog: Catalog, body: ChatBody) -> Route:
    """The route from the first model of its chain that may take the request (`_takes`): a
    prompt or max_tokens past the first model's bounds falls back at once to the first of the
    chain that takes it, as an engine's refusal of a prompt too large moves on
    (`next_route`). Unchanged when the first takes it, or none does."""
    for skipped, name in enumerate(route.chain):
        spec = catalog.get(name)
        if spec is not None and _takes(spec, body):
            return route if skipped == 0 else route.advance(escalated=False, skip=skipped - 1)
    return route


def tier_index(score: float, tiers: int) -> int:
    """Which of `tiers` tiers (0 = cheapest) a score starts at: [0, 1] cut into equal parts."""
    return min(tiers - 1, int(score * tiers))


def _ladder(catalog: Catalog, body: ChatBody) -> list[ModelSpec]:
    """One model per tier, cheapest first: the first in catalog order that fits the request.

    A model whose context the prompt's estimated tokens plus max_tokens do not fit is
    skipped, so that "auto" never picks a model that must reject; when none fits, admission
    reports why. Under tool_choice "auto", only models that read calls are climbed, where
    any does.
    """
    routed = catalog.routed(calls=body.chooses_calls)
    specs = [spec for spec in catalog.by_tier() if spec.name in routed]
    fitting = [m for m in specs if _fits(m, body)] or specs
    ladder: dict[int, ModelSpec] = {}
    for spec in fitting:
        ladder.setdefault(spec.tier, spec)
    return list(ladder.values())


def _fits(spec: ModelSpec, body: ChatBody) -> bool:
    """Whether the prompt, at CHARS_PER_TOKEN characters a token, plus max_tokens fits the
    model's context, before tokenizing: an estimate (the engine's refusal, which moves the
    route on to a larger context, is the truth). Strictly below, as the engine's bound: the
    chat template adds tokens of its own."""
    return body.estimated_tokens() < spec.max_model_len


def _takes(spec: ModelSpec, body: ChatBody) -> bool:
    """Whether the model may take the request at all: the bounds admission checks for the
    first model (a prompt of at most 8 characters a token, max_tokens within the context).
    A fallback is kept by these, not by the estimate: one with the first model's context
    serves what the first would (its engine refuses a prompt too large, and the route moves
    on to a larger context)."""
    return body.prompt_chars() <= spec.max_prompt_chars and body.max_tokens < spec.max_model_len


def _fallbacks(
    specs: list[ModelSpec], chain: list[str], catalog: Catalog, body: ChatBody
) -> list[str]:
    """The fallbacks of `specs`, in order, not in `chain` yet, that can take the request
    (`_takes`), and read calls where the request lets the model choose them."""
    named = dict.fromkeys(f for spec in specs for f in spec.fallback if f not in chain)
    candidates = [catalog.get(f) for f in named]
    return [
        spec.name
        for spec in candidates
        if spec is not None
        and _takes(spec, body)
        and (spec.tool_call_parser is not None or not body.chooses_calls)
    ]


def next_route(
    completion: Completion, catalog: Catalog, unserved: Collection[str] = ()
) -> Route | None:
    """Where a completion goes next: the route to the next model, or None to answer as is.

    An engine failure falls back to the next model of the chain, a prompt too large for the
    model's context to the next one with a larger context; once the route has escalated,
    only to one of a higher tier than every model tried before, so that a failure never
    answers with a model no better than one judged too unsure. A cascading route whose
    answer is unsure (mean token log-probability below `routing.escalate_below`) escalates,
    but only to a model of a higher tier than the one that answered. A fallback passes over
    the models in `unserved` (no worker would take the work); an escalation to one is not
    made (the answer stands).
    """
    route = completion.work.route
    if completion.error is not None:
        if completion.error.code is ErrorCode.PROMPT_TOO_LARGE:
            refused = catalog.get(route.current)
            if refused is None:
                return None  # its context, which the next model must pass, is unknown
            return _fall_back(route, catalog, unserved, wider_than=refused.max_model_len)
        if completion.error.code not in FALLBACK_CODES:
            return None
        return _fall_back(route, catalog, unserved, failed=True)
    if route.remaining and route.remaining[0] in unserved:
        return None  # its next model has no worker
    unsure = (
        completion.mean_logprob is not None
        and completion.mean_logprob < catalog.routing.escalate_below
    )
    return route.advance(escalated=True) if unsure and may_escalate(route, catalog) else None


def may_escalate(route: Route, catalog: Catalog) -> bool:
    """Whether an unsure answer of the route's current model escalates (`next_route`): the
    route cascades and its next model, still in the catalog, is of a higher tier. Only then
    is the engine asked for logprobs the app did not ask for (WorkItem.may_escalate)."""
    following = catalog.get(route.remaining[0]) if route.remaining else None
    if not route.cascade or following is None:
        return False  # no cascade, or the chain is done, or its next model left the catalog
    serving = catalog.get(route.current)
    return serving is None or following.tier > serving.tier


def _fall_back(
    route: Route,
    catalog: Catalog,
    unserved: Collection[str],
    wider_than: int = 0,
    *,
    failed: bool = False,
) -> Route | None:
    """The route to the next model of the chain after a failure, past the models of a tier
    at or below the highest tried where the route has escalated, and those whose context is
    not larger than `wider_than` (that of a model that refused the prompt as too large), and
    those that left the catalog since admission or are `unserved`; None when there is none.
    `failed`: the model's engine failed (Route.failed_over), where another time it may not."""
    tiers = [spec.tier for spec in map(catalog.get, route.tried) if spec is not None]
    bar = max(tiers, default=0) if route.escalated else 0
    for skipped, name in enumerate(route.remaining):
        spec = catalog.get(name)
        if spec is None or name in unserved:
            continue
        if spec.tier > bar and spec.max_model_len > wider_than:
            return route.advance(escalated=False, skip=skipped, failed=failed)
    return None
