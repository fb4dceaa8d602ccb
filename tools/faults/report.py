"""What a fault run leaves behind: results.json, the report (RELIABILITY.md by default) and
the table in the README's reliability section."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from tools.bench.runner import replace_section
from tools.faults.outcome import Outcome
from tools.files import write_whole

BEGIN = "<!-- faults:begin -->"
END = "<!-- faults:end -->"
README_HEADING = "## Reliability"
"""Added above the markers when a README has none yet."""
DEFINITIONS = """\
- **sent**: requests the load generator published to `llmq.requests` (distinct prompts,
  16 tokens, temperature 0, each with its own correlation id and the scenario's own reply
  topic), plus the poison records that carry a correlation id.
- **accepted**: sends the broker acknowledged (`acks=all`, an idempotent producer that
  retries for 90 s). From then on llmq owes the request exactly one reply; a send never
  acknowledged is not owed one and is not counted as lost.
- **replies**: accepted requests with at least one reply record on their reply topic, read
  raw (every record) by a consumer of its own, within 240 s after the load stops.
- **lost**: accepted requests without any reply.
- **duplicates**: reply records beyond the first for a request (delivery is at least once).
  The Client and the result store keep the first, so an app using them sees none.
- **conflicting**: duplicates whose status, error code or answer text differ from the first
  reply: the kind an app reading the topic raw could not simply ignore.
- **generations**: engine generations for the scenario's accepted requests (their events on
  `llmq.metering`): fewer than replies where copies were coalesced or answered from the
  cache; a request generated twice (redelivered work) is named in the notes.
- **errors**: error codes of the first replies. Poison's two and crash-loop's one are
  caused on purpose; any other breaks a guarantee (the faults promise answers), but for
  `internal_error` in kafka-stop (a record whose sends ran out of time while Kafka was away)
  and `engine_timeout` in autoscale-down (a slow CPU), which are timing findings.
- **recovery s**: from the injection of the fault to the first successful reply to a request
  sent after it; it includes restarting what was killed and that request's own latency.
- **findings**: what went wrong besides lost and conflicting replies, of two kinds.
  *broken*: a guarantee broke: a process that died or restarted unasked, the scenario
  itself failing, error replies it does not expect, a poison record not dead-lettered with
  its reason and error reply, the exact cache not answering a repeat after Redis returned,
  a stream processor or worker not running at its SIGTERM or not leaving by itself (a
  worker's log must hold its drain's "worker <id> stopped"), crash-loop's number of kills,
  reply or dead letter, copies of one request answered differently, a batch not completed,
  nothing answered while one broker of three was down, a second stream processor taking no
  share, a process's RSS growing more than 25% under overload. *timing*: depends on the
  machine's timing, shown but not failed: a wait before the fault that ran out (the row
  does not test what its scenario claims), a generation done before the kill meant to find
  it, work of earlier scenarios left unanswered, an RSS not read, and the autoscaler
  adding its worker late, not taking it away, doing so after the burst, or starting it
  twice (flapping).
- **failed**: a lost request, a conflicting duplicate, no tally, or a broken finding; the
  row's fault says **failed**, and `llmq faults` exits 1.
"""


def write_json(outcomes: Sequence[Outcome], meta: Mapping[str, object], path: Path) -> None:
    """Everything measured, atomically (a failed run keeps what it measured so far)."""
    doc = {"meta": dict(meta), "outcomes": [asdict(o) for o in outcomes]}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps(doc, indent=1, ensure_ascii=False, default=str))


def table(outcomes: Sequence[Outcome], notes: bool = True) -> str:
    """The results table; with `notes`, a column of what happened and what was found."""
    head = "| fault | sent | accepted | replies | lost | duplicates | conflicting | generations "
    head += "| errors | recovery s |" + (" notes |" if notes else "")
    lines = [head, "|---|" + "---:|" * 9 + ("---|" if notes else "")]
    for o in outcomes:
        t = o.tally
        cells = (
            ["-"] * 9
            if t is None
            else [
                str(t.sent),
                str(t.accepted),
                str(t.replies),
                str(t.lost),
                str(t.duplicates),
                str(t.conflicting),
                str(t.generations),
                ", ".join(f"{code} {n}" for code, n in t.errors.items()) or "0",
                "-" if t.recovery_s is None else f"{t.recovery_s:.1f}",
            ]
        )
        row = [f"**failed**: {o.fault}" if o.failed else o.fault, *cells]
        if notes:
            again = [f"{t.regenerated} generated twice"] if t and t.regenerated else []
            row.append(
                "; ".join([*o.notes, *again, *(f"**{f.kind}**: {f.text}" for f in o.findings)])
            )
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def report(outcomes: Sequence[Outcome], meta: Mapping[str, object]) -> str:
    """The whole report file: how it was measured, the table, the definitions."""
    return (
        "# Reliability: fault tests\n\n"
        "Written by `llmq faults` (see `llmq faults --help`); each run rewrites this file.\n"
        "Every scenario runs a real workload through a local stack (Kafka, Redis, the stream\n"
        "processor, a vLLM worker), injects its fault while the load runs, heals the stack\n"
        "and counts the requests it sent against the replies that came back.\n\n"
        f"{_measured(meta)}\n\n{table(outcomes)}\n## Definitions\n\n{DEFINITIONS}"
    )


def section(outcomes: Sequence[Outcome], meta: Mapping[str, object], report_name: str) -> str:
    """The README's part: the table without notes, the findings, a pointer to the report."""
    findings = [f"- {o.scenario} ({f.kind}): {f.text}" for o in outcomes for f in o.findings]
    parts = [
        f"{_measured(meta)} Definitions and notes: [{report_name}]({report_name}).",
        table(outcomes, notes=False).rstrip(),
    ]
    if findings:
        parts.append("Findings:\n\n" + "\n".join(findings))
    return "\n\n".join(parts) + "\n"


def update_readme(readme: Path, text: str) -> None:
    """Replace the README's generated reliability section (added at the end if absent)."""
    old = readme.read_text(encoding="utf-8")
    if BEGIN not in old and END not in old:
        old = f"{old.rstrip()}\n\n{README_HEADING}\n"
    write_whole(readme, replace_section(old, text, BEGIN, END))


def _measured(meta: Mapping[str, object]) -> str:
    return (
        f"Measured {meta.get('date', '(date unknown)')} on {meta.get('machine', '(unknown)')} "
        f"with `{meta.get('command', 'llmq faults')}`."
    )


def _cell(text: str) -> str:
    """Table-safe: no pipes or line breaks inside a cell."""
    return text.replace("|", "\\|").replace("\n", " ")
