"""Network addresses: which ones stay on this machine (what may be served without TLS or a token)."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback(host: str, *, resolve: bool = False) -> bool:
    """Whether `host` (an IP address, "localhost", or with `resolve` any name) is this machine's
    loopback. Without `resolve`, any other name counts as another machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not resolve:
        return False
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False
