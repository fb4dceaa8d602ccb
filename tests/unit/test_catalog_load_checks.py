"""What a models file may not hold, refused at load with a line naming the file and why:
infinite prices, model names whose work topics Kafka confuses, a tokenizer vLLM skips,
text that is not UTF-8, and a catalog-wide inconsistency."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.catalog import Catalog, ModelSpec


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("field", ["price_prompt_per_mtok", "price_completion_per_mtok"])
@pytest.mark.parametrize("value", ["inf", "+inf", "nan"])
def test_a_price_that_is_no_finite_number_is_refused(
    tmp_path: Path, field: str, value: str
) -> None:
    """An infinite price loaded, then failed every budgeted request at admission."""
    path = _write(
        tmp_path, f'default = "m"\n[[models]]\nname = "m"\nsource = "s"\n{field} = {value}'
    )
    with pytest.raises(ValueError, match=rf"models\.0\.{field}: Input should be a finite number"):
        Catalog.load(path)


def test_model_names_that_differ_only_in_dot_and_underscore_are_refused() -> None:
    """Kafka refuses a topic whose name collides with another's but for '.' and '_'."""
    models = [ModelSpec(name=n, source="s") for n in ("a.b", "c", "a_b")]
    with pytest.raises(ValidationError, match=r"models 'a\.b' and 'a_b' differ only in"):
        Catalog(default="c", models=models)
    assert Catalog(default="a.b", models=models[:2]).names == ["a.b", "c"]


def test_skipping_vllms_tokenizer_is_refused_saying_why() -> None:
    """vLLM without its tokenizer answers token ids and no text."""
    with pytest.raises(ValidationError, match=r"cannot set 'skip_tokenizer_init'.*into text"):
        ModelSpec(name="m", source="s", engine_args={"skip_tokenizer_init": True})


def test_a_file_that_is_not_utf8_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_bytes(b'default = "\xff"\n')
    with pytest.raises(ValueError) as info:
        Catalog.load(path)
    assert str(info.value) == f"models file {path} is invalid: not UTF-8 text (byte 11)"


def test_a_catalog_wide_problem_is_told_without_a_field_path(tmp_path: Path) -> None:
    """It was labelled `request:`, a name no models file has."""
    path = _write(tmp_path, 'default = "chat"\n[[models]]\nname = "a"\nsource = "s"\n')
    with pytest.raises(ValueError) as info:
        Catalog.load(path)
    told = "Value error, default model 'chat' is not one of ['a']"
    assert str(info.value) == f"models file {path} is invalid: {told}"
