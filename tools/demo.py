"""`llmq demo`: real ShareGPT prompts through the whole local pipeline, and what happened."""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer

from llmq.client import Client, tail
from schemas.metering import MeteringEvent
from schemas.names import METERING
from schemas.result import CacheStatus, InferenceResult
from schemas.settings import ServiceSettings
from tools import arguments, sharegpt
from tools.progress import Progress
from tools.stack.settings import LocalSettings
from tools.stack.stack import LocalStack

REPEATS = 16
"""How many prompts `llmq demo` sends a second time unless told (at most --prompts)."""


@dataclass(frozen=True)
class Pass:
    """One batch of requests sent at once, and what came back."""

    name: str
    results: list[InferenceResult]
    wall_s: float

    def row(self) -> str:
        ok = [r for r in self.results if r.status == "ok"]
        hits = sum(r.cache is not CacheStatus.NONE for r in self.results)
        out_tokens = sum(r.response.usage.completion_tokens for r in ok if r.response)
        fresh_tokens = sum(
            r.response.usage.completion_tokens
            for r in ok
            if r.response and r.cache is CacheStatus.NONE
        )
        lat = sorted(r.timings.total_ms or 0.0 for r in self.results)
        p50 = statistics.median(lat) if lat else 0.0
        p90 = lat[int(0.9 * (len(lat) - 1))] if lat else 0.0
        return (
            f"{self.name:<10}{len(self.results):>9}{len(ok):>9}{len(self.results) - len(ok):>8}"
            f"{hits:>7}{self.wall_s:>8.1f}{len(self.results) / self.wall_s:>8.1f}"
            f"{fresh_tokens / self.wall_s:>11.0f}{out_tokens:>9}{p50:>9.0f}{p90:>9.0f}"
        )


HEADER = (
    f"{'pass':<10}{'requests':>9}{'answers':>9}{'errors':>8}{'cached':>7}{'wall s':>8}"
    f"{'req/s':>8}{'gen tok/s':>11}{'out tok':>9}{'p50 ms':>9}{'p90 ms':>9}"
)


def register(sub: Any) -> None:
    """Add `demo` to the `llmq` subcommands (argparse's private subparsers type)."""
    demo = sub.add_parser("demo", help="ShareGPT prompts through the local stack, with a report")
    demo.add_argument("--prompts", type=arguments.positive_int, default=48)
    demo.add_argument(
        "--repeats",
        type=arguments.count,
        help=f"prompts sent a second time (default: {REPEATS}, or --prompts where fewer)",
    )
    demo.add_argument("--max-tokens", type=arguments.positive_int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """`llmq demo`: exit 0 when every request ended well."""
    repeats = min(REPEATS, args.prompts) if args.repeats is None else args.repeats
    if repeats > args.prompts:
        raise ValueError(f"--repeats {repeats}: at most --prompts ({args.prompts})")
    ok = run(prompts=args.prompts, repeats=repeats, max_tokens=args.max_tokens, seed=args.seed)
    return 0 if ok else 1


def run(
    *,
    prompts: int = 48,
    repeats: int = REPEATS,
    max_tokens: int = 64,
    seed: int = 0,
    timeout_s: float = 600.0,
    say: Callable[[str], None] = print,
) -> bool:
    """Bring the stack up, send the workload, print the report; True if every request ended well."""
    local = LocalSettings()
    LocalStack(local).up(say)
    settings = ServiceSettings(kafka_bootstrap=local.kafka_bootstrap, redis_url=local.redis_url)
    sample = sharegpt.sample(prompts, local.cache_dir, seed=seed, max_tokens=max_tokens)
    # The cache is per tenant and outlives a run: a tenant of its own makes the first
    # pass of every run reach the engine, so only the repeats are answered by the cache.
    tenant = f"demo-{uuid.uuid4().hex[:8]}"
    metering = tail(settings.kafka_bootstrap, METERING, settings.kafka_security())
    with Client(settings) as client:
        say(
            f"\nsending {len(sample)} ShareGPT prompts at once as tenant {tenant} "
            f"(max_tokens <= {max_tokens}, temperature 0) ..."
        )
        fresh = _send(
            client, tenant, "fresh", [(p.text, p.reply_tokens) for p in sample], timeout_s
        )
        say(f"sending {repeats} of them again: the response cache should answer ...")
        again = _send(
            client,
            tenant,
            "repeated",
            [(p.text, p.reply_tokens) for p in sample[:repeats]],
            timeout_s,
        )
    generated = {
        r.correlation_id
        for r in fresh.results + again.results
        if r.correlation_id and r.status == "ok" and r.cache is CacheStatus.NONE
    }
    events = _metering(metering, generated)
    _report(fresh, again, events, sample, say)
    return all(r.status == "ok" for r in fresh.results + again.results)


def _send(
    client: Client, tenant: str, name: str, prompts: list[tuple[str, int]], timeout_s: float
) -> Pass:
    start = time.monotonic()
    ids = [client.submit(text, tenant=tenant, max_tokens=n, temperature=0.0) for text, n in prompts]
    results = []
    for cid in Progress(ids, desc=name, unit="req"):
        left = max(1.0, timeout_s - (time.monotonic() - start))
        results.append(client.result(cid, timeout=left))
    return Pass(name, results, time.monotonic() - start)


def _metering(
    consumer: KafkaConsumer, expected: set[str], wait_s: float = 15.0
) -> list[MeteringEvent]:
    """The metering events of this run's generations (they trail the results slightly)."""
    events: list[MeteringEvent] = []
    deadline = time.monotonic() + wait_s
    try:
        while len(events) < len(expected) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    event = MeteringEvent.model_validate_json(record.value)
                    if event.generated and event.correlation_id in expected:
                        events.append(event)
    finally:
        consumer.close()
    return events


def _report(
    fresh: Pass,
    again: Pass,
    events: list[MeteringEvent],
    sample: list[sharegpt.Prompt],
    say: Callable[[str], None],
) -> None:
    say("\nsome answers:")
    for prompt, result in list(zip(sample, fresh.results, strict=True))[:3]:
        question = " ".join(prompt.text.split())[:90]
        answer = " ".join((result.text or str(result.error)).split())[:160]
        say(f"  Q: {question}\n  A: {answer}\n")
    say(HEADER)
    say(fresh.row())
    say(again.row())
    prompt_tokens = sum(e.prompt_tokens for e in events)
    completion_tokens = sum(e.completion_tokens for e in events)
    cost = sum(e.cost_usd for e in events)
    hits = [r for r in fresh.results + again.results if r.cache is not CacheStatus.NONE]
    saved = sum(r.response.usage.completion_tokens for r in hits if r.response)
    say(
        f"\nmetering: {len(events)} generations, {prompt_tokens} prompt + {completion_tokens} "
        f"completion tokens, ${cost:.6f}"
    )
    say(f"cache: {len(hits)} answers without an engine call, {saved} completion tokens saved")
