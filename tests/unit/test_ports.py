"""Free loopback ports: outside the ephemeral range, and really free."""

from __future__ import annotations

import socket

from tools.stack.ports import HIGH, LOW, _bindable, free_block


def test_a_block_is_consecutive_free_ports_below_the_ephemeral_range() -> None:
    first = free_block(8)
    assert LOW <= first <= HIGH - 8
    assert all(_bindable(first + i) for i in range(8))


def test_a_port_bound_without_listening_is_not_free() -> None:
    # Connecting would find nothing listening there; binding finds the port taken.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        assert not _bindable(port)
