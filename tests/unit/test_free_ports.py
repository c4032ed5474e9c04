"""tests.support.ops.free_ports: ports for services a test starts, picked outside the kernel's
ephemeral range. A port picked by binding port 0 is in that range, and once released the kernel
may hand it to the next bind(0) or outgoing connection before the service binds it: a rig
exporter got Prometheus' port that way in a fresh-clone run (2026-12-08)."""

from __future__ import annotations

import socket

from tests.support.ops import ephemeral_range, free_ports


def test_the_ports_are_distinct_free_and_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert not [port for port in ports if low <= port <= high]
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: binding it works


def test_a_port_in_use_is_never_handed_out() -> None:
    held = []
    try:
        for port in free_ports(50):
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            held.append(sock)
        taken = {sock.getsockname()[1] for sock in held}
        assert not taken & set(free_ports(50))
    finally:
        for sock in held:
            sock.close()


def test_the_range_is_the_kernels() -> None:
    low, high = ephemeral_range()
    with open("/proc/sys/net/ipv4/ip_local_port_range") as found:
        assert (low, high) == tuple(int(part) for part in found.read().split())
