"""Submit a few questions to llmq and collect the answers by correlation id.

Run against a stack started with `llmq local up` (or point LLMQ_KAFKA_BOOTSTRAP and
LLMQ_REDIS_URL at yours):  python examples/ask.py
"""

from __future__ import annotations

from llmq import Client
from schemas.lanes import Lane

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "What is 12 times 12?",
]


def main() -> None:
    """Send everything first, then wait: the worker batches the requests together."""
    with Client() as client:
        ids = [
            client.submit(q, max_tokens=48, temperature=0.0, lane=Lane.INTERACTIVE)
            for q in QUESTIONS
        ]
        for question, cid in zip(QUESTIONS, ids, strict=True):
            result = client.result(cid, timeout=120)
            answer = result.text if result.error is None else f"error: {result.error.message}"
            took = result.timings.total_ms or 0  # None where admission refused it
            print(f"{question}\n  -> {answer}  [{result.cache}, {took:.0f} ms]")


if __name__ == "__main__":
    main()
