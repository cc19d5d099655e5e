"""The gateway's router without a network: model-aware choice, power of two choices on requests in
flight, the per-backend cap, the breaker, affinity, and the bounded priority queue."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from clusterai.errors import BackendsBusy, ModelNotFound
from clusterai.llm.gateway.router import Backend, Router
from clusterai.placement.breaker import CircuitBreaker


def backend(name: str, models: set[str], loaded: frozenset[str] = frozenset(), cap: int = 4,
            kind: str = "ollama") -> Backend:
    return Backend(name=name, url=f"http://{name}", kind=kind, token=None, max_concurrency=cap,
                   breaker=CircuitBreaker(failures=2, cooldown=60), models=frozenset(models),
                   loaded=frozenset(loaded))


def router(*backends: Backend, queue: int = 4, timeout: float = 0.3) -> Router:
    return Router(list(backends), queue_size=queue, queue_timeout=timeout, rng=random.Random(1))


def test_never_a_backend_without_the_model_and_loaded_ones_first() -> None:
    a, b, c = backend("a", {"llama"}), backend("b", {"llama", "qwen"}, loaded={"qwen"}), backend("c", {"qwen"})
    r = router(a, b, c)
    assert {r.pick("llama").name for _ in range(50)} == {"a", "b"}
    assert {r.pick("qwen").name for _ in range(50)} == {"b"}  # loaded beats merely present
    assert r.pick("llama:latest") is not None  # the :latest tag is the same model
    with pytest.raises(ModelNotFound, match="model 'mistral' not found on any backend; models: llama, qwen"):
        r.pick("mistral")


def test_an_openai_only_backend_is_a_candidate_for_its_models() -> None:
    r = router(backend("vllm", {"m"}, kind="openai"), backend("ollama", {"other"}))
    assert [b.name for b in r.candidates("m")] == ["vllm"]
    assert r.pick("m").name == "vllm"


def test_fewer_in_flight_wins_and_the_cap_holds() -> None:
    a, b = backend("a", {"m"}, cap=2), backend("b", {"m"}, cap=2)
    r = router(a, b)
    a.inflight = 1
    assert all(r.pick("m") is b for _ in range(20))
    a.inflight, b.inflight = 2, 2
    assert r.pick("m") is None


def test_an_open_breaker_takes_a_backend_out_and_session_affinity_sticks() -> None:
    a, b = backend("a", {"m"}), backend("b", {"m"})
    r = router(a, b)
    a.breaker.record(False, 0)
    a.breaker.record(False, 1e12)  # open, for a long time
    assert {r.pick("m").name for _ in range(20)} == {"b"}
    c, d = backend("c", {"m"}), backend("d", {"m"})
    r2 = router(c, d)
    first = asyncio.run(r2.acquire("m", session="chat-1"))
    r2.release(first, ok=True)
    names = set()
    for _ in range(10):
        got = asyncio.run(r2.acquire("m", session="chat-1"))
        names.add(got.name)
        r2.release(got, ok=True)
    assert names == {first.name}


def test_the_queue_is_bounded_and_serves_the_highest_priority_first() -> None:
    async def scenario() -> list[str]:
        only = backend("a", {"m"}, cap=1)
        r = router(only, queue=2, timeout=5)
        held = await r.acquire("m")
        order: list[str] = []

        async def ask(name: str, priority: int) -> None:
            got = await r.acquire("m", priority=priority)
            order.append(name)
            await asyncio.sleep(0.01)
            r.release(got, ok=True)

        low = asyncio.create_task(ask("low", 0))
        await asyncio.sleep(0.01)
        high = asyncio.create_task(ask("high", 3))
        await asyncio.sleep(0.01)
        with pytest.raises(BackendsBusy, match="queue is full") as full:
            await r.acquire("m")
        assert full.value.retry_after >= 1
        r.release(held, ok=True)
        await asyncio.gather(low, high)
        return order

    assert asyncio.run(scenario()) == ["high", "low"]


def test_a_wait_past_the_timeout_is_overloaded() -> None:
    async def scenario() -> None:
        only = backend("a", {"m"}, cap=1)
        r = router(only, queue=5, timeout=0.2)
        await r.acquire("m")
        with pytest.raises(BackendsBusy, match="came free within 0.2 s"):
            await r.acquire("m")

    asyncio.run(scenario())


def test_a_backend_holding_the_model_is_waited_for_before_a_cold_load_elsewhere() -> None:
    async def scenario() -> tuple[str, float, str, float]:
        warm, cold = backend("warm", {"m"}, loaded={"m"}, cap=1), backend("cold", {"m"}, cap=1)
        r = router(warm, cold, timeout=5)
        held = await r.acquire("m")
        assert held is warm
        started = time.monotonic()
        asyncio.get_running_loop().call_later(0.1, r.release, held, True)
        waited = await r.acquire("m", cold_load_wait=2.0)  # warm came free within the patience
        first = (waited.name, time.monotonic() - started)
        started = time.monotonic()
        spilled = await r.acquire("m", cold_load_wait=0.2)  # warm still busy: past the patience, the cold one
        return first[0], first[1], spilled.name, time.monotonic() - started

    name, took, spilled, spill_took = asyncio.run(scenario())
    assert name == "warm" and took < 1.0
    assert spilled == "cold" and 0.15 <= spill_took < 1.5


def test_a_model_about_to_expire_is_not_counted_as_loaded() -> None:
    now = time.time()
    soon, later = backend("soon", {"m"}, loaded={"m"}), backend("later", {"m"}, loaded={"m"})
    soon.expires, later.expires = {"m": now + 2}, {"m": now + 600}
    r = router(soon, later)
    assert all(r.pick("m") is later for _ in range(20))
    later.inflight = later.max_concurrency
    assert r.pick("m", patient=True) is None  # wait for the one that keeps it
    assert r.pick("m") is soon  # not patient: the one about to expire still has it, better than loading


def test_a_release_wakes_the_waiter_that_can_use_the_backend() -> None:
    async def scenario() -> str:
        a, b = backend("a", {"m1"}, cap=1), backend("b", {"m2"}, cap=1)
        r = router(a, b, timeout=5)
        held_a, held_b = await r.acquire("m1"), await r.acquire("m2")
        first = asyncio.create_task(r.acquire("m1", priority=5))  # waits for a
        second = asyncio.create_task(r.acquire("m2"))  # waits for b
        await asyncio.sleep(0.01)
        started = time.monotonic()
        r.release(held_b, ok=True)  # b frees: the m2 waiter gets it at once, though m1's waiter ranks higher
        got = await asyncio.wait_for(second, 0.5)
        assert time.monotonic() - started < 0.5
        r.release(held_a, ok=True)
        await first
        return got.name

    assert asyncio.run(scenario()) == "b"


def test_free_memory_decides_among_cold_backends_and_evicts_in_the_local_view() -> None:
    full, roomy = backend("full", {"big", "other"}, loaded={"other"}), backend("roomy", {"big"})
    full.memory, roomy.memory = 10, 10
    full.loaded_sizes = {"other": 8}
    full.described = roomy.described = {"big": {"size": 6}}
    r = router(full, roomy)
    assert full.free_memory() == 2 and not full.fits(6) and roomy.fits(6)
    assert all(r.pick("big") is roomy for _ in range(10))
    full.note_loaded("big", time.time() + 60)  # it loaded there anyway: "other" cannot stay beside it
    assert full.loaded == {"big"} and full.free_memory() == 4
    full.note_loaded("big", time.time() - 1)  # keep_alive 0: gone after the request
    assert full.loaded == frozenset()


def test_without_its_memory_a_backend_holds_as_many_models_as_it_was_seen_to():
    b = backend("b", {"m1", "m2", "m3"}, loaded={"m1"})
    b.note_loaded("m2", time.time() + 60)
    assert b.loaded == {"m1", "m2"}  # never seen holding any: no guess
    b.loaded, b.expires, b.most_loaded = frozenset({"m1"}), {"m1": time.time() + 30}, 1
    b.note_loaded("m2", time.time() + 60)
    assert b.loaded == {"m2"}  # it was only ever seen with one: m1 made room
    b.most_loaded = 2
    b.note_loaded("m3", time.time() + 90)
    assert b.loaded == {"m2", "m3"}
