"""Dynamic batching and keep-alive for a served model.

One engine thread per model does everything that touches its weights, one step after another:
loading, generation rounds, embedding calls, unloading. So none of them can race, and an unload
never lands in the middle of a generation. Requests queue for it; a round takes every queued
request that can share it (the same sampling settings, up to `max_batch`), left-pads the prompts
behind an attention mask and decodes them together, one forward pass per token for the whole
batch. Each row keeps its own token budget, stop strings, stream and cancellation, and leaves the
batch when it ends; requests that arrive meanwhile wait for the next round.

Keep-alive follows Ollama: the latest request's `keep_alive` says how long the model stays loaded
once nothing runs on it (0: unload then; forever: never unload).
"""

from __future__ import annotations

import atexit
import logging
import math
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from clusterai.core.keep_alive import FOREVER, GO_MAX_DURATION
from clusterai.errors import BadInput

if TYPE_CHECKING:
    from clusterai.llm.models import Options, Usage

log = logging.getLogger("clusterai.llm")

GATHER_SECONDS = 0.005
LINGER_SECONDS = 2.0  # an idle engine thread ends after this; the next request starts another
PEAK_SECONDS = 2.0  # how long a burst of concurrent requests makes a round wait for its like


# -- what waits on a model's queue --------------------------------------------------------------


class Work:
    """A request on a model's queue; it counts as running on the model from submission to retirement."""

    def __init__(self, keep_alive: float):
        self.keep_alive = keep_alive
        self.arrived = time.monotonic()
        self.load_seconds = 0.0  # what loading the model for it took (0: it was loaded)
        self.error: BaseException | None = None
        self.retired = False
        self.settled = threading.Event()  # retired, and the model's state updated for it

    def key(self) -> Hashable | None:
        """Works with equal keys may share a round; None runs alone."""
        return None

    def end(self) -> None:
        """The answer is complete (or failed): wake whoever waits for it."""


class Load(Work):
    """Load the model if it is not (Ollama's request without a prompt)."""


class Unload(Work):
    """Unload the model once nothing runs on it (Ollama's keep_alive 0 without a prompt)."""


class Embed(Work):
    def __init__(self, texts: list[str], keep_alive: float):
        super().__init__(keep_alive)
        self.texts = texts
        self.vectors: list[list[float]] = []
        self.tokens = 0

    def key(self) -> Hashable | None:
        return "embed"


class Row(Work):
    """One generation: its prompt (a text, or chat messages the engine templates), its budget, and
    the text it has made; pieces go to `pieces` (all in one at the end unless `stream`), None marks
    the end. Not streaming spares a thread switch per token for answers read whole."""

    def __init__(self, text: str | list[dict[str, str]], options: Options, usage: Usage, keep_alive: float,
                 stream: bool = True):
        super().__init__(keep_alive)
        self.text = text
        self.options = options
        self.usage = usage
        self.stream = stream
        self.pieces: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.cancelled = threading.Event()
        self.prompt: list[int] = []
        self.budget = 0
        self.tokens: list[int] = []
        self._decoded = ""  # the text of `tokens`, as far as it decodes to whole characters
        self._sent = 0  # how much of it went out: the rest may be the start of a stop string
        self._prefix = self._read = 0  # token offsets of the incremental decoding

    def key(self) -> Hashable | None:
        return self.options.batch_key()

    def end(self) -> None:
        if not self.stream and self._sent:
            self.pieces.put(self._decoded[:self._sent])
        self.pieces.put(None)

    def take(self, token: int, decode: Callable[[list[int]], str], eos: frozenset[int]) -> bool:
        """Add a generated token and stream what it completes; False once the row is done."""
        self.tokens.append(token)
        self.usage.completion_tokens = len(self.tokens)
        ended = token in eos or len(self.tokens) >= self.budget
        if self._advance(decode, final=ended) or token in eos:
            self.usage.done_reason = "stop"
        elif ended:
            self.usage.done_reason = "length"
        else:
            return True
        return False

    def _advance(self, decode: Callable[[list[int]], str], final: bool) -> bool:
        """Stream what the new tokens complete, holding back what may begin a stop string; True when
        a stop string ends the row. Each step decodes only the last tokens: a token's text can
        depend on the one before it (a leading space), so the window starts one piece back."""
        if not (final or self.stream or self.options.stop):
            return False  # read whole, and nothing to watch for: decoded once, at the end
        before = decode(self.tokens[self._prefix:self._read])
        after = decode(self.tokens[self._prefix:])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self._decoded += after[len(before):]
            self._prefix, self._read = self._read, len(self.tokens)
        stops = self.options.stop
        cut = _stop_at(self._decoded, stops)
        if cut is not None:
            self._decoded = self._decoded[:cut]
        upto = len(self._decoded) if final or cut is not None else len(self._decoded) - _held(self._decoded, stops)
        if upto > self._sent:
            if self.stream:
                self.pieces.put(self._decoded[self._sent:upto])
            self._sent = upto
        return cut is not None


def _stop_at(text: str, stops: Sequence[str]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def _held(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string."""
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:k]):
                held = k
                break
    return held


# -- a generation round ---------------------------------------------------------------------------


class LanguageModel(Protocol):
    device: str
    pad_id: int
    eos_ids: frozenset[int]
    context_length: int | None

    def prompt_ids(self, text: str | list[dict[str, str]]) -> list[int]: ...
    def decode(self, tokens: list[int]) -> str: ...
    def new_cache(self) -> Any: ...
    def forward(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any: ...


def generate_round(lm: LanguageModel, rows: list[Row], retire: Callable[[Work], None]) -> None:
    """Run `rows` (the same sampling settings) as one batch until each is done; each row is retired
    as it ends, so its answer completes while the others go on."""
    import torch

    live = []
    for row in rows:
        if row.cancelled.is_set():
            retire(row)
            continue
        try:
            row.prompt = lm.prompt_ids(row.text)
            room = (lm.context_length or 1 << 30) - len(row.prompt)
            if room < 1:
                raise BadInput(f"the prompt is {len(row.prompt)} tokens: this model reads at most "
                               f"{lm.context_length}")
        except Exception as exc:  # noqa: BLE001 - this row's answer (a chat template that fails, say)
            row.error = exc
            retire(row)
            continue
        row.usage.prompt_tokens = len(row.prompt)
        wanted = row.options.num_predict
        row.budget = min(room, wanted) if wanted > 0 else room  # Ollama's -1: until the context is full
        live.append(row)
    if live:
        with torch.inference_mode():
            _decode(lm, live, retire)


def _decode(lm: LanguageModel, rows: list[Row], retire: Callable[[Work], None]) -> None:
    import torch

    width = max(len(r.prompt) for r in rows)
    ids = torch.full((len(rows), width), lm.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):  # left padding: every row's next token is in the last column
        ids[i, width - len(row.prompt):] = torch.tensor(row.prompt, dtype=torch.long)
        mask[i, width - len(row.prompt):] = 1
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its own first token
    cache = lm.new_cache()
    options = rows[0].options
    generator = None
    if options.seed is not None and options.temperature > 0:
        generator = torch.Generator(device=lm.device).manual_seed(options.seed)
    logits = lm.forward(ids, mask, positions, cache)
    while True:
        picked = _pick(logits, options, generator)
        keep = []
        for j, (row, token) in enumerate(zip(rows, picked.tolist())):
            if row.cancelled.is_set():  # its client went away
                row.usage.done_reason = "stop"
                retire(row)
            elif row.take(int(token), lm.decode, lm.eos_ids):
                keep.append(j)
            else:
                retire(row)
        if not keep:
            return
        if len(keep) < len(rows):  # finished rows leave the batch, and their cache with them
            index = torch.tensor(keep, device=lm.device)
            cache.batch_select_indices(index)
            mask, positions, picked = mask[index], positions[index], picked[index]
            rows = [rows[j] for j in keep]
        last = picked.view(-1, 1)
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
        positions = positions[:, -1:] + 1
        logits = lm.forward(last, mask, positions, cache)


def _pick(logits: Any, options: Options, generator: Any) -> Any:
    """The next token of each row: the most likely, or drawn as HF's samplers draw (temperature,
    then top-k, then top-p)."""
    import torch

    if options.temperature <= 0:
        return logits.argmax(-1)
    scores = logits.float() / options.temperature
    if options.top_k > 0:
        kth = torch.topk(scores, min(options.top_k, scores.shape[-1])).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if options.top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        outside = probs.cumsum(-1) - probs > options.top_p  # the most likely token always stays
        scores = scores.scatter(-1, order, ordered.masked_fill(outside, -math.inf))
    return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(-1)


# -- the engine -----------------------------------------------------------------------------------


class Host(Protocol):
    name: str

    @property
    def loaded(self) -> bool: ...
    def load_weights(self) -> float: ...
    def unload_weights(self) -> None: ...
    def run_batch(self, batch: list[Work], retire: Callable[[Work], None]) -> None: ...


class Engine:
    """A model's queue and the thread that serves it; `in_flight` counts the requests submitted and
    not yet answered (queued or running), and the model never unloads while it is above 0."""

    def __init__(self, host: Host, *, keep_alive: float, max_batch: int, gather: float = GATHER_SECONDS):
        self.host = host
        self.max_batch = max_batch
        self.gather = gather
        self.in_flight = 0
        self._cond = threading.Condition()
        self._queue: deque[Work] = deque()
        self._keep_alive = keep_alive  # the latest request's, as in Ollama
        self._deadline: float | None = None  # monotonic; an idle model unloads then
        self._expires: float | None = None  # the same on the wall clock, for /api/ps
        self._unload_due = False
        self._unsettled: list[Work] = []  # retired, waiting for the unload their keep_alive asked
        self._peak, self._peak_at = 0, 0.0
        self._thread: threading.Thread | None = None
        self._stopping = False
        _engines.add(self)
        with self._cond:  # the model was loaded at start: its keep-alive runs from now
            self._idle()

    def submit(self, work: Work) -> None:
        with self._cond:
            self._queue.append(work)
            self.in_flight += 1
            self._keep_alive = work.keep_alive
            self._deadline, self._unload_due = None, False  # an unload not yet done is called off
            if work.arrived - self._peak_at > PEAK_SECONDS:
                self._peak = 0
            if self.in_flight >= self._peak:
                self._peak, self._peak_at = self.in_flight, work.arrived
            self._wake()

    def touch(self, keep_alive: float) -> bool:
        """Apply a load request's keep_alive at once if the model is loaded and no unload is under
        way (no need to wait behind a running round); False: it must queue."""
        with self._cond:
            if not self.host.loaded or self._unload_due or self._stopping:
                return False
            self._keep_alive = keep_alive
            if self.in_flight == 0:
                self._idle()
            return True

    def expires_at(self) -> float | None:
        """When the model unloads if nothing more comes (epoch seconds); None when it is not loaded."""
        with self._cond:
            if not self.host.loaded:
                return None
            if self.in_flight:
                return time.time() + min(self._keep_alive, GO_MAX_DURATION)
            return self._expires

    def retire(self, work: Work) -> None:
        """The work is done (or failed): answer it, and start the model's keep-alive if it was the last."""
        with self._cond:
            if work.retired:
                return
            work.retired = True
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle()
            later = self._unload_due
            if later:
                self._unsettled.append(work)
        work.end()
        if not later:
            work.settled.set()

    def _idle(self) -> None:  # under the lock, nothing in flight
        self._expires = time.time() + min(self._keep_alive, GO_MAX_DURATION)
        if self._keep_alive == 0:
            self._deadline, self._unload_due = None, True
            self._wake()
        else:
            self._unload_due = False
            self._deadline = None if self._keep_alive == FOREVER else time.monotonic() + self._keep_alive
            if self._deadline is not None:
                self._wake()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread once its round is over; what is queued then stays unanswered (for exit)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _wake(self) -> None:  # under the lock
        if self._thread is None and not self._stopping:
            self._thread = threading.Thread(target=self._run, name=f"model-{self.host.name}", daemon=True)
            self._thread.start()
        self._cond.notify()

    def _run(self) -> None:
        while True:
            batch = self._next()
            if batch is None:
                return
            if batch:
                self._serve(batch)
            self._settle()

    def _next(self) -> list[Work] | None:
        """The next round's works; [] when only an unload is due; None when the thread should end."""
        with self._cond:
            while not self._queue or self._stopping:
                if self._stopping:
                    self._thread = None
                    return None
                if self._unload_due:
                    return []
                if self._deadline is not None:
                    left = self._deadline - time.monotonic()
                    if left <= 0:
                        self._deadline, self._unload_due = None, True
                        return []
                    self._cond.wait(left)
                elif not self._cond.wait(LINGER_SECONDS) and not self._queue and self._deadline is None \
                        and not self._unload_due:
                    self._thread = None
                    return None
            return self._gather()

    def _gather(self) -> list[Work]:  # under the lock
        """The first queued work and those that can share its round. When requests have lately come
        several at once, wait a few ms for as many as there were, so that a burst makes one round."""
        key = self._queue[0].key()
        if key is None:
            return [self._queue.popleft()]
        wanted = min(self.max_batch, max(1, self._peak))
        until = self._queue[0].arrived + self.gather
        while sum(1 for w in self._queue if w.key() == key) < wanted and (left := until - time.monotonic()) > 0:
            self._cond.wait(left)
        batch = [w for w in self._queue if w.key() == key][:self.max_batch]
        taken = {id(w) for w in batch}
        self._queue = deque(w for w in self._queue if id(w) not in taken)
        return batch

    def _serve(self, batch: list[Work]) -> None:
        try:
            if not isinstance(batch[0], Unload) and not self.host.loaded:
                took = self.host.load_weights()
                for work in batch:
                    work.load_seconds = took
            if not isinstance(batch[0], (Load, Unload)):
                self.host.run_batch(batch, self.retire)
        except Exception as exc:  # noqa: BLE001 - each request of the round gets it as its answer
            for work in batch:
                if not work.retired:
                    work.error = exc
        finally:
            for work in batch:
                self.retire(work)

    def _settle(self) -> None:
        """Unload when the last request's keep_alive said 0 (or its time ran out) and nothing came
        since, then let the requests that waited for that finish."""
        with self._cond:
            due = self._unload_due and self.in_flight == 0
            self._unload_due = False
            unsettled, self._unsettled = self._unsettled, []
        if due and self.host.loaded:
            try:
                self.host.unload_weights()
            except Exception:  # the model stays loaded; nothing a request can do about it
                log.exception("model %s: unloading failed", self.host.name)
        for work in unsettled:
            work.settled.set()


_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _stop_engines() -> None:
    """Engine threads are daemons: one still inside torch (a round, an unload) while the interpreter
    shuts down can abort the process, so they end first, between two steps."""
    for engine in list(_engines):
        engine.stop()
