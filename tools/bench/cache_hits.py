"""How fast one stream processor answers from the exact cache, through Kafka, end to end.

Against a running stack (`llmq local up`): warms the cache with a few distinct questions,
then publishes N copies of them at once with fresh correlation ids and reads the replies
back from a private reply topic; then sends some one at a time, each after the last one's
reply. Prints answers per second, latency percentiles and the CPU each part of the machine
(the stack's processes, this load generator as "bench") spent per 1,000 answers of the burst.

    python -m tools.bench.cache_hits --requests 3000 --distinct 64 --one-at-a-time 200
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from llmq.chat import chat_request
from llmq.client import Client
from schemas.names import REQUESTS
from schemas.request import DEFAULT_TENANT, InferenceRequest
from schemas.settings import ServiceSettings
from tools.bench.cpu import CpuMeter
from tools.bench.pipeline_parts import quantile


def main() -> None:
    """Parse the arguments, run the burst and the one-at-a-time requests, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sent at once")
    parser.add_argument("--distinct", type=int, default=8, help="distinct cached questions")
    parser.add_argument(
        "--one-at-a-time", type=int, default=100, help="then sent one by one (0: none)"
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    settings = ServiceSettings()
    tag = uuid.uuid4().hex[:8]
    questions = [f"Name a colour ({tag}-{k})." for k in range(args.distinct)]
    with Client(settings) as client:
        warm = [client.submit(q, temperature=0.0, max_tokens=8) for q in questions]
        for cid in warm:
            client.result(cid, timeout=args.timeout)
    topic = f"bench.replies.{tag}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    replies = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
    )
    replies.poll(100)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)

    def request(name: str, question: str) -> InferenceRequest:
        return chat_request(
            question,
            tenant=DEFAULT_TENANT,
            reply_to=topic,
            correlation_id=f"{name}-{tag}",
            temperature=0,
            max_tokens=8,
        )

    try:
        built = [request(f"burst-{i}", questions[i % args.distinct]) for i in range(args.requests)]
        burst = [wire(r) for r in built]
        cpu = CpuMeter()
        start = time.time()
        for value in burst:
            producer.send(REQUESTS, value)
        producer.flush()
        raw = read(replies, args.requests, start + args.timeout)
        wall = time.time() - start
        used = cpu.spent()
        created = {r.correlation_id: r.created_at for r in built}
        results = [since_send(json.loads(r), created, start) for r in raw]
        if not results:
            raise SystemExit("no replies: is the stack up (llmq local status)?")
        print(f"{len(results)}/{args.requests} at once: {burst_line(results, wall)}")
        per_k = ", ".join(f"{name} {s * 1000 / len(results):.2f} s" for name, s in used.items())
        print(f"CPU per 1,000 answers: {per_k}")
        if args.one_at_a_time:
            app_ms, total_ms = one_at_a_time(
                lambda i: wire(request(f"one-{i}", questions[i % args.distinct])),
                args.one_at_a_time,
                lambda value: (producer.send(REQUESTS, value), producer.flush()),
                lambda: read(replies, 1, time.time() + args.timeout),
            )
            print(
                f"{len(app_ms)} one at a time: the app's send to its reading of the answer "
                f"p50 {quantile(app_ms, 0.50):.1f} / p90 {quantile(app_ms, 0.90):.1f} / "
                f"p99 {quantile(app_ms, 0.99):.1f} ms; the pipeline's own (timings.total_ms) "
                f"p50 {quantile(total_ms, 0.50):.1f} / p90 {quantile(total_ms, 0.90):.1f} ms"
            )
    finally:
        replies.close()
        producer.close()


def wire(request: InferenceRequest) -> bytes:
    """A request as the app publishes it on llmq.requests."""
    return request.model_dump_json().encode()


def since_send(result: dict[str, Any], created: dict[str, float], sent: float) -> dict[str, Any]:
    """`result` with its timings.total_ms counted from `sent`: the pipeline counts from the
    request's created_at, which the burst's requests, built before the clock, precede."""
    early_ms = max(0.0, sent - created.get(result["correlation_id"], sent)) * 1000
    timings = {**result["timings"], "total_ms": result["timings"]["total_ms"] - early_ms}
    return {**result, "timings": timings}


def read(replies: KafkaConsumer, count: int, deadline: float) -> list[bytes]:
    """Up to `count` raw replies, read until `deadline` (parsed after the clock stops)."""
    out: list[bytes] = []
    while len(out) < count and time.time() < deadline:
        for batch in replies.poll(500, max_records=count - len(out)).values():
            out.extend(record.value for record in batch)
    return out


def burst_line(results: list[dict[str, Any]], wall: float) -> str:
    """Answers a second, the pipeline's latency percentiles and what answered them."""
    latency = [float(r["timings"]["total_ms"]) for r in results]
    caches = Counter(r["cache"] for r in results)
    return (
        f"{len(results) / wall:.0f} answers/s ({wall:.2f} s); latency p50 "
        f"{quantile(latency, 0.50):.0f} ms, p99 {quantile(latency, 0.99):.0f} ms; {dict(caches)}"
    )


def one_at_a_time(
    build: Callable[[int], bytes],
    count: int,
    send: Callable[[bytes], object],
    receive: Callable[[], list[bytes]],
) -> tuple[list[float], list[float]]:
    """Send `count` requests, each once the last one's answer was read: the app's latency
    (send to answer read) and the pipeline's own (its timings.total_ms), in ms."""
    app_ms: list[float] = []
    total_ms: list[float] = []
    for i in range(count):
        value = build(i)
        start = time.perf_counter()
        send(value)
        got = receive()
        if not got:
            raise SystemExit(f"no answer to request {i} sent one at a time")
        app_ms.append((time.perf_counter() - start) * 1000)
        total_ms.append(float(json.loads(got[0])["timings"]["total_ms"]))
    return app_ms, total_ms


if __name__ == "__main__":
    main()
