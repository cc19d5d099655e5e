"""Which video sources a worker may open: cluster.yaml's `media.sources`, an allow-list of local
folders and URL patterns `scheme://HOST-or-IP-or-CIDR[:port]`.

A submitter names the source; the operator names what may be read. Without this, `video.scan` would
open any path the worker user can read and fetch any URL it can reach (internal HTTP, RTSP), and
the difference between "missing", "a folder" and "cannot open" would map the worker's disk.

Standard library only: the config (at load, to name a bad entry), the CLI (to warn up front) and
every worker (where the check that counts is made, in workloads/sources.py) use it. The policy in
force on a worker is module state, set by the clusterai worker plugin at setup; code that calls the
video functions directly gets the default (the cluster's own media folder) unless it sets one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

DEFAULT_MEDIA_DIR = ".clusterai/media"
DEFAULT_SOURCES = (DEFAULT_MEDIA_DIR,)
# default ports, so that `rtsp://cam:554` in a pattern matches `rtsp://cam/stream`
SCHEMES = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935}
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
# What a URL given to FFmpeg may contain: RFC 3986's characters, no '\\', spaces, controls or '#'
# (where parsers disagree about the host, the check and the fetch could see two different hosts).
_URL_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%]*$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class UrlRule:
    """One URL pattern: a scheme, and a hostname or an IP network, and maybe a port."""

    entry: str
    scheme: str
    hostname: str | None = None  # lowercase, no trailing dot
    network: Network | None = None
    port: int | None = None

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if scheme != self.scheme or (self.port is not None and port != self.port):
            return False
        if self.hostname is not None:
            return host == self.hostname
        assert self.network is not None
        try:
            return ipaddress.ip_address(host) in self.network
        except ValueError:
            pass  # a host name: every address it resolves to must be inside
        addresses = _resolve(host, port)
        return bool(addresses) and all(a in self.network for a in addresses)


@dataclass(frozen=True)
class SourcePolicy:
    folders: tuple[str, ...] = DEFAULT_SOURCES
    urls: tuple[UrlRule, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> SourcePolicy:
        """From `media.sources`; ValueError naming the first bad entry."""
        folders: list[str] = []
        urls: list[UrlRule] = []
        for entry in entries:
            if not isinstance(entry, str) or not entry.strip():
                raise ValueError(f"media.sources entry {entry!r}: a folder or a URL pattern such as "
                                 "rtsp://10.0.0.0/8, not empty")
            if "://" in entry:
                urls.append(parse_url_rule(entry))
            elif "\x00" in entry:
                raise ValueError(f"media.sources entry {entry!r}: a folder name has no NUL character")
            else:
                folders.append(entry)
        return cls(tuple(folders), tuple(urls))

    def local_file(self, source: str) -> str | None:
        """The real path (symlinks and '..' resolved) of a regular file inside an allowed folder's
        real path; None otherwise (outside, missing, a folder or a device: all the same to a caller)."""
        if "\x00" in source or not source:
            return None
        try:
            real = os.path.realpath(source)
        except (OSError, ValueError):
            return None
        for folder in self.folders:
            try:
                root = os.path.realpath(os.path.expanduser(folder))
            except (OSError, ValueError):
                continue
            if real.startswith(root.rstrip(os.sep) + os.sep) and os.path.isfile(real):
                return real
        return None

    def allowed_url(self, source: str) -> str | None:
        """The URL rebuilt from its checked parts (what FFmpeg is given), or None when no rule allows it."""
        parts = _split(source)
        if parts is None:
            return None
        scheme, host, port, split = parts
        if not any(rule.matches(scheme, host, port) for rule in self.urls):
            return None
        shown_host = f"[{host}]" if ":" in host else host
        userinfo = split.netloc.rpartition("@")[0]
        netloc = (f"{userinfo}@" if "@" in split.netloc else "") + shown_host
        if split.port is not None:
            netloc += f":{split.port}"
        return f"{scheme}://{netloc}{split.path}" + (f"?{split.query}" if split.query else "")


def parse_url_rule(entry: str) -> UrlRule:
    """`scheme://HOST-or-IP-or-CIDR[:port]` (a trailing '/' is allowed); ValueError naming the entry."""
    where = f"media.sources entry {entry!r}"
    scheme, _, rest = entry.partition("://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"{where}: unknown scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    if any(c in rest for c in "?#@") or any(c.isspace() for c in rest):
        raise ValueError(f"{where}: a pattern is scheme://HOST-or-IP-or-CIDR[:port], with no path, "
                         "query, user or password")
    if rest.endswith("/") and rest.count("/") == 1:
        rest = rest[:-1]
    host, port = _host_and_port(rest, where)
    if "/" in host:
        try:
            network = ipaddress.ip_network(host, strict=True)
        except ValueError as exc:
            if host.split("/", 1)[1].isdigit():
                raise ValueError(f"{where}: {host!r} is not a network such as 10.0.0.0/8 ({exc})") from None
            raise ValueError(f"{where}: a pattern has no path; write scheme://HOST-or-IP-or-CIDR[:port]") from None
        return UrlRule(entry, scheme, network=network, port=port)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.lower().rstrip(".")
        if not _HOSTNAME.match(name):
            raise ValueError(f"{where}: {host!r} is not a host name, an IP address or a network") from None
        return UrlRule(entry, scheme, hostname=name, port=port)
    return UrlRule(entry, scheme, network=ipaddress.ip_network(address), port=port)


def _host_and_port(rest: str, where: str) -> tuple[str, int | None]:
    if rest.startswith("["):  # [IPv6] or [IPv6/len], then maybe :port
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"{where}: an IPv6 pattern is written [ADDRESS] or [NETWORK], then maybe :port")
        port_text = tail[1:] if tail else None
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    elif ":" in rest:
        raise ValueError(f"{where}: write an IPv6 address or network in brackets, e.g. rtsp://[fd00::]/8")
    else:
        host, port_text = rest, None
    if not host:
        raise ValueError(f"{where}: no host")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{where}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _split(source: str) -> tuple[str, str, int, SplitResult] | None:
    """(scheme, host, port, parts) of a URL with nothing a parser could read two ways; else None."""
    if not _URL_CHARS.match(source):
        return None
    try:
        split = urlsplit(source)
        port = split.port
    except ValueError:  # a port that is not a number, a broken IPv6 literal
        return None
    scheme = split.scheme.lower()
    if scheme not in SCHEMES or split.netloc.count("@") > 1 or not split.hostname or "%" in split.hostname:
        return None
    return scheme, split.hostname.lower().rstrip("."), port or SCHEMES[scheme], split


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    addresses = []
    for info in infos:
        try:
            addresses.append(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        except ValueError:
            return []
    return addresses


# -- the policy in force in this process ----------------------------------------------------------

_current = SourcePolicy()


def current_policy() -> SourcePolicy:
    return _current


def set_policy(policy: SourcePolicy) -> SourcePolicy:
    """Make `policy` the one in force; returns the one it replaces."""
    global _current
    previous, _current = _current, policy
    return previous


@contextlib.contextmanager
def use_policy(entries: Iterable[str]) -> Iterator[SourcePolicy]:
    """`media.sources` entries in force for a block (tests, scripts); the previous policy after."""
    previous = set_policy(SourcePolicy.parse(entries))
    try:
        yield current_policy()
    finally:
        set_policy(previous)
