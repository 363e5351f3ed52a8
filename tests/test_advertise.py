"""--advertise: an address as given, or "auto" resolved to this host's own."""

from __future__ import annotations

import ipaddress
import socket

from supervisor.arbiter import resolve_advertise


def test_an_explicit_address_is_kept() -> None:
    assert resolve_advertise("10.0.0.11") == "10.0.0.11"


def test_auto_is_the_address_the_host_name_resolves_to() -> None:
    resolved = resolve_advertise("auto")
    ipaddress.ip_address(resolved)  # an address, not a name
    assert resolved == socket.gethostbyname(socket.gethostname())
