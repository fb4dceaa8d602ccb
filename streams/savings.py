"""Metering of the answers served without a generation: each cached or coalesced answer is a
MeteringEvent that cost nothing and saved what its generation cost."""

from __future__ import annotations

from schemas.catalog import Catalog
from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.names import METERING
from schemas.result import CacheStatus, InferenceResult
from streams.outbox import Send


class Savings:
    """Publishes one saved-cost event per answer from a cache or a coalesced generation."""

    def __init__(self, catalog: Catalog, send: Send) -> None:
        self._catalog = catalog
        self._send = send

    async def answered(self, result: InferenceResult) -> None:
        """Meter the answer if no generation was made for it; returns once Kafka has it."""
        event = saved(result, self._catalog)
        if event is not None:
            await self._send(METERING, event.tenant.encode(), event.model_dump_json().encode())


def saved(result: InferenceResult, catalog: Catalog) -> MeteringEvent | None:
    """The event for an answer served without a generation: what the generation behind it
    cost at its model's prices (as the catalog prices it now); None for any other result.
    It is metered once per request (its event_id), in the hour its request was made: an
    answer made anew has a time of its own, maybe in the next hour, whose rollup's set of
    counted events would not know it."""
    response = result.response
    if (
        result.cache is CacheStatus.NONE
        or result.tenant is None
        or result.correlation_id is None
        or response is None
    ):
        return None
    model = result.model_used or response.model
    spec = catalog.get(model)
    usage = response.usage
    cost = (
        0.0
        if spec is None or usage is None
        else spec.cost(usage.prompt_tokens, usage.completion_tokens)
    )
    return MeteringEvent(
        correlation_id=result.correlation_id,
        tenant=result.tenant,
        model=model,
        lane=result.lane or Lane.STANDARD,
        fingerprint="",
        prompt_tokens=0,
        completion_tokens=0,
        cost_usd=0.0,
        queue_ms=0.0,
        ttft_ms=None,
        engine_ms=0.0,
        worker="",
        cache=result.cache,
        saved_usd=cost,
        experiment=None if result.route is None else result.route.experiment,
        arm=None if result.route is None else result.route.arm,
        at=result.asked_at,
    )
