"""``free_ports``: ports for servers to bind later, chosen where outgoing
connections cannot take them meanwhile."""

from __future__ import annotations

import socket

from kvserver.launcher import _ephemeral_range, free_ports


def test_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    ephemeral = _ephemeral_range()
    for port in ports:
        if ephemeral is not None:
            assert not ephemeral[0] <= port <= ephemeral[1], port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_returned() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        for _ in range(20):
            assert taken not in free_ports(5)
