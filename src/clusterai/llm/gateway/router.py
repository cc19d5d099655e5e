"""Which backend serves a live request. Never one that lacks the model; first one that has it loaded
and not about to expire (the fewest requests in flight among those); when all of those are busy the
request waits for one up to `cold_load_wait`, because loading a model elsewhere costs seconds and
evicts what that backend held. Past that, or when no backend holds it, a free one that must load it:
the least busy, then one whose free memory fits the model, then the one with the most free memory.
Each backend has a cap on requests in flight and a circuit breaker (the placement plane's). When no
backend can take the request it waits in a bounded queue, highest priority first; a full queue, or
a wait past its timeout, is a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from clusterai.errors import BackendsBusy, ModelNotFound
from clusterai.placement.breaker import BreakerState, CircuitBreaker

AFFINITY_SESSIONS = 10_000
EXPIRY_MARGIN = 10.0  # seconds: a model due to unload sooner than this is not counted as loaded


@dataclass
class ModelStats:
    """One model on one backend, as the gateway saw it."""

    requests: int = 0
    warm: int = 0  # requests that found it loaded (the cache hits)
    cold_loads: int = 0
    load_seconds: float = 0.0  # over the cold loads whose answer said how long the load took
    timed_loads: int = 0
    inference_seconds: float = 0.0  # request to last byte, over `answered`
    answered: int = 0
    tokens: int = 0
    token_seconds: float = 0.0


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
    expires: dict[str, float] = field(default_factory=dict)  # loaded model -> when it unloads (epoch; inf: never)
    loaded_sizes: dict[str, int] = field(default_factory=dict)  # loaded model -> bytes it takes (/api/ps)
    described: dict[str, dict[str, Any]] = field(default_factory=dict)  # its /api/tags entries, by name
    memory: int | None = None  # bytes its models may take, when known
    most_loaded: int = 0  # the most models /api/ps ever showed at once: what it holds when memory is not known
    version: str = ""  # what its /api/version says (clusterai's model servers: clusterai-...)
    stats: dict[str, ModelStats] = field(default_factory=dict)  # by model
    busy_with: Counter[str] = field(default_factory=Counter)  # requests in flight, by model: loading or loaded
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

    def loaded_name(self, model: str) -> str | None:
        """The name the backend holds the model under (with or without :latest); None: not loaded."""
        for m in self.loaded:
            if m == model or _base(m) == _base(model):
                return m
        return None

    def until(self, model: str) -> float | None:
        """When the loaded model unloads (epoch; inf: never); None when it is not loaded."""
        name = self.loaded_name(model)
        return None if name is None else self.expires.get(name, math.inf)

    def forget(self, model: str) -> None:
        """The backend no longer has the model (deleted)."""
        self.models = frozenset(m for m in self.models if _base(m) != _base(model))
        self.loaded = frozenset(m for m in self.loaded if _base(m) != _base(model))

    def warm(self, model: str, now: float) -> bool:
        """Loaded, and not due to unload within EXPIRY_MARGIN."""
        until = self.until(model)
        return until is not None and until - now > EXPIRY_MARGIN

    def free_memory(self) -> int | None:
        if self.memory is None:
            return None
        return self.memory - sum(self.loaded_sizes.values())

    def fits(self, size: int | None) -> bool:
        free = self.free_memory()
        return free is None or size is None or size <= free

    def size_of(self, model: str) -> int | None:
        entry = self.described.get(model) or self.described.get(f"{_base(model)}:latest") or \
            self.described.get(_base(model))
        size = entry.get("size") if entry else None
        return size if isinstance(size, int) else None

    def model_stats(self, model: str) -> ModelStats:
        return self.stats.setdefault(_base(model), ModelStats())

    def note_loaded(self, model: str, until: float) -> None:
        """What the gateway expects after sending it a request for the model, until its next /api/ps
        says: loaded until `until`; the models it can no longer hold beside it (by its memory, else
        by the most it was seen to hold at once) are taken out, those due to expire first."""
        name = self.loaded_name(model) or model
        size = self.loaded_sizes.get(name) or self.size_of(model) or 0
        expires = {m: t for m, t in self.expires.items() if m != name}
        sizes = {m: b for m, b in self.loaded_sizes.items() if m != name}
        loaded = [m for m in self.loaded if m != name]
        if until <= time.time():
            self.loaded, self.expires, self.loaded_sizes = frozenset(loaded), expires, sizes
            return
        loaded.sort(key=lambda m: expires.get(m, math.inf))
        memory = self.memory

        def full() -> bool:
            if memory is not None:
                return sum(sizes.get(m, 0) for m in loaded) + size > memory
            return 0 < self.most_loaded <= len(loaded)  # as many as it was seen to hold; none seen: no guess

        while loaded and full():
            gone = loaded.pop(0)
            expires.pop(gone, None)
            sizes.pop(gone, None)
        expires[name] = until
        sizes[name] = size
        self.loaded, self.expires, self.loaded_sizes = frozenset([*loaded, name]), expires, sizes


def iso_time(epoch: float) -> str:
    """An epoch as Ollama writes times (UTC, ending in Z); never (inf) as the last second of 9999."""
    if math.isinf(epoch):
        return "9999-12-31T23:59:59Z"
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


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

    def pick(self, model: str, *, session: str | None = None, exclude: Iterable[Backend] = (),
             patient: bool = False) -> Backend | None:
        """A backend free now, or None (all busy or out of rotation; or, when `patient`, every backend
        that holds the model busy). ModelNotFound if none has it."""
        excluded = set(exclude)
        having = [b for b in self.candidates(model) if b not in excluded]
        if not having:
            known = sorted({m for b in self.backends for m in b.models})
            raise ModelNotFound(f"model '{model}' not found on any backend; models: {', '.join(known) or 'none'}")
        now = time.time()
        usable = [b for b in having if b.breaker.allows(now)]
        free = [b for b in usable if b.inflight < b.max_concurrency]
        if session is not None:
            sticky = self._sessions.get(session)
            for b in free:
                if b.name == sticky:
                    return b
        warm = [b for b in usable if b.warm(model, now)]
        warm_free = [b for b in warm if b in free]
        if warm_free:
            return self._least_busy(warm_free)
        if not free or (warm and patient):
            return None
        size = next((s for b in having if (s := b.size_of(model)) is not None), None)
        return min(free, key=lambda b: (b.inflight / b.max_concurrency, not b.holds(model), not b.fits(size),
                                        -(b.free_memory() or 0), self.rng.random()))

    def _least_busy(self, pool: list[Backend]) -> Backend:
        if len(pool) == 1:
            return pool[0]
        return min(pool, key=lambda b: (b.inflight / b.max_concurrency, self.rng.random()))

    async def acquire(self, model: str, *, session: str | None = None, priority: int = 0,
                      exclude: Iterable[Backend] = (), cold_load_wait: float = 0.0) -> Backend:
        """A backend for the request, waiting when none can take it; up to `cold_load_wait` seconds of
        that wait is for a busy backend that holds the model rather than a free one that must load it."""
        excluded = list(exclude)
        started = time.monotonic()
        deadline = started + self.queue_timeout
        seq = next(self._seq)  # its place in the queue, kept across wake-ups
        while True:
            patience = cold_load_wait - (time.monotonic() - started)
            backend = self.pick(model, session=session, exclude=excluded, patient=patience > 0)
            if backend is not None:
                self._take(backend, session)
                backend.busy_with[_base(model)] += 1
                return backend
            if self.queued >= self.queue_size:
                raise BackendsBusy(f"every backend with model '{model}' is busy and the queue is full "
                                 f"({self.queue_size} waiting)", retry_after=self._retry_after())
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendsBusy(f"no backend with model '{model}' came free within {self.queue_timeout:g} s",
                                 retry_after=self._retry_after())
            waiter = _Waiter(-priority, seq, asyncio.get_running_loop().create_future())
            heapq.heappush(self._waiting, waiter)
            wait = min(left, 1.0, patience) if patience > 0 else min(left, 1.0)
            try:
                await asyncio.wait_for(asyncio.shield(waiter.future), timeout=wait)
            except asyncio.TimeoutError:
                pass  # look again: a breaker's cooldown, or the patience, may have ended without a release
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

    def release(self, backend: Backend, ok: bool | None, model: str | None = None) -> None:
        """The request (for `model`, when it came through acquire) is over: `ok` False counts against
        the backend's breaker, None not at all (the client went away, or sent a bad request)."""
        backend.inflight -= 1
        if model is not None:
            backend.busy_with[_base(model)] -= 1
            if backend.busy_with[_base(model)] <= 0:
                del backend.busy_with[_base(model)]
        if ok is None:
            backend.breaker.abandon_trial()
        else:
            backend.breaker.record(ok, time.time())
            backend.errors += 0 if ok else 1
        self._wake_all()

    def _wake_all(self) -> None:
        """Every waiter looks again, highest priority first (they resume in this order): the freed
        backend may hold one waiter's model and not another's, so waking one could wake the wrong one."""
        waiting, self._waiting = sorted(self._waiting), []
        for waiter in waiting:
            if not waiter.future.done():
                waiter.future.set_result(None)

    def _retry_after(self) -> float:
        now = time.time()
        opened = [b.breaker.opened_at + b.breaker.cooldown - now for b in self.backends
                  if b.breaker.state(now) is BreakerState.OPEN and b.breaker.opened_at is not None]
        return max(1.0, min(opened)) if opened else 1.0
