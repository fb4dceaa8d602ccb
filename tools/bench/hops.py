"""Where a quiet request's added time goes, hop by hop.

Against a running stack (`llmq local up`): sends N short distinct questions one after
another (a fresh tenant, temperature 0, 8 tokens), then reads back the create time of each
request's record on every topic it passed through (the time its producer sent it) and
prints each step's p50 / p90 / p99 in ms, and of their sum per request: admission (the
app's record -> llmq.requests.keyed), dedupe (-> the work topic), the worker less the
engine (-> llmq.completions), completion (-> llmq.results) and the app's receipt of the
result. A record's create time is when its producer was handed it, so a producer's linger
counts in the step after. First, as the baseline of the same run, a bare trip through
Kafka: a record produced (acknowledged by every replica) to a scratch topic and fetched by
a waiting consumer.

`--load RATE` keeps the engine busy meanwhile: ShareGPT first turns from another tenant
at Poisson arrivals of RATE a second, started before the questions and stopped after them.
For the added latency at half load, RATE is about half the engine's capacity: 2 on a
2-core CPU that computes in bf16, less on one that does not (an AVX2-only one serves about
half as much). Above capacity the questions queue behind the load, and the run stops with
a message once one has waited QUESTION_TIMEOUT_S.

    python -m tools.bench.hops --requests 20 [--load 2]
"""

from __future__ import annotations

import argparse
import itertools
import random
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from llmq.client import Client, connect
from schemas.catalog import Catalog
from schemas.lanes import Lane
from schemas.names import COMPLETIONS, REQUESTS, REQUESTS_KEYED, RESULTS, work_topic
from schemas.settings import ServiceSettings
from tools import sharegpt
from tools.bench.pipeline_parts import quantile
from tools.stack.settings import LocalSettings

STEPS = ("admission", "dedupe", "worker", "complete", "to the app")
READ_S = 10.0
"""How long to read the topics back at most."""
BARE_TRIPS = 50
"""Bare trips through Kafka measured first, one at a time."""
LOAD_WARMUP_S = 20.0
"""How long the load runs before the first question: long enough to fill the engine."""
QUESTION_TIMEOUT_S = 120.0
"""How long one question may wait for its answer."""


def bare_trips(settings: ServiceSettings, trips: int) -> tuple[list[float], list[float]]:
    """ms of `trips` bare trips through Kafka, one at a time, on a scratch topic: (produce
    to acknowledgement, produce to the consumer's receipt)."""
    security = settings.kafka_security()
    topic = f"bench.hops.{uuid.uuid4().hex[:8]}"
    admin = connect(KafkaAdminClient, settings.kafka_bootstrap, security)
    # As many replicas as llmq's topics have on the local stack (up to 3): all acknowledge.
    brokers = admin.describe_cluster()["brokers"]
    replicas = min(3, sum(not broker.get("is_fenced") for broker in brokers))
    admin.create_topics([NewTopic(topic, 1, replicas)])
    producer = connect(KafkaProducer, settings.kafka_bootstrap, security, acks="all")
    consumer = connect(
        KafkaConsumer, settings.kafka_bootstrap, security, auto_offset_reset="earliest"
    )
    acked, received = [], []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        for trip in range(trips + 1):  # the first one warms up
            start = time.perf_counter()
            producer.send(topic, b"x").get(timeout=READ_S)
            ack = time.perf_counter()
            deadline = ack + READ_S
            while not consumer.poll(100):
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"a record sent to {topic} was not read in {READ_S} s")
            if trip:
                acked.append(1000 * (ack - start))
                received.append(1000 * (time.perf_counter() - start))
    finally:
        consumer.close()
        producer.close()
        admin.delete_topics([topic])
        admin.close()
    return acked, received


@contextmanager
def load(settings: ServiceSettings, rate: float) -> Iterator[list[str]]:
    """ShareGPT first turns from a tenant of their own at Poisson arrivals of `rate` a
    second while the block runs (nothing when `rate` is 0); yields their correlation ids."""
    sent: list[str] = []
    failed: list[Exception] = []
    if rate <= 0:
        yield sent
        return
    prompts = sharegpt.sample(1000, LocalSettings().cache_dir, seed=1)
    stop = threading.Event()
    tenant = f"hops-load-{uuid.uuid4().hex[:8]}"
    arrivals = random.Random(1)

    def send(client: Client) -> None:
        for prompt in itertools.cycle(prompts):
            if stop.wait(arrivals.expovariate(rate)):
                return
            try:
                cid = client.submit(
                    prompt.text, tenant=tenant, max_tokens=prompt.reply_tokens, temperature=0.0
                )
            except Exception as exc:  # the run is void: said after it
                failed.append(exc)
                return
            sent.append(cid)

    with Client(settings) as client:
        sender = threading.Thread(target=send, args=(client,), name="hops-load", daemon=True)
        sender.start()
        time.sleep(LOAD_WARMUP_S)
        try:
            yield sent
        finally:
            stop.set()
            sender.join()
    if failed:
        raise SystemExit(f"the load stopped after {len(sent)} requests: {failed[0]}")


def steps(
    sent: Mapping[str, float], topics: list[str], engine_ms: float, received: float
) -> dict[str, float]:
    """One request's steps in ms, from the create times (s) of its records on `topics`, in
    the order it passes them, and the time the app received its result."""
    at = [sent[topic] for topic in topics] + [received]
    ms = [1000 * (b - a) for a, b in itertools.pairwise(at)]
    ms[STEPS.index("worker")] -= engine_ms
    return dict(zip(STEPS, ms, strict=True))


def unanswered(n: int, load: float) -> str:
    """Why the run stops when question `n` (from 0) got no answer in time."""
    said = f"question {n + 1} got no answer within {QUESTION_TIMEOUT_S:.0f} s"
    if load > 0:
        return (
            f"{said}: a load of {load:g} requests a second is likely more than the engine "
            "serves, so the questions queue behind it; try a lower --load"
        )
    return f"{said} on a quiet stack: is it up and serving (`llmq local status`)?"


def read_back(
    consumer: KafkaConsumer, start: Mapping[TopicPartition, int], ids: set[str]
) -> dict[str, dict[str, float]]:
    """Correlation id -> topic -> create time (s) of its first record there since `start`."""
    end = consumer.end_offsets(list(start))
    consumer.assign(list(start))
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    found: dict[str, dict[str, float]] = {cid: {} for cid in ids}
    deadline = time.monotonic() + READ_S
    while time.monotonic() < deadline and any(consumer.position(tp) < end[tp] for tp in start):
        for tp, records in consumer.poll(200).items():
            for record in records:
                for cid in ids:
                    if cid.encode() in (record.value or b""):
                        found[cid].setdefault(tp.topic, record.timestamp / 1000)
    return found


def main() -> None:
    """Send the questions one by one, read their records back, print the steps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument(
        "--load", type=float, default=0.0, help="ShareGPT requests a second meanwhile (default 0)"
    )
    args = parser.parse_args()
    settings = ServiceSettings()
    model = Catalog.builtin().default
    topics = [REQUESTS, REQUESTS_KEYED, work_topic(model, Lane.STANDARD), COMPLETIONS, RESULTS]
    consumer = connect(
        KafkaConsumer, settings.kafka_bootstrap, settings.kafka_security(), enable_auto_commit=False
    )
    tenant = f"hops-{uuid.uuid4().hex[:8]}"
    rows = []
    try:
        bare_acked, bare_received = bare_trips(settings, BARE_TRIPS)
        partitions = [
            TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
        ]
        start = consumer.end_offsets(partitions)
        timed = []
        with load(settings, args.load) as loaded, Client(settings) as client:
            client.ask("Say hello.", tenant="hops-warmup", max_tokens=4, temperature=0.0)
            for n in range(args.requests):
                try:
                    result = client.ask(
                        f"What is {n} plus {n + 7}?",
                        timeout=QUESTION_TIMEOUT_S,
                        tenant=tenant,
                        max_tokens=8,
                        temperature=0.0,
                    )
                except TimeoutError:
                    raise SystemExit(unanswered(n, args.load)) from None
                timed.append((result, time.time()))
        ids = {result.correlation_id or "" for result, _ in timed}
        sent = read_back(consumer, start, ids)
        for result, received in timed:
            cid = result.correlation_id or ""
            if set(sent[cid]) >= set(topics):
                rows.append(steps(sent[cid], topics, result.timings.engine_ms or 0.0, received))
    finally:
        consumer.close()
    if not rows:
        raise SystemExit(f"no request's records were found on all of {', '.join(topics)}")
    print(
        f"a bare trip through Kafka ({BARE_TRIPS}, one at a time): acknowledged p50 "
        f"{quantile(bare_acked, 0.5):.1f} / p90 {quantile(bare_acked, 0.9):.1f} ms, received "
        f"p50 {quantile(bare_received, 0.5):.1f} / p90 {quantile(bare_received, 0.9):.1f} ms"
    )
    meanwhile = f", {len(loaded)} ShareGPT requests sent meanwhile" if args.load else ""
    print(f"{len(rows)} of {args.requests} requests one by one{meanwhile}; ms at p50 / p90 / p99")
    for name in (*STEPS, "all"):
        values = [sum(row.values()) if name == "all" else row[name] for row in rows]
        print(f"  {name:11s}" + "".join(f"{quantile(values, q):8.1f}" for q in (0.5, 0.9, 0.99)))


if __name__ == "__main__":
    main()
