"""Free loopback ports for stacks and servers started side by side (tests, benchmarks)."""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20_000, 32_000
"""Below Linux's ephemeral range (32768-60999 by default): the kernel never hands these to
outgoing connections, so a port found free here is not taken a moment later by a client."""


def free_block(size: int, attempts: int = 200) -> int:
    """The first of `size` consecutive loopback ports that nothing has bound: one block per
    stack, so no two of its components are handed the same port."""
    rng = random.SystemRandom()
    for _ in range(attempts):
        first = rng.randrange(LOW, HIGH - size)
        if all(_bindable(first + i) for i in range(size)):
            return first
    raise RuntimeError(f"no {size} consecutive free loopback ports in {LOW}-{HIGH}")


def _bindable(port: int) -> bool:
    """True when a listener could bind the port now (connecting would miss a port that a
    socket holds without listening)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
