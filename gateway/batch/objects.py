"""The Batch API's objects as OpenAI shows them, from the fields the store keeps."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

TIMES = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def file_object(fields: Mapping[str, str]) -> dict[str, Any]:
    """OpenAI's `file`."""
    return {
        "id": fields["id"],
        "object": "file",
        "bytes": int(fields["bytes"]),
        "created_at": int(fields["created_at"]),
        "filename": fields["filename"],
        "purpose": fields["purpose"],
        "status": "processed",
        "expires_at": int(fields["expires_at"]) if "expires_at" in fields else None,
        "status_details": None,
    }


def batch_object(fields: Mapping[str, str]) -> dict[str, Any]:
    """OpenAI's `batch`, with every timestamp reached and the request counts."""
    completed, failed = int(fields.get("completed", 0)), int(fields.get("failed", 0))
    input_tokens, output_tokens, cached = (
        int(fields.get(k, 0)) for k in ("input_tokens", "output_tokens", "cached_tokens")
    )
    errors = fields.get("errors")
    return {
        "id": fields["id"],
        "object": "batch",
        "endpoint": fields["endpoint"],
        "model": fields.get("model"),
        "errors": None if errors is None else {"object": "list", "data": json.loads(errors)},
        "input_file_id": fields["input_file_id"],
        "completion_window": fields["completion_window"],
        "status": fields["status"],
        "output_file_id": fields.get("output_file_id"),
        "error_file_id": fields.get("error_file_id"),
        "created_at": int(fields["created_at"]),
        "expires_at": int(float(fields["expires_at"])),
        **{t: int(fields[t]) if t in fields else None for t in TIMES},
        "request_counts": {
            "total": int(fields.get("total", 0)),
            "completed": completed,
            "failed": failed,
        },
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "metadata": json.loads(fields.get("metadata", "null")),
    }
