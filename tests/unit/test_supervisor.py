"""scripts.supervisor.free_ports: a port handed out once is not handed out
again, so a port picked up front for a process started later cannot go to
another child in between (every retry of that start would then bind a taken
port: CI saw it once, on 11-29, for the router behind Envoy)."""

from __future__ import annotations

import socket

from scripts.supervisor import free_ports


def test_ports_are_distinct_bindable_and_never_handed_out_twice() -> None:
    # The kernel offers closed ports again at random: 400 picks after 400
    # others would share ~6 ports without the registry (and none with it).
    first = free_ports(400)
    second = free_ports(400)
    assert len(set(first)) == len(set(second)) == 400
    assert not set(first) & set(second)
    for port in second[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # still free: nothing holds it
