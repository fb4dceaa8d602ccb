"""A catalog model's tokenizer: llmq encodes prompts with the one vLLM decodes answers with
(the catalog's `tokenizer`, its revision and remote code), and vLLM's start-up check refuses
what would part them, each refusal naming the model. No engine starts."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from schemas.catalog import ModelSpec
from workers.engine_args import engine_kwargs

with warnings.catch_warnings():  # vLLM warns as it loads
    warnings.simplefilter("ignore", DeprecationWarning)
    from vllm.engine.arg_utils import AsyncEngineArgs

    from workers import vllm_engine
    from workers.vllm_engine import engine_args, load_tokenizer

pytestmark = pytest.mark.timeout(60)


def _tokenizer(where: Path, words: list[str]) -> Path:
    """A word-level tokenizer in `where`: each word's id is its place in `words`, from 1."""
    vocabulary = {word: i for i, word in enumerate(["[UNK]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")  # type: ignore[no-untyped-call]
    fast.save_pretrained(where)
    return where


def _args(spec: ModelSpec, checkpoint: Path) -> AsyncEngineArgs:
    """The engine arguments vLLM gets: llmq's defaults, then the catalog's."""
    return AsyncEngineArgs(
        **engine_kwargs(spec, checkpoint, on_gpu=False, gpu_memory_utilization=0.5)
    )


def test_prompts_are_encoded_with_the_tokenizer_the_catalog_names(tmp_path: Path) -> None:
    """A quantised checkpoint often has another's tokenizer, or none: llmq loaded the
    checkpoint's, and crashed, or encoded with one vocabulary what vLLM decoded with another."""
    checkpoint = _tokenizer(tmp_path / "checkpoint", ["hello", "world"])
    named = _tokenizer(tmp_path / "base", ["world", "x", "hello"])
    spec = ModelSpec(name="m", source=str(checkpoint), engine_args={"tokenizer": str(named)})
    assert load_tokenizer(_args(spec, checkpoint)).encode("hello world") == [3, 1]
    own = ModelSpec(name="m", source=str(checkpoint))
    assert load_tokenizer(_args(own, checkpoint)).encode("hello world") == [1, 2]


@pytest.mark.parametrize(
    ("given", "revision"),
    [({}, None), ({"revision": "r1"}, "r1"), ({"revision": "r1", "tokenizer_revision": "t"}, "t")],
)
@pytest.mark.parametrize("remote_code", [False, True])
def test_the_tokenizer_is_of_vllms_revision_and_remote_code(
    monkeypatch: pytest.MonkeyPatch, given: dict[str, str], revision: str | None, remote_code: bool
) -> None:
    """As vLLM's ModelConfig: `tokenizer_revision`, else the checkpoint's `revision` (a hub
    repository's; no local directory has one, so transformers' call is recorded here)."""
    calls: list[tuple[str, dict[str, Any]]] = []

    class Recorded:
        @staticmethod
        def from_pretrained(source: str, **kwargs: Any) -> None:
            calls.append((source, kwargs))

    monkeypatch.setattr(vllm_engine, "AutoTokenizer", Recorded)
    spec = ModelSpec(name="m", source="s", engine_args={**given, "trust_remote_code": remote_code})
    load_tokenizer(_args(spec, Path("/ckpt")))
    assert calls == [("/ckpt", {"revision": revision, "trust_remote_code": remote_code})]


@pytest.mark.parametrize("mode", ["mistral", "deepseek_v32", "Slow"])
def test_a_tokenizer_mode_other_than_transformers_is_refused(tmp_path: Path, mode: str) -> None:
    spec = ModelSpec(name="m", source="s", engine_args={"tokenizer_mode": mode})
    with pytest.raises(ValueError, match=rf"model 'm'.*tokenizer_mode '{mode.lower()}'.*'hf'"):
        engine_args(spec, tmp_path, 0.5)


def test_a_wrong_key_in_a_nested_table_is_told_as_vllms_refusal(tmp_path: Path) -> None:
    """AsyncEngineArgs refuses it before the engine's config is made; it came without the
    model's name."""
    spec = ModelSpec(name="m", source="s", engine_args={"compilation_config": {"levle": 3}})
    with pytest.raises(ValueError, match=r"(?s)model 'm': vLLM refused its engine_args.*levle"):
        engine_args(spec, tmp_path, 0.5)
