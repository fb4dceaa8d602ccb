"""Routing: the difficulty score, the route a request gets, and what a completion does next."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.catalog import Catalog, ModelSpec, Routing
from schemas.errors import FALLBACK_CODES, ErrorCode, LlmqError
from schemas.request import ChatBody, ChatMessage, InferenceRequest
from schemas.result import ChatCompletion, Choice, ErrorInfo, Timings, Usage
from schemas.route import AUTO, Route
from schemas.work import Completion, WorkItem
from streams.router import (
    SCAN_CHARS,
    WEIGHTS,
    Difficulty,
    difficulty,
    next_route,
    plan,
    strengths,
    tier_index,
)

# A catalog with three tiers: two models in tier 1, one in tier 2, two in tier 3.
TIERED = Catalog(
    default="small",
    models=[
        ModelSpec(name="mid", source="/models/mid", tier=2, fallback=["small"]),
        ModelSpec(name="small", source="/models/small", tier=1, fallback=["small-b"]),
        ModelSpec(name="big", source="/models/big", tier=3, fallback=["mid", "remote"]),
        ModelSpec(name="small-b", source="/models/small-b", tier=1),
        ModelSpec(name="remote", engine="openai", url="http://gpu:8000/v1", tier=3),
    ],
)
SINGLE = Catalog.builtin()

EASY = "What is the capital of France?"
MEDIUM = "Compare PostgreSQL and MongoDB for a small web shop. What are the trade-offs?"
PROOF = (
    "Prove that $\\sqrt{2}$ is irrational. Then:\n"
    "a) show that $x^2 = 2$ has no rational solution,\n"
    "b) derive the same result for $\\sqrt{3}$,\n"
    "c) explain why the argument fails for $\\sqrt{4}$,\n"
    "d) compare this proof with the proof that there are infinitely many prime numbers."
)
SNIPPET = """```python
import json

class Cache:
    def __init__(self):
        self.items = {}

    def get(self, key):
        if key in self.items:
            return self.items[key]
        return None

def load(path):
    data = json.load(open(path))
    return data
```"""
CODE_REVIEW = (
    "Review this code. 1. Find the bugs and explain why each one is a bug. "
    "2. Refactor it. 3. Design tests for it. 4. Compare your version with the original.\n" + SNIPPET
)


def _body(*turns: str, **fields: Any) -> ChatBody:
    """User and assistant turns, alternating, starting with the user."""
    roles = ("user", "assistant")
    messages = [ChatMessage(role=roles[i % 2], content=t) for i, t in enumerate(turns)]
    return ChatBody(messages=messages, **fields)


def _request(text: str, model: str | None = AUTO, **fields: Any) -> InferenceRequest:
    return InferenceRequest(correlation_id="req-1", model=model, body=_body(text, **fields))


# -- difficulty ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        EASY,
        "Translate 'good morning' into Spanish.",
        "Give me a synonym for happy.",
        "Write a short happy birthday message for my sister.",
        "hi",
    ],
)
def test_short_plain_requests_score_low(text: str) -> None:
    assert difficulty(_body(text)).score < 1 / 3


@pytest.mark.parametrize("text", [CODE_REVIEW, PROOF])
def test_code_review_and_multi_part_proof_score_at_the_top(text: str) -> None:
    assert difficulty(_body(text)).score >= 2 / 3


def test_one_reasoning_request_scores_in_the_middle() -> None:
    assert 1 / 3 <= difficulty(_body(MEDIUM)).score < 2 / 3


def test_task_verbs_alone_cannot_reach_the_top() -> None:
    verbs = (
        "Prove, derive, compare, analyze, design, optimize, evaluate and justify it step by step"
    )
    scored = difficulty(_body(verbs))
    assert scored.reasoning == WEIGHTS["reasoning"]
    assert scored.score < 2 / 3


def test_the_score_is_the_sum_of_the_shares_capped_at_one() -> None:
    for text in (EASY, MEDIUM, PROOF, CODE_REVIEW):
        scored = difficulty(_body(text))
        shares = [scored.length, scored.output, scored.depth, scored.code]
        shares += [scored.math, scored.parts, scored.reasoning]
        assert scored.score == pytest.approx(min(1.0, sum(shares)), abs=1e-3)
        assert 0.0 <= scored.score <= 1.0


def test_every_strength_lies_in_zero_to_one() -> None:
    for text in (EASY, MEDIUM, PROOF, CODE_REVIEW, "x" * 100_000):
        for name, value in strengths(_body(text, max_tokens=32_768)).items():
            assert 0.0 <= value <= 1.0, name


def test_each_feature_responds_to_its_signal() -> None:
    plain = strengths(_body(EASY))
    assert plain == dict.fromkeys(WEIGHTS, 0.0)
    assert strengths(_body("word " * 2_000))["length"] == 1.0
    assert strengths(_body(EASY, max_tokens=4096))["output"] == 1.0
    assert strengths(_body(*[EASY, "Paris."] * 2, EASY))["depth"] == 0.5  # three user turns
    assert strengths(_body(*[EASY, "Paris."] * 4, EASY))["depth"] == 1.0
    assert strengths(_body(SNIPPET))["code"] == 1.0
    assert strengths(_body("Solve 3x + 5 = 20, then x^2 - 4 = 0 and 12 * 7."))["math"] == 1.0
    assert strengths(_body("Who? What? Where? When?"))["parts"] == 1.0
    assert strengths(_body("Explain why and compare."))["reasoning"] == 1.0


def test_dates_prices_and_code_are_not_math() -> None:
    assert strengths(_body("Invoice 18/12/2022 for $500k-$1M, due 2023-03-17."))["math"] == 0.0
    assert strengths(_body("for i in range(10):\n    x = i * 2 + 1\n"))["math"] == 0.0


def test_questions_and_verbs_count_in_the_last_user_turn_only() -> None:
    earlier = "Explain why, compare them. Why? How? Which? When?"
    scored = strengths(_body(earlier, "Sure.", EASY))
    assert scored["parts"] == 0.0
    assert scored["reasoning"] == 0.0


def test_code_at_the_end_of_a_huge_prompt_is_still_seen() -> None:
    text = "Some prose. " * (SCAN_CHARS // 4) + "\n" + SNIPPET
    assert strengths(_body(text))["code"] == 1.0


def test_difficulty_is_deterministic() -> None:
    body = _body(CODE_REVIEW, "Here you go.", PROOF, max_tokens=1024)
    assert difficulty(body) == difficulty(body.model_copy(deep=True))


def test_describe_names_the_largest_shares() -> None:
    assert difficulty(_body("hi")).describe() == "0.00 (no signal)"
    line = difficulty(_body(PROOF)).describe()
    assert line.startswith("1.00 (")
    assert "math 0.40" in line
    assert "reasoning 0.40" in line


def test_difficulty_is_a_frozen_value() -> None:
    scored = difficulty(_body(EASY))
    assert isinstance(scored, Difficulty)
    with pytest.raises(AttributeError):
        scored.score = 1.0  # type: ignore[misc]


# -- plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "tiers", "index"),
    [
        (0.0, 1, 0),
        (1.0, 1, 0),
        (0.49, 2, 0),
        (0.5, 2, 1),
        (0.0, 3, 0),
        (0.33, 3, 0),
        (0.34, 3, 1),
        (0.66, 3, 1),
        (0.67, 3, 2),
        (1.0, 3, 2),
    ],
)
def test_scores_map_evenly_onto_tiers(score: float, tiers: int, index: int) -> None:
    assert tier_index(score, tiers) == index


def test_explicit_model_gets_its_fallbacks_and_no_cascade() -> None:
    route = plan(_request(PROOF, model="big"), TIERED)
    assert route == Route(requested="big", chain=["big", "mid", "remote"], cascade=False)


def test_body_model_counts_as_explicit() -> None:
    request = InferenceRequest(
        correlation_id="req-1", body=_body(EASY).model_copy(update={"model": "mid"})
    )
    assert plan(request, TIERED) == Route(requested="mid", chain=["mid", "small"])


def test_logit_bias_pins_the_model_it_names() -> None:
    """Token ids are one tokenizer's: no fallback or cascade may read them as another's."""
    route = plan(_request(PROOF, model="big", logit_bias={5: 1.0}), TIERED)
    assert route == Route(requested="big", chain=["big"], cascade=False)
    assert plan(_request(PROOF, model=None, logit_bias={5: 1.0}), TIERED).chain == ["small"]
    with pytest.raises(LlmqError) as caught:
        plan(_request(EASY, model=AUTO, logit_bias={5: 1.0}), TIERED)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert "logit_bias" in caught.value.message and repr(AUTO) in caught.value.message
    with pytest.raises(LlmqError) as unknown:
        plan(_request(EASY, model="gpt-9", logit_bias={5: 1.0}), TIERED)
    assert unknown.value.code is ErrorCode.UNKNOWN_MODEL


def test_no_model_gets_the_catalog_default() -> None:
    route = plan(_request(PROOF, model=None), TIERED)
    assert route == Route(requested="small", chain=["small", "small-b"])


def test_unknown_model_is_an_unknown_model_error() -> None:
    with pytest.raises(LlmqError) as caught:
        plan(_request(EASY, model="gpt-9"), TIERED)
    assert caught.value.code is ErrorCode.UNKNOWN_MODEL
    assert "gpt-9" in caught.value.message


@pytest.mark.parametrize("text", [EASY, PROOF])
def test_auto_on_a_one_model_catalog_is_that_model(text: str) -> None:
    assert plan(_request(text), SINGLE) == Route(
        requested=AUTO, chain=["smollm2-135m"], cascade=False
    )


def test_auto_easy_starts_at_tier_one_and_cascades_up() -> None:
    route = plan(_request(EASY), TIERED)
    assert route.requested == AUTO
    assert route.chain == ["small", "mid", "big", "small-b", "remote"]
    assert route.current == "small"
    assert route.cascade


def test_auto_streamed_starts_where_it_would_and_does_not_cascade() -> None:
    """Its tokens are shown as they come: escalated after, the app would keep the unsure
    answer while the result store holds another."""
    route = plan(_request(EASY, stream=True), TIERED)
    assert route.chain == ["small", "mid", "big", "small-b", "remote"]
    assert not route.cascade


def test_auto_medium_starts_at_tier_two() -> None:
    route = plan(_request(MEDIUM), TIERED)
    assert route.chain == ["mid", "big", "small", "remote"]
    assert route.cascade


@pytest.mark.parametrize("text", [CODE_REVIEW, PROOF])
def test_auto_hard_starts_at_the_top_without_cascade(text: str) -> None:
    route = plan(_request(text), TIERED)
    assert route.chain == ["big", "mid", "remote"]
    assert not route.cascade


@pytest.mark.parametrize("text", [EASY, MEDIUM, PROOF, CODE_REVIEW])
def test_auto_chains_have_no_duplicates_and_only_catalog_models(text: str) -> None:
    chain = plan(_request(text), TIERED).chain
    assert len(chain) == len(set(chain))
    assert set(chain) <= set(TIERED.names)


def test_auto_without_cascade_in_the_catalog_does_not_cascade() -> None:
    catalog = TIERED.model_copy(update={"routing": Routing(cascade=False)})
    route = plan(_request(EASY), catalog)
    assert route.current == "small"
    assert not route.cascade


def test_auto_skips_a_model_too_small_for_the_prompt() -> None:
    cramped = ModelSpec(name="small", source="/models/small", tier=1, max_model_len=64)
    catalog = TIERED.model_copy(
        update={"models": [cramped if m.name == "small" else m for m in TIERED.models]}
    )
    long_and_easy = "Please say hello. " * 40  # 720 characters; "small" takes 512
    assert difficulty(_body(long_and_easy)).score < 1 / 3
    route = plan(_request(long_and_easy), catalog)
    assert route.current == "small-b"
    assert route.cascade


def test_auto_when_nothing_fits_still_routes_so_admission_can_say_why() -> None:
    route = plan(_request(EASY, max_tokens=4096), SINGLE)  # the built-in model has 2048
    assert route.chain == ["smollm2-135m"]


def test_auto_under_tool_choice_auto_climbs_only_models_that_read_calls() -> None:
    reading = {"small-b", "big"}
    parsed = {"tool_call_parser": "hermes"}
    catalog = TIERED.model_copy(
        update={
            "models": [
                m.model_copy(update=parsed) if m.name in reading else m for m in TIERED.models
            ]
        }
    )
    tools = [{"type": "function", "function": {"name": "f"}}]
    route = plan(_request(EASY, tools=tools), catalog)  # OpenAI's default choice: "auto"
    assert route.chain == ["small-b", "big"]  # big's fallbacks read no calls: left out
    everyone = ["small", "mid", "big", "small-b", "remote"]
    assert plan(_request(EASY, tools=tools, tool_choice="none"), catalog).chain == everyone
    # Where none reads calls, every tier as before (the worker's refusal names why).
    assert plan(_request(EASY, tools=tools), TIERED).chain == ["small", "mid", "big"]


def test_auto_leaves_out_fallbacks_too_small_for_the_request() -> None:
    """An escalation or fallback to them would end in a rejection after paid generations."""
    catalog = Catalog(
        default="small",
        models=[
            ModelSpec(name="small", source="/m/s", tier=1, max_model_len=8192, fallback=["huge"]),
            ModelSpec(name="big", source="/m/b", tier=2, max_model_len=8192),
            ModelSpec(name="huge", source="/m/h", tier=3, max_model_len=2048),
        ],
    )
    route = plan(_request(EASY, max_tokens=2100), catalog)
    assert route.chain == ["small", "big"]
    assert route.cascade
    assert plan(_request(EASY, max_tokens=1000), catalog).chain == ["small", "big", "huge"]


def test_a_named_model_keeps_only_fallbacks_that_can_take_the_request() -> None:
    parsed = {"tool_call_parser": "hermes"}
    catalog = Catalog(
        default="a",
        models=[
            ModelSpec(name="a", source="/m/a", max_model_len=512, fallback=["b", "c", "d"]),
            ModelSpec(name="b", source="/m/b", max_model_len=4096, **parsed),
            ModelSpec(name="c", source="/m/c", max_model_len=1024, **parsed),
            ModelSpec(name="d", source="/m/d", max_model_len=4096),
        ],
    )
    assert plan(_request(EASY, model="a"), catalog).chain == ["a", "b", "c", "d"]
    # Too long for "a" and "c": "b" serves at once ("a" is passed over, as if it had failed).
    long = plan(_request(EASY, model="a", max_tokens=2000), catalog)
    assert (long.chain, long.current, long.tried, long.fell_back) == (
        ["a", "b", "d"],
        "b",
        ["a"],
        True,
    )
    # Too long for all: "a" stays, so that admission says why it cannot serve.
    assert plan(_request(EASY, model="a", max_tokens=5000), catalog).chain == ["a"]
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert plan(_request(EASY, model="a", tools=tools), catalog).chain == ["a", "b", "c"]


def test_a_fallback_with_the_first_models_context_is_kept_for_a_long_answer() -> None:
    """The estimate passes the context, but the first model serves (its engine stops at its
    context): its twin must still answer when it fails."""
    catalog = Catalog(
        default="small",
        models=[
            ModelSpec(name="small", source="/m/s", max_model_len=4096, fallback=["twin"]),
            ModelSpec(name="twin", source="/m/t", max_model_len=4096),
        ],
    )
    asked = _request("Please say hello. " * 111, model="small", max_tokens=3800)
    assert asked.body.estimated_tokens() >= 4096
    assert plan(asked, catalog).chain == ["small", "twin"]


def test_auto_counts_the_prompts_estimated_tokens_plus_max_tokens_against_the_context() -> None:
    """As examples/models-remote.toml: a prompt the small model's engine would refuse after
    tokenizing, or whose answer would not fit after it, starts on the larger context."""
    catalog = Catalog(
        default="small",
        models=[
            ModelSpec(name="small", source="/m/s", tier=1, max_model_len=2048),
            ModelSpec(
                name="remote", engine="openai", url="http://r/v1", tier=2, max_model_len=32768
            ),
        ],
    )
    article = "Please say hello. " * 556  # 10,008 characters: about 2,500 tokens
    assert difficulty(_body(article)).score < 1 / 2  # easy: tier 1 by its score
    assert plan(_request(article), catalog).chain == ["remote"]
    page = "Please say hello. " * 100  # 1,800 characters: about 450 tokens
    assert plan(_request(page), catalog).chain == ["small", "remote"]
    assert difficulty(_body(page, max_tokens=1600)).score < 1 / 2
    assert plan(_request(page, max_tokens=1600), catalog).chain == ["remote"]


def test_plan_is_deterministic() -> None:
    for text in (EASY, MEDIUM, PROOF):
        assert plan(_request(text), TIERED) == plan(_request(text), TIERED)


# -- next_route ------------------------------------------------------------------------------


def _completion(
    route: Route,
    *,
    mean_logprob: float | None = None,
    error: ErrorCode | None = None,
) -> Completion:
    work = WorkItem(
        request=_request(EASY),
        model=route.current,
        fingerprint="f" * 64,
        route=route,
    )
    timings = Timings(queue_ms=1.0, engine_ms=2.0)
    if error is not None:
        info = ErrorInfo.from_error(LlmqError(error, "it broke"))
        return Completion(work=work, error=info, timings=timings, worker="w1")
    answer = ChatCompletion(
        id="chatcmpl-1",
        created=1,
        model=route.current,
        choices=[
            Choice(message=ChatMessage(role="assistant", content="Paris."), finish_reason="stop")
        ],
        usage=Usage(prompt_tokens=7, completion_tokens=2, total_tokens=9),
    )
    return Completion(
        work=work, response=answer, timings=timings, mean_logprob=mean_logprob, worker="w1"
    )


CASCADE = Route(requested=AUTO, chain=["small", "mid", "big", "small-b", "remote"], cascade=True)


@pytest.mark.parametrize("code", sorted(FALLBACK_CODES))
def test_engine_failures_fall_back_to_the_next_model(code: ErrorCode) -> None:
    route = next_route(_completion(CASCADE, error=code), TIERED)
    assert route is not None
    assert route.current == "mid"
    assert route.tried == ["small"]
    assert route.fell_back
    assert not route.escalated


def test_an_explicit_model_falls_back_along_its_configured_chain() -> None:
    route = Route(requested="big", chain=["big", "mid", "remote"])
    first = next_route(_completion(route, error=ErrorCode.ENGINE_TIMEOUT), TIERED)
    assert first is not None
    assert first.current == "mid"
    second = next_route(_completion(first, error=ErrorCode.ENGINE_ERROR), TIERED)
    assert second is not None
    assert second.current == "remote"
    assert second.tried == ["big", "mid"]
    assert next_route(_completion(second, error=ErrorCode.ENGINE_ERROR), TIERED) is None


def test_a_fallback_passes_over_a_model_that_left_the_catalog_since_admission() -> None:
    route = Route(requested="big", chain=["big", "mid", "remote"])
    reloaded = Catalog(
        default="big",
        models=[
            ModelSpec(name="big", source="/models/big", tier=3, fallback=["remote"]),
            ModelSpec(name="remote", engine="openai", url="http://gpu:8000/v1", tier=3),
        ],
    )
    fallen = next_route(_completion(route, error=ErrorCode.ENGINE_ERROR), reloaded)
    assert fallen is not None
    assert (fallen.current, fallen.chain, fallen.tried) == ("remote", ["big", "remote"], ["big"])


@pytest.mark.parametrize(
    "code", [ErrorCode.INVALID_REQUEST, ErrorCode.UNSUPPORTED, ErrorCode.EXPIRED]
)
def test_request_errors_do_not_fall_back(code: ErrorCode) -> None:
    assert next_route(_completion(CASCADE, error=code), TIERED) is None


# Contexts: "small" and "mid" 2048, "big" 8192, "narrow" 1024, "wide" 32768.
CONTEXTS = Catalog(
    default="small",
    models=[
        ModelSpec(name="small", source="/m/s", tier=1, fallback=["narrow", "wide"]),
        ModelSpec(name="mid", source="/m/m", tier=2),
        ModelSpec(name="big", source="/m/b", tier=3, max_model_len=8192),
        ModelSpec(name="narrow", source="/m/n", tier=1, max_model_len=1024),
        ModelSpec(name="wide", source="/m/w", tier=1, max_model_len=32768),
    ],
)


def test_a_prompt_too_large_moves_on_to_the_next_larger_context() -> None:
    """Past the models whose context is no larger than the one that refused: they would
    refuse too."""
    ladder = Route(requested=AUTO, chain=["small", "mid", "big", "narrow", "wide"], cascade=True)
    to_big = next_route(_completion(ladder, error=ErrorCode.PROMPT_TOO_LARGE), CONTEXTS)
    assert to_big is not None
    assert to_big.current == "big"
    assert to_big.chain == ["small", "big", "narrow", "wide"]
    assert to_big.fell_back and not to_big.escalated
    to_wide = next_route(_completion(to_big, error=ErrorCode.PROMPT_TOO_LARGE), CONTEXTS)
    assert to_wide is not None
    assert to_wide.current == "wide"
    assert to_wide.tried == ["small", "big"]
    assert next_route(_completion(to_wide, error=ErrorCode.PROMPT_TOO_LARGE), CONTEXTS) is None


def test_a_prompt_too_large_moves_along_an_explicit_models_fallbacks() -> None:
    explicit = Route(requested="small", chain=["small", "narrow", "wide"])
    route = next_route(_completion(explicit, error=ErrorCode.PROMPT_TOO_LARGE), CONTEXTS)
    assert route is not None
    assert route.current == "wide"
    no_larger = Route(requested="small", chain=["small", "mid", "narrow"])
    assert next_route(_completion(no_larger, error=ErrorCode.PROMPT_TOO_LARGE), CONTEXTS) is None


def test_a_prompt_too_large_after_an_escalation_needs_a_higher_tier_too() -> None:
    easy = Route(requested=AUTO, chain=["small", "mid", "wide", "big"], cascade=True)
    to_mid = next_route(_completion(easy, mean_logprob=-3.0), CONTEXTS)
    assert to_mid is not None
    # "wide" has the larger context, but the tier of the unsure "small": "big" it is.
    to_big = next_route(_completion(to_mid, error=ErrorCode.PROMPT_TOO_LARGE), CONTEXTS)
    assert to_big is not None
    assert to_big.current == "big"
    assert to_big.chain == ["small", "mid", "big"]
    assert to_big.escalated and to_big.fell_back
    medium = Route(requested=AUTO, chain=["mid", "big", "wide"], cascade=True)
    big = next_route(_completion(medium, mean_logprob=-3.0), CONTEXTS)
    assert big is not None
    assert next_route(_completion(big, error=ErrorCode.PROMPT_TOO_LARGE), CONTEXTS) is None


def test_a_prompt_too_large_on_a_model_gone_from_the_catalog_ends_the_route() -> None:
    """Its context, which the next model must pass, is unknown."""
    known = Route(requested=AUTO, chain=["small", "wide"], cascade=True)
    assert next_route(_completion(known, error=ErrorCode.PROMPT_TOO_LARGE), CONTEXTS) is not None
    gone = Route(requested=AUTO, chain=["retired", "wide"], cascade=True)
    assert next_route(_completion(gone, error=ErrorCode.PROMPT_TOO_LARGE), CONTEXTS) is None


def test_failure_at_the_end_of_the_chain_is_the_answer() -> None:
    route = Route(requested="small-b", chain=["small-b"])
    assert next_route(_completion(route, error=ErrorCode.ENGINE_ERROR), TIERED) is None


def test_unsure_answer_escalates_to_the_next_tier() -> None:
    route = next_route(_completion(CASCADE, mean_logprob=-2.5), TIERED)
    assert route is not None
    assert route.current == "mid"
    assert route.escalated
    assert not route.fell_back
    assert route.cascade


def test_the_cascade_climbs_tier_by_tier_and_stops_at_the_top() -> None:
    to_mid = next_route(_completion(CASCADE, mean_logprob=-3.0), TIERED)
    assert to_mid is not None
    to_big = next_route(_completion(to_mid, mean_logprob=-3.0), TIERED)
    assert to_big is not None
    assert to_big.current == "big"
    assert to_big.tried == ["small", "mid"]
    # "small-b" is next in the chain, but a lower tier: the top's answer stands.
    assert next_route(_completion(to_big, mean_logprob=-3.0), TIERED) is None


def test_confident_answer_is_the_answer() -> None:
    assert next_route(_completion(CASCADE, mean_logprob=-0.2), TIERED) is None
    at_threshold = TIERED.routing.escalate_below
    assert next_route(_completion(CASCADE, mean_logprob=at_threshold), TIERED) is None


def test_no_escalation_without_a_confidence_signal() -> None:
    assert next_route(_completion(CASCADE, mean_logprob=None), TIERED) is None


def test_no_escalation_when_the_route_does_not_cascade() -> None:
    explicit = Route(requested="small", chain=["small", "mid"])
    assert next_route(_completion(explicit, mean_logprob=-5.0), TIERED) is None


def test_no_escalation_to_a_model_of_the_same_tier() -> None:
    sideways = Route(requested=AUTO, chain=["small", "small-b"], cascade=True)
    assert next_route(_completion(sideways, mean_logprob=-5.0), TIERED) is None


def test_the_threshold_comes_from_the_catalog() -> None:
    strict = TIERED.model_copy(update={"routing": Routing(escalate_below=-0.1)})
    assert next_route(_completion(CASCADE, mean_logprob=-0.2), TIERED) is None
    escalated = next_route(_completion(CASCADE, mean_logprob=-0.2), strict)
    assert escalated is not None
    assert escalated.escalated


def test_escalation_after_a_fallback_keeps_both_marks() -> None:
    fell = next_route(_completion(CASCADE, error=ErrorCode.ENGINE_UNAVAILABLE), TIERED)
    assert fell is not None
    both = next_route(_completion(fell, mean_logprob=-4.0), TIERED)
    assert both is not None
    assert both.current == "big"
    assert both.fell_back
    assert both.escalated


def test_a_failure_after_an_escalation_skips_models_no_better_than_the_unsure_one() -> None:
    medium = Route(requested=AUTO, chain=["mid", "big", "small", "remote"], cascade=True)
    to_big = next_route(_completion(medium, mean_logprob=-3.0), TIERED)
    assert to_big is not None
    to_remote = next_route(_completion(to_big, error=ErrorCode.ENGINE_ERROR), TIERED)
    assert to_remote is not None
    assert to_remote.current == "remote"  # not "small", of a tier below the unsure "mid"
    assert to_remote.tried == ["mid", "big"]
    assert to_remote.chain == ["mid", "big", "remote"]
    assert to_remote.escalated and to_remote.fell_back
    no_higher = Route(requested=AUTO, chain=["mid", "big", "small", "small-b"], cascade=True)
    big = next_route(_completion(no_higher, mean_logprob=-3.0), TIERED)
    assert big is not None
    assert next_route(_completion(big, error=ErrorCode.ENGINE_ERROR), TIERED) is None


def test_a_next_model_gone_from_the_catalog_ends_the_route() -> None:
    gone = Route(requested=AUTO, chain=["small", "retired"], cascade=True)
    assert next_route(_completion(gone, mean_logprob=-5.0), TIERED) is None
    assert next_route(_completion(gone, error=ErrorCode.ENGINE_ERROR), TIERED) is None
