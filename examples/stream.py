"""A Kafka app that streams: llmq's asyncio client, `async for` over the answer's pieces.

Run against a stack started with `llmq local up`:  python examples/stream.py
"""

from __future__ import annotations

import asyncio

from llmq.aio import AsyncClient


async def main() -> None:
    async with AsyncClient() as client:  # LLMQ_KAFKA_BOOTSTRAP, LLMQ_REDIS_URL
        async for piece in client.stream(
            "Explain continuous batching in two sentences.", max_tokens=96, temperature=0
        ):
            print(piece.text, end="", flush=True)
            if piece.finish_reason is not None:
                print(f"\n[{piece.finish_reason}, {piece.usage}]")


if __name__ == "__main__":
    asyncio.run(main())
