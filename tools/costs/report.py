"""The rollups grouped as a person asks: sums per chosen dimensions, a table, JSON."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from streams.rollups import Row

DIMENSIONS = ("day", "tenant", "model", "lane", "cache")
"""What rows can be grouped by; "day" is the UTC day of the hour."""


@dataclass(frozen=True)
class Line:
    """The sums of one group of rollup rows."""

    key: dict[str, str] = field(default_factory=dict)
    count: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    cost_usd: float = 0.0
    saved_usd: float = 0.0

    def plus(self, row: Row | Line) -> Line:
        """These sums and the row's (or another line's)."""
        return replace(
            self,
            count=self.count + row.count,
            prompt_tokens=self.prompt_tokens + row.prompt_tokens,
            completion_tokens=self.completion_tokens + row.completion_tokens,
            cost_usd=self.cost_usd + row.cost_usd,
            saved_usd=self.saved_usd + row.saved_usd,
        )


def hours(first: date, last: date) -> list[str]:
    """Every UTC hour of these days, as rollups name them."""
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    count = ((last - first).days + 1) * 24
    return [(start + timedelta(hours=h)).strftime("%Y-%m-%dT%H") for h in range(count)]


def _value(row: Row, dimension: str) -> str:
    return row.hour[:10] if dimension == "day" else str(getattr(row, dimension))


def group(rows: Iterable[Row], by: Sequence[str]) -> list[Line]:
    """Sums per distinct value of the `by` dimensions, in their order."""
    lines: dict[tuple[str, ...], Line] = {}
    for row in rows:
        values = tuple(_value(row, d) for d in by)
        line = lines.get(values) or Line(dict(zip(by, values, strict=True)))
        lines[values] = line.plus(row)
    return [lines[k] for k in sorted(lines)]


def total(lines: Iterable[Line]) -> Line:
    """All lines summed."""
    out = Line()
    for line in lines:
        out = out.plus(line)
    return out


def table(lines: Sequence[Line], by: Sequence[str]) -> str:
    """Aligned columns, with a total line."""
    head = [*by, "count", "tokens in", "tokens out", "cost USD", "saved USD"]

    def cells(label: list[str], line: Line) -> list[str]:
        return [
            *label,
            f"{line.count:,.0f}",
            f"{line.prompt_tokens:,.0f}",
            f"{line.completion_tokens:,.0f}",
            _usd(line.cost_usd),
            _usd(line.saved_usd),
        ]

    body = [cells([line.key[d] for d in by], line) for line in lines]
    body.append(cells(["total", *[""] * (len(by) - 1)] if by else [], total(lines)))
    rule, head_line, *rows = aligned(head, body, right=set(range(len(by), len(head))))
    return "\n".join([head_line, rule, *rows[:-1], rule, rows[-1]])


def aligned(head: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """A rule of dashes, then the head and the rows in columns as wide as their widest cell
    (the `right` ones right-aligned)."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return ["  ".join("-" * w for w in widths), fmt(head), *map(fmt, rows)]


def as_json(lines: Sequence[Line], first: date, last: date) -> dict[str, Any]:
    """The lines and their total, with the days they cover."""
    return {
        "from": first.isoformat(),
        "to": last.isoformat(),
        "lines": [asdict(line) for line in lines],
        "total": {k: v for k, v in asdict(total(lines)).items() if k != "key"},
    }


def _usd(amount: float) -> str:
    """Cents for real money, six significant digits below a cent."""
    return f"{amount:,.2f}" if amount >= 0.01 or amount == 0 else f"{amount:.6g}"
