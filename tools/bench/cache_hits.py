"""How fast one stream processor answers from the exact cache, through Kafka, end to end.

Against a running stack (`llmq local up`): warms the cache with a few distinct questions,
then publishes N copies of them at once with fresh correlation ids and reads the replies
back from a private reply topic. Prints replies per second and latency percentiles.

    python -m tools.bench.cache_hits --requests 2000 --distinct 8
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import Counter
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from llmq.client import Client
from schemas.names import REQUESTS
from schemas.request import ChatBody, InferenceRequest
from schemas.settings import ServiceSettings


def main() -> None:
    """Parse the arguments, run once, print one line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=8, help="distinct cached questions")
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
        topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    replies.poll(100)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    start = time.time()
    for i in range(args.requests):
        request = InferenceRequest(
            correlation_id=f"bench-{tag}-{i}",
            reply_to=topic,
            body=ChatBody.model_validate(
                {
                    "messages": [{"role": "user", "content": questions[i % args.distinct]}],
                    "temperature": 0,
                    "max_tokens": 8,
                }
            ),
        )
        producer.send(REQUESTS, request.model_dump_json().encode())
    producer.flush()
    results: list[dict[str, Any]] = []
    while len(results) < args.requests and time.time() - start < args.timeout:
        for batch in replies.poll(500).values():
            results.extend(json.loads(r.value) for r in batch)
    wall = time.time() - start
    replies.close()
    producer.close()
    latency = sorted(r["timings"]["total_ms"] for r in results)
    if not latency:
        raise SystemExit("no replies: is the stack up (llmq local status)?")
    caches = Counter(r["cache"] for r in results)
    print(
        f"{len(results)}/{args.requests} replies in {wall:.2f} s = {len(results) / wall:.0f}/s; "
        f"latency p50 {latency[len(latency) // 2]:.0f} ms, "
        f"p99 {latency[int(len(latency) * 0.99)]:.0f} ms; {dict(caches)}"
    )


if __name__ == "__main__":
    main()
