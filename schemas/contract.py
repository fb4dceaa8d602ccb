"""The base of llmq's records that refuse fields they do not know."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


class Contract(BaseModel):
    """A model of llmq's records that refuses fields it does not know (extra="forbid": a
    request, its tools, an answer's messages), written without its fields at None: a record
    that uses no newer field reads the same to an older reader (a rolling upgrade). So a
    field added later defaults to None; one with any other default is always written, and
    every reader of the version before refuses every record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_serializer(mode="wrap")
    def _nones_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {name: value for name, value in handler(self).items() if value is not None}
