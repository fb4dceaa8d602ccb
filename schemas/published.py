"""JSON Schemas of the records apps exchange with llmq over Kafka, for apps in any language:
`python -m schemas.published` writes them to docs/schemas/ (a unit test keeps them current).

A schema gives each record's shape (fields, types, bounds); the stream processor checks more
than a schema can say (a model of the catalog, the messages' order, the whole record's size),
and answers a request it refuses with an error reply naming why."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from schemas.alerts import BudgetAlert
from schemas.contract import Contract
from schemas.metering import MeteringEvent
from schemas.request import InferenceRequest
from schemas.result import InferenceResult
from schemas.stream import TokenDelta

DOCS = Path(__file__).resolve().parents[1] / "docs" / "schemas"

PUBLISHED: dict[str, tuple[type[BaseModel], Literal["validation", "serialization"]]] = {
    "inference-request": (InferenceRequest, "validation"),  # what an app writes
    "inference-result": (InferenceResult, "serialization"),  # and what it reads
    "token-delta": (TokenDelta, "serialization"),
    "metering-event": (MeteringEvent, "serialization"),
    "budget-alert": (BudgetAlert, "serialization"),
}
"""Each file's name and its record: a request as the stream processor reads it, the others
as llmq writes them."""


def rendered() -> dict[str, str]:
    """Each file's name and text."""
    found = {}
    for name, (model, mode) in PUBLISHED.items():
        schema = model.model_json_schema(mode=mode)
        if mode == "serialization":
            schema = _as_written(schema, model.model_json_schema(mode="validation"))
        found[f"{name}.json"] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return found


def _as_written(written: dict[str, Any], read: dict[str, Any]) -> dict[str, Any]:
    """A record's schema as llmq writes it: every field present, null when it has no value,
    but in the objects of OpenAI's (Contract: an answer's message, its tool calls), which
    leave such a field out; their schema is the one they are read by (`read`), whose
    fields without a default are the ones always there."""
    defs = written.pop("$defs", {})
    contracts = {model.__name__ for model in _subclasses(Contract)}
    left_out = {name for name in read.get("$defs", {}) if name in contracts or name not in defs}
    _all_present(written)
    for name, schema in defs.items():
        if name not in left_out:
            _all_present(schema)
    defs.update({name: read["$defs"][name] for name in sorted(left_out)})
    return {"$defs": dict(sorted(defs.items())), **written} if defs else written


def _subclasses(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = []
    for sub in model.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _all_present(schema: Any) -> None:
    """Every field of the objects in `schema` is required."""
    if isinstance(schema, list):
        for value in schema:
            _all_present(value)
    elif isinstance(schema, dict):
        fields = schema.get("properties")
        if isinstance(fields, dict):  # field names to their schemas
            schema["required"] = list(fields)
            for value in fields.values():
                _all_present(value)
        for key, value in schema.items():
            if key != "properties":
                _all_present(value)


def main() -> int:
    DOCS.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (DOCS / name).write_text(text, encoding="utf-8")
        print(DOCS / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
