"""`llmq costs --plot`: spend over time per tenant, and what caches and coalescing saved."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from streams.rollups import Row

SAVED_BY = ("exact", "semantic", "coalesced")


def plot(rows: Sequence[Row], hours: Sequence[str], out: Path) -> Path:
    """A PNG: spend per tenant per hour (or per day over more than three days), stacked;
    beside it, USD saved per tenant by kind of answer served without a generation."""
    daily = len(hours) > 72
    slots = sorted({h[:10] for h in hours}) if daily else list(hours)
    tenants = sorted({r.tenant for r in rows})
    spend: dict[str, dict[str, float]] = {t: defaultdict(float) for t in tenants}
    saved: dict[str, dict[str, float]] = {t: defaultdict(float) for t in tenants}
    for row in rows:
        spend[row.tenant][row.hour[:10] if daily else row.hour] += row.cost_usd
        saved[row.tenant][row.cache] += row.saved_usd
    figure = Figure(figsize=(13, 5), layout="constrained")
    FigureCanvasAgg(figure)
    over_time, by_kind = figure.subplots(1, 2, width_ratios=(2, 1))
    x = range(len(slots))
    if tenants:
        # Each slot drawn from its start to the next: the last one ends one step on (with
        # step "post" and no point after it, the last slot, today's or this hour's, was not
        # drawn at all).
        heights = [[spend[t][s] for s in [*slots, slots[-1]]] for t in tenants]
        over_time.stackplot(range(len(slots) + 1), heights, labels=tenants, step="post")
        over_time.set_xlim(0, len(slots))
        over_time.legend(loc="upper left", fontsize="small")
    step = max(1, len(slots) // 12)
    over_time.set_xticks(list(x)[::step], [s.replace("T", " ") for s in slots][::step])
    over_time.tick_params(axis="x", labelrotation=30, labelsize="small")
    over_time.set_ylabel(f"USD spent per {'day' if daily else 'hour'}")
    over_time.set_title("Spend per tenant")
    width = 0.8 / len(SAVED_BY)
    for i, kind in enumerate(SAVED_BY):
        by_kind.bar(
            [t + i * width for t in range(len(tenants))],
            [saved[t][kind] for t in tenants],
            width,
            label=kind,
        )
    by_kind.set_xticks([t + width for t in range(len(tenants))], tenants)
    by_kind.set_ylabel("USD saved")
    by_kind.set_title("Saved by caches and coalescing")
    by_kind.legend(fontsize="small")
    figure.suptitle(f"llmq costs, {hours[0][:10]} to {hours[-1][:10]} (UTC)")
    figure.savefig(out, dpi=110)
    return out
