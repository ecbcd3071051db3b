"""The demo's hub port: a taken one falls back to a free port and says so."""

from __future__ import annotations

import socket

from hub.demo import pick_port


def test_taken_port_falls_back_to_a_free_one_and_says_so() -> None:
    said: list[str] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        port = pick_port(busy, said.append)
        assert port != busy
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # the fallback really is free
    assert said == [
        f"==> port {busy} is not available (Address already in use); "
        f"the hub uses port {port} instead"
    ]


def test_free_port_is_kept_silently() -> None:
    said: list[str] = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert pick_port(free, said.append) == free
    assert said == []
