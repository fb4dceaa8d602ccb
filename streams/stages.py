"""The three stages on one outbox and one coalescing table: how the faust app wires them, and
how the unit tests do, with one function."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.catalog import Catalog
from schemas.retry import RetryPolicy
from streams.admission import Admission, Ahead, Compress, Gate
from streams.coalesce import Coalescer
from streams.complete import Complete, Served
from streams.dedupe import Dedupe, Similar
from streams.outbox import Outbox


@dataclass(frozen=True)
class Stages:
    """llmq.requests -> admission, llmq.requests.keyed -> dedupe, llmq.completions -> complete."""

    admission: Admission
    dedupe: Dedupe
    complete: Complete


def build_stages(
    catalog: Catalog,
    outbox: Outbox,
    coalescer: Coalescer,
    retry: RetryPolicy,
    *,
    similar: Similar | None = None,
    gate: Gate | None = None,
    compress: Compress | None = None,
    ahead: Ahead | None = None,
    served: Served | None = None,
) -> Stages:
    """Dedupe and complete share the coalescing table and the semantic cache; every stage
    publishes through the same outbox. Without `served`, complete takes every model for
    served."""
    return Stages(
        admission=Admission(catalog, outbox, gate, compress, ahead),
        dedupe=Dedupe(catalog, outbox, coalescer, similar),
        complete=Complete(catalog, outbox, coalescer, similar, retry, served=served),
    )
