"""Internal records between the stream processor and the workers."""

from __future__ import annotations

import re
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from schemas.metering import MeteringEvent
from schemas.request import ChatBody, ChatMessage, InferenceRequest
from schemas.result import ChatCompletion, ErrorInfo, Timings
from schemas.route import Route

PROMPT_NOT_CARRIED = "(not carried back: the request was too large for its outcome's record)"
"""The one message of a work item carried back without its prompt (WorkItem.promptless)."""
LEGACY_SPECULATION = "legacy"
"""The speculation of a record marked only `speculative` (the version before ids)."""


class UnsureAnswer(BaseModel):
    """An answer judged too unsure, carried by the work of its escalation (WorkItem.unsure):
    the answer should the escalation end without one of its own. What it cost is in the
    work's spent_usd, and its hold was settled with it when it came. Keeps the fields it
    does not know, as WorkItem does."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str
    """The catalog model that answered (the result's model_used)."""
    response: ChatCompletion
    mean_logprob: float | None = None


class CascadeBody(ChatBody):
    """A request's body asking for logprobs that llmq wants, not its app: the cascade's
    confidence signal (WorkItem.may_escalate), which the worker asks its engine for. An engine
    whose server refuses them leaves them out: the answer, without a mean logprob, stands."""

    @classmethod
    def of(cls, body: ChatBody) -> CascadeBody:
        """`body`, asking for logprobs (its values are valid already)."""
        values = {**dict(body), "logprobs": True}
        return cls.model_construct(body.model_fields_set | {"logprobs"}, **values)


PROGRESS = re.compile(r"llmq-progress/1 read=(\d+) running=(\d+)")
"""The metadata of a worker's offset commit of a work topic's partition (`progress`)."""


def progress(read: int, running: int) -> str:
    """What a worker writes beside its offset commit, for the autoscaler: the partition's
    first record whose generation has not begun (every one before it runs, or is done) and
    how many of its records run. The offset stops at the oldest record unfinished, so
    without it every record done behind one long generation read as waiting work."""
    return f"llmq-progress/1 read={read} running={running}"


def read_progress(metadata: str | None) -> tuple[int, int] | None:
    """The read position and the records running of `progress`; None for other metadata
    (a worker before it, a start committed where nothing was taken)."""
    found = PROGRESS.fullmatch(metadata or "")
    return None if found is None else (int(found[1]), int(found[2]))


class WorkItem(BaseModel):
    """An admitted request routed to a model: llmq.work.<model>.<lane>, keyed by fingerprint.

    Keeps the fields it does not know and writes them back (extra="allow"): a worker echoes
    its work in its Completion, so one older than the stream processor that wrote it (its
    upgrade rolled back, or run out of order) hands that one's state back whole."""

    model_config = ConfigDict(extra="allow", frozen=True)

    request: InferenceRequest
    """The request as the engine should see it (after any prompt compression)."""
    model: str
    """The model resolved by the stream processor; workers serve only their own."""
    fingerprint: str
    """Identity for caching and coalescing; computed with the model the app asked for."""
    route: Route
    admitted_at: float = Field(default_factory=time.time)
    uncompressed: list[ChatMessage] | None = None
    """The app's messages, when prompt compression changed them (for tokens-saved metering)."""
    attempt: int = Field(default=1, ge=1)
    """Which attempt at a generation this is: retries of a failed one count up from 1, and
    start at 1 again on another model (a fallback, an escalation)."""
    not_before: float | None = None
    """A retry's backoff: the worker starts it no earlier than this Unix time."""
    first_failed_at: float | None = None
    """Where the retry budget counts from (streams/retries.py): when the stream processor read
    the first failed attempt, moved on by the time each retry since waited for a worker (its
    Timings.queue_ms), so that neither admission nor the hours a batch-lane item queues, first
    or between attempts, are spent from it. None until then, after a fallback (another model's
    retries have their own), and in a record of a writer before it. Not in the fingerprint."""
    sent_at: float | None = None
    """When the stream processor last sent it to a work topic (Outbox.work): a retry, a
    fallback, an escalation or a promotion is sent again, while admitted_at stays the
    request's. None in a record of a writer before it. Not in the fingerprint."""
    spent_usd: float = Field(default=0.0, ge=0)
    """What the request's earlier generations cost (an escalation, a fallback, a retry of a
    generation cut short)."""
    shown: bool = False
    """An earlier generation of it streamed pieces (Completion.streamed), which its client
    may have shown: only a generation that would say the same may answer it (a retry of a
    deterministic request on the same model), however its later attempts fail."""
    may_escalate: bool | None = None
    """Whether its answer may escalate (streams.router.may_escalate): only then does the worker
    ask the engine for logprobs the app did not ask for (CascadeBody). Set where the stream
    processor hands it to another model; None where it has not (a cascading route starts
    below its top tier), and in a record of a writer before it: any cascading route with a
    model left. Not in the fingerprint."""
    unsure: UnsureAnswer | None = None
    """Set on an escalation: the unsure answer it replaces, which answers the request (and
    its copies) where the escalation ends expired or fails for good (streams/complete.py).
    None in a record of a writer before it. Not in the fingerprint."""
    speculation: str | None = None
    """Set on a speculative send, a fresh id each time: sent to the engines while the
    semantic cache is still looked up, so that a miss does not wait for the lookup's
    embedding. On a hit the stream processor answers from the cache and cancels this send
    by its id (its outcome is SUPERSEDED; a later send of the request, after the stream
    processor restarted, is not cancelled with it); a streamed one is claimed first, by
    whichever side answers first (schemas.names.claim_key)."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def speculative(self) -> bool:
        """Sent before the semantic cache's lookup ended (`speculation`). Written to the
        record too, for workers of the version before `speculation` during an upgrade."""
        return self.speculation is not None

    @property
    def queued_since(self) -> float:
        """When this send began to wait for a worker (its queue time is from here): its
        send (admission, in a record without sent_at), or its retry's backoff's end."""
        since = self.admitted_at if self.sent_at is None else self.sent_at
        return since if self.not_before is None else max(since, self.not_before)

    def promptless(self) -> WorkItem:
        """This work less what makes a request large (its messages, tools, schema and token
        biases): what a failure carries back where the whole would not fit in a record. Not
        to be generated from: such a failure is final."""
        body = self.request.body.model_copy(
            update={
                "messages": [ChatMessage(role="user", content=PROMPT_NOT_CARRIED)],
                "tools": None,
                "tool_choice": None,
                "parallel_tool_calls": None,
                "response_format": None,
                "logit_bias": None,
                "raw_prompt": None,
            }
        )
        request = self.request.model_copy(update={"body": body})
        return self.model_copy(update={"request": request, "uncompressed": None})

    @model_validator(mode="before")
    @classmethod
    def _speculative_before(cls, data: Any) -> Any:
        """A record of the version before `speculation`, marked only `speculative`: a send
        without an id, which the cache's cancellations of that version (no id) stop. The
        `speculative` read is dropped: kept as a field it does not know, it would be
        written twice."""
        if not isinstance(data, dict) or "speculative" not in data:
            return data
        read = dict(data)
        if read.pop("speculative") and not read.get("speculation"):
            read["speculation"] = LEGACY_SPECULATION
        return read


CLAIM_TTL_S = 3600
"""How long a speculative streamed request's claim is kept: past its generation (a model's
timeout_s) and a worker's restart (a redelivered record finds the claim its first try set)."""
CLAIM_CACHE = "cache"
CLAIM_ENGINE = "engine"
"""Who claimed a speculative streamed request: the stream processor's semantic cache, or an
engine about to send its first tokens."""


MAX_COMPLETION_BYTES = 900_000
"""The largest completion record a worker sends: its result, which is smaller (no prompt),
then fits what the stream processor's producer sends (1 MiB) and Kafka's default 1 MiB."""


class Completion(BaseModel):
    """A worker's outcome for one WorkItem: llmq.completions, keyed by fingerprint."""

    model_config = ConfigDict(frozen=True)

    work: WorkItem
    response: ChatCompletion | None = None
    error: ErrorInfo | None = None
    timings: Timings
    engine_retried: bool = False
    """The engine already retried this failure itself (an OpenAI-compatible server's, before
    the first token), or knows no retry can mend it (a remote engine's 401, 404 or wrong
    content type), so the stream processor does not retry the generation on the same model;
    it still falls back to the next model of the chain."""
    mean_logprob: float | None = None
    """Mean log-probability of the answer's tokens: the cascade's confidence signal."""
    streamed: bool = False
    """This generation sent pieces on llmq.tokens (stream=true): its client may have shown
    them, so a failure is generated again only where the answer would be the same (a
    deterministic request, the same model); otherwise it is the answer."""
    worker: str
    finished_at: float = Field(default_factory=time.time)
    metering: MeteringEvent | None = None
    """This generation's metering event, also on llmq.metering: the stream processor settles
    the tenant's budget hold with it before it answers, so a hold is never released before
    what it covered is counted as spent."""
    model_digest: str | None = None
    """The catalog settings of the model as its worker was started with them
    (ModelSpec.digest): the stream processor caches the answer only if its own catalog has
    the same, so an old worker's answer during a rollout of new weights is not cached under
    the new ones. None: a worker older than the field, taken as current."""

    @property
    def spent_usd(self) -> float:
        """What the request's generations cost so far, this one included."""
        return self.work.spent_usd + (0.0 if self.metering is None else self.metering.cost_usd)
