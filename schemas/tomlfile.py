"""Configuration files in TOML, validated into a model, with errors that name the file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from schemas.redact import describe, dotted

M = TypeVar("M", bound=BaseModel)
SECRET_KEYED = frozenset({"api_keys"})
"""Tables whose keys are never named in an error: an API key pasted where its hash belongs."""


def load_toml(model: type[M], path: Path, what: str, variable: str) -> M:
    """`path` validated as `model`; ValueError saying which file (`what`, set by
    `variable`) is missing or invalid, and why."""
    try:
        return model.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist ({variable})") from None
    except OSError as exc:  # a directory (a mount), no permission
        raise ValueError(f"cannot read {what} {path} ({variable}): {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path} is invalid: not UTF-8 text (byte {exc.start})") from None
    except ValidationError as exc:  # one line, without the values (a key hash, a URL)
        raise ValueError(f"{what} {path} is invalid: {describe(exc, where=_key)}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{what} {path} is invalid: {exc}") from exc


def _key(loc: tuple[str | int, ...]) -> str:
    """An error's key in the file, dotted; none for the file as a whole (its problem alone)."""
    if len(loc) > 1 and loc[0] in SECRET_KEYED:
        loc = (loc[0], "(a key)", *loc[2:])
    return dotted(loc)
