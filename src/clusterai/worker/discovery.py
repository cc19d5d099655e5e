"""Finding heads on a LAN: mDNS (`_clusterai._tcp`, python-zeroconf) and, where multicast is not
allowed (Android does not give Termux a multicast lock), a UDP beacon: the joining side sends one
datagram to the broadcast address (or to addresses it is given), every head answers with what its
mDNS record says.

What a head advertises (its API URL, its CA's fingerprint, the cluster's id and version) is a hint,
never trusted: `clusterai join --discover` picks the head whose fingerprint starts with the one
the operator gives (`--fingerprint`, read off the head with `clusterai join-code --fingerprint`),
then checks the CA it downloads against it before sending the token (worker/join.py). A spoofed
advertisement can therefore make a machine try a rogue head, but never join it or hand it a token.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

SERVICE_TYPE = "_clusterai._tcp.local."
BEACON_PORT = 8799
BEACON_QUERY = b"clusterai-discover/1"
_MAX_ANSWER = 4096


@dataclass(frozen=True)
class Advertised:
    """One head as it advertises itself."""

    api: str  # https://host:port
    fingerprint: str  # of its CA, hex
    cluster: str
    version: str
    via: str  # "mdns" or "beacon"

    def to_dict(self) -> dict[str, str]:
        return {"api": self.api, "fingerprint": self.fingerprint, "cluster": self.cluster, "version": self.version}


def _parse(data: dict[str, Any], via: str) -> Advertised | None:
    try:
        found = Advertised(str(data["api"]), str(data["fingerprint"]).lower(), str(data.get("cluster", "")),
                           str(data.get("version", "")), via)
    except (KeyError, TypeError):
        return None
    return found if found.api.startswith("https://") and len(found.fingerprint) == 64 else None


# -- the head's side ---------------------------------------------------------------------------------

class Advertiser:
    """Advertises a head by mDNS (when python-zeroconf is installed) and answers beacon queries.
    `interfaces`: the addresses to advertise on (default: every interface)."""

    def __init__(self, record: dict[str, str], *, name: str, host: str, port: int, beacon_port: int = BEACON_PORT,
                 interfaces: Sequence[str] | None = None):
        self.record = dict(record)
        self.name, self.host, self.port = name, host, port
        self.beacon_port = beacon_port
        self.interfaces = list(interfaces) if interfaces else None
        self._zeroconf: Any = None
        self._info: Any = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.mdns = False

    def start(self) -> None:
        self._start_beacon()
        try:
            self._start_mdns()
        except ImportError:
            self.mdns = False  # the beacon alone then

    def _start_mdns(self) -> None:
        from zeroconf import IPVersion, ServiceInfo, Zeroconf

        addresses = [socket.inet_aton(self.host)] if self.host not in ("0.0.0.0", "") else None
        self._zeroconf = Zeroconf(interfaces=self.interfaces or ["0.0.0.0"], ip_version=IPVersion.V4Only)
        self._info = ServiceInfo(SERVICE_TYPE, f"{self.name}.{SERVICE_TYPE}", port=self.port,
                                 addresses=addresses, properties=self.record,
                                 server=f"{self.name}.local.")
        self._zeroconf.register_service(self._info, allow_name_change=True)
        self.mdns = True

    def _start_beacon(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        bind = self.interfaces[0] if self.interfaces and len(self.interfaces) == 1 else "0.0.0.0"
        sock.bind((bind, self.beacon_port))
        sock.settimeout(0.5)
        self.beacon_port = sock.getsockname()[1]
        self._sock = sock
        self._thread = threading.Thread(target=self._answer, name="clusterai-beacon", daemon=True)
        self._thread.start()

    def _answer(self) -> None:
        answer = json.dumps(self.record).encode()
        while self._sock is not None:
            try:
                data, peer = self._sock.recvfrom(256)
            except TimeoutError:
                continue
            except OSError:
                return
            if data.strip() == BEACON_QUERY:
                with contextlib.suppress(OSError):
                    self._sock.sendto(answer, peer)

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self._thread is not None:
            self._thread.join(2)
        if self._zeroconf is not None:
            with contextlib.suppress(Exception):
                self._zeroconf.unregister_service(self._info)
            self._zeroconf.close()
            self._zeroconf = None


# -- the joining side ---------------------------------------------------------------------------------

def browse_mdns(timeout: float, interfaces: Sequence[str] | None = None,
                enough: Callable[[Advertised], bool] | None = None) -> list[Advertised]:
    """Heads answering on mDNS within `timeout`; sooner once one satisfies `enough`."""
    try:
        from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf
    except ImportError:
        return []
    found: list[Advertised] = []
    lock = threading.Lock()
    done = threading.Event()

    class Listener(ServiceListener):
        def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            info = zc.get_service_info(type_, name, timeout=int(timeout * 1000))
            if info is None:
                return
            props = {k.decode(): v.decode() for k, v in info.properties.items() if v is not None}
            head = _parse(props, "mdns")
            if head is not None:
                with lock:
                    found.append(head)
                if enough is not None and enough(head):
                    done.set()

        def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            pass

        def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            pass

    zc = Zeroconf(interfaces=list(interfaces) if interfaces else ["0.0.0.0"], ip_version=IPVersion.V4Only)
    try:
        ServiceBrowser(zc, SERVICE_TYPE, Listener())
        done.wait(timeout)
    finally:
        zc.close()
    with lock:
        return list(found)


def browse_beacon(timeout: float, targets: Sequence[tuple[str, int]] = (),
                  enough: Callable[[Advertised], bool] | None = None,
                  stop: threading.Event | None = None) -> list[Advertised]:
    """Ask `targets` (default: the broadcast address on BEACON_PORT) and collect answers for
    `timeout`; sooner once one satisfies `enough`, or `stop` is set."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    found: list[Advertised] = []
    try:
        for target in targets or [("255.255.255.255", BEACON_PORT)]:
            with contextlib.suppress(OSError):
                sock.sendto(BEACON_QUERY, target)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and not (stop is not None and stop.is_set()):
            sock.settimeout(min(left, 0.1))
            try:
                data, _ = sock.recvfrom(_MAX_ANSWER)
            except TimeoutError:
                continue
            except OSError:
                break
            with contextlib.suppress(ValueError):
                head = _parse(json.loads(data), "beacon")
                if head is not None:
                    found.append(head)
                    if enough is not None and enough(head):
                        break
    finally:
        sock.close()
    return found


def discover(timeout: float = 3.0, *, beacons: Sequence[tuple[str, int]] = (),
             interfaces: Sequence[str] | None = None, mdns: bool = True,
             enough: Callable[[Advertised], bool] | None = None) -> list[Advertised]:
    """Heads found by mDNS and the beacon, one entry per (API, fingerprint), listening for
    `timeout`; once a head satisfies `enough`, both stop listening."""
    results: list[Advertised] = []
    satisfied = threading.Event()

    def note(head: Advertised) -> bool:
        if enough is not None and enough(head):
            satisfied.set()
            return True
        return False

    thread = None
    if mdns:
        holder: list[list[Advertised]] = []
        thread = threading.Thread(target=lambda: holder.append(browse_mdns(timeout, interfaces, note)), daemon=True)
        thread.start()
    results += browse_beacon(timeout, beacons, note, stop=satisfied)
    if thread is not None:
        thread.join(0.2 if satisfied.is_set() else timeout + 5)  # its late answers do not matter then
        results += holder[0] if holder else []
    unique: dict[tuple[str, str], Advertised] = {}
    for head in results:
        unique.setdefault((head.api, head.fingerprint), head)
    return list(unique.values())
