"""What one token may hold at once: open event streams, and unfinished jobs.

Both are per API process (a second head counts its own): they bound what one token can make this
process and its store do, not a cluster-wide allowance."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool

from clusterai.errors import BadInput, LimitReached
from clusterai.store.protocol import JobStore


class StreamSlots:
    """Event streams open per token. Used on the event loop only (no lock needed)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open: dict[str, int] = {}

    def take(self, key: str) -> bool:
        held = self._open.get(key, 0)
        if held >= self.limit:
            return False
        self._open[key] = held + 1
        return True

    def give_back(self, key: str) -> None:
        held = self._open.get(key, 0) - 1
        if held > 0:
            self._open[key] = held
        else:
            self._open.pop(key, None)

    def held(self, key: str) -> int:
        return self._open.get(key, 0)


class QueuedQuota:
    """Unfinished jobs (pending, queued, running) per owner, at most `limit`.

    Counting them on every submission would put a count over the store's unfinished jobs in front of
    each request. Instead each owner has an upper bound: the last exact count plus what this process
    admitted since (jobs only finish, so it never undercounts what this process sent). The store is
    counted again when that bound is older than `ttl` (other processes submit too, and jobs finish),
    or when it says a submission would cross the limit, but then at most once per `recount` seconds:
    an owner at its limit sending request after request costs one count a second, not one each."""

    def __init__(self, store: JobStore, limit: int, *, ttl: float = 30.0, recount: float = 1.0):
        self.store = store
        self.limit = limit
        self.ttl = ttl
        self.recount = recount
        self._bounds: dict[str, tuple[int, float]] = {}  # owner -> (upper bound, when counted)

    async def admit(self, owner: str, jobs: int) -> None:
        """Let `jobs` more in for `owner`, or raise: LimitReached (429), or BadInput for a batch that
        could never fit."""
        if self.limit <= 0:
            return
        if jobs > self.limit:
            raise BadInput(f"a batch of {jobs} jobs is over the limit of {self.limit} unfinished jobs per token "
                           "(api.max_queued_per_token); send smaller batches")
        now = time.monotonic()
        bound = self._bounds.get(owner)
        if bound is None or now - bound[1] >= (self.ttl if bound[0] + jobs <= self.limit else self.recount):
            bound = (await run_in_threadpool(self.store.unfinished_of, owner), time.monotonic())
            if len(self._bounds) > 100_000:
                self._bounds.clear()  # bound the memory; the next submissions count again
        if bound[0] + jobs > self.limit:
            self._bounds[owner] = bound
            raise LimitReached(f"this token's jobs that have not finished ({bound[0]}) and these {jobs} would be "
                               f"over its limit of {self.limit} (api.max_queued_per_token); submit again when "
                               "some have finished", retry_after=max(self.recount, 5.0))
        self._bounds[owner] = (bound[0] + jobs, bound[1])
