"""The LLMQ_ variables llmq reads, so that a misspelt one is said rather than ignored: the
settings classes read only the names they know, and a typo leaves a default in force."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping

from pydantic_settings import BaseSettings

SETTINGS_MODULES = (
    "schemas.settings",
    "llmq.settings",
    "streams.settings",
    "workers.settings",
    "gateway.settings",
    "autoscaler.settings",
    "tools.stack.settings",
)
OTHERS = frozenset(
    {
        "LLMQ_VENV",  # the Makefile's venv
        "LLMQ_GRAFANA_PORT",  # docker-compose.yml
        "LLMQ_REDIS_PASSWORD",  # docker-compose.yml, for a TLS Redis URL
        "LLMQ_API_URL",  # examples/
        "LLMQ_API_KEY",  # examples/
    }
)
"""Variables read outside the settings classes."""


def read() -> set[str]:
    """Every variable some settings class reads: its prefix and field name, or the alias it
    is read by instead (VLLM_CPU_KVCACHE_SPACE); upper case, as they are read whatever the
    case."""
    names = set(OTHERS)
    for module_name in SETTINGS_MODULES:
        module = importlib.import_module(module_name)
        for cls in vars(module).values():
            if isinstance(cls, type) and issubclass(cls, BaseSettings):
                prefix = cls.model_config.get("env_prefix", "")
                for name, field in cls.model_fields.items():
                    alias = field.validation_alias
                    names.add((alias if isinstance(alias, str) else f"{prefix}{name}").upper())
    return names


def unread(environ: Mapping[str, str]) -> list[str]:
    """A line for each LLMQ_ variable set that nothing reads, with the likely one meant."""
    known = read()
    lines = []
    for name in sorted(
        n for n in environ if n.upper().startswith("LLMQ_") and n.upper() not in known
    ):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        meant = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"{name} is set, but no part of llmq reads it{meant}")
    return lines
