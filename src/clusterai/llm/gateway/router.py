"""Which backend serves a live request: model-aware first (a backend with the model loaded, else
one that has it, never one that lacks it), then the fewer requests in flight of two picked at
random (power of two choices), under a per-backend cap and a circuit breaker (the placement
plane's). When every eligible backend is busy the request waits in a bounded queue, highest
priority first; a full queue, or a wait past its timeout, is a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterai.errors import BackendsBusy, ModelNotFound
from clusterai.placement.breaker import BreakerState, CircuitBreaker

AFFINITY_SESSIONS = 10_000


@dataclass(eq=False)
class Backend:
    name: str
    url: str
    kind: str  # "ollama" or "openai"
    token: str | None
    max_concurrency: int
    breaker: CircuitBreaker
    inflight: int = 0
    models: frozenset[str] = frozenset()  # what it has
    loaded: frozenset[str] = frozenset()  # what it holds in memory now (Ollama's /api/ps)
    described: dict[str, dict[str, Any]] = field(default_factory=dict)  # its /api/tags entries, by name
    checked_at: float = 0.0
    reachable: bool = False
    requests: int = 0
    errors: int = 0
    first_byte_seconds: float = 0.0  # sum over `answered` requests: time to the first byte
    answered: int = 0
    tokens: int = 0  # generated, as the backend reported them
    token_seconds: float = 0.0  # generation time of those tokens

    def has(self, model: str) -> bool:
        return model in self.models or _base(model) in {_base(m) for m in self.models}

    def holds(self, model: str) -> bool:
        return model in self.loaded or _base(model) in {_base(m) for m in self.loaded}


def _base(model: str) -> str:
    return model.removesuffix(":latest")


@dataclass(order=True)
class _Waiter:
    priority: int  # negated: heapq pops the smallest
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class Router:
    def __init__(self, backends: Sequence[Backend], *, queue_size: int, queue_timeout: float,
                 rng: random.Random | None = None):
        self.backends = list(backends)
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.rng = rng or random.Random()
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()
        self._sessions: OrderedDict[str, str] = OrderedDict()

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiting if not w.future.done())

    def candidates(self, model: str) -> list[Backend]:
        """Backends that could ever serve this model (any of them takes either protocol: Ollama
        speaks OpenAI's too, and the gateway translates Ollama's for OpenAI-only servers)."""
        return [b for b in self.backends if b.has(model)]

    def pick(self, model: str, *, session: str | None = None, exclude: Iterable[Backend] = ()) -> Backend | None:
        """A backend free now, or None (all busy or out of rotation). NoBackend if none has it."""
        excluded = set(exclude)
        having = [b for b in self.candidates(model) if b not in excluded]
        if not having:
            known = sorted({m for b in self.backends for m in b.models})
            raise ModelNotFound(f"model '{model}' not found on any backend; models: {', '.join(known) or 'none'}")
        now = time.time()
        free = [b for b in having if b.inflight < b.max_concurrency and b.breaker.allows(now)]
        if not free:
            return None
        if session is not None:
            sticky = self._sessions.get(session)
            for b in free:
                if b.name == sticky:
                    return b
        loaded = [b for b in free if b.holds(model)]
        pool = loaded or free
        if len(pool) == 1:
            return pool[0]
        a, b = self.rng.sample(pool, 2)
        return a if a.inflight <= b.inflight else b

    async def acquire(self, model: str, *, session: str | None = None, priority: int = 0,
                      exclude: Iterable[Backend] = ()) -> Backend:
        excluded = list(exclude)
        deadline = time.monotonic() + self.queue_timeout
        while True:
            backend = self.pick(model, session=session, exclude=excluded)
            if backend is not None:
                self._take(backend, session)
                return backend
            if self.queued >= self.queue_size:
                raise BackendsBusy(f"every backend with model '{model}' is busy and the queue is full "
                                 f"({self.queue_size} waiting)", retry_after=self._retry_after())
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendsBusy(f"no backend with model '{model}' came free within {self.queue_timeout:g} s",
                                 retry_after=self._retry_after())
            waiter = _Waiter(-priority, next(self._seq), asyncio.get_running_loop().create_future())
            heapq.heappush(self._waiting, waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter.future), timeout=min(left, 1.0))
            except asyncio.TimeoutError:
                pass  # look again: a breaker's cooldown may have ended without anyone releasing
            finally:
                if not waiter.future.done():
                    waiter.future.cancel()

    def _take(self, backend: Backend, session: str | None) -> None:
        backend.inflight += 1
        backend.requests += 1
        backend.breaker.begin(time.time())
        if session is not None:
            self._sessions[session] = backend.name
            self._sessions.move_to_end(session)
            while len(self._sessions) > AFFINITY_SESSIONS:
                self._sessions.popitem(last=False)

    def release(self, backend: Backend, ok: bool | None) -> None:
        """The request is over: `ok` False counts against the backend's breaker, None not at all
        (the client went away, or sent a bad request)."""
        backend.inflight -= 1
        if ok is None:
            backend.breaker.abandon_trial()
        else:
            backend.breaker.record(ok, time.time())
            backend.errors += 0 if ok else 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = heapq.heappop(self._waiting)
            if not waiter.future.done():
                waiter.future.set_result(None)
                return

    def _retry_after(self) -> float:
        now = time.time()
        opened = [b.breaker.opened_at + b.breaker.cooldown - now for b in self.backends
                  if b.breaker.state(now) is BreakerState.OPEN and b.breaker.opened_at is not None]
        return max(1.0, min(opened)) if opened else 1.0
