"""What may reach a log: prompts and answers only when asked for (LLMQ_LOG_CONTENT),
validation errors without the values that failed, URLs without their passwords."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import ValidationError

CONTENT_LOGGER = "llmq.content"
content_log = logging.getLogger(CONTENT_LOGGER)
"""The only logger that may carry prompts and answers, at DEBUG; silent until
`log_content(True)`, whatever the root logger's level."""
_SILENT = logging.CRITICAL + 1
content_log.setLevel(_SILENT)

MAX_NAME_CHARS = 40
SAFE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
MASK = "***"


def log_content(enabled: bool) -> None:
    """Let prompts and answers through `content_log` (LLMQ_LOG_CONTENT), or silence it."""
    content_log.setLevel(logging.DEBUG if enabled else _SILENT)


def describe(
    exc: ValidationError,
    limit: int = 5,
    where: Callable[[tuple[str | int, ...]], str] | None = None,
) -> str:
    """Pydantic's errors as one line a person can act on, `field.path: problem; ...`, without
    the input values (str(exc) and exc.errors() carry them: prompts, in a request). `where`
    names an error's location instead of its dotted path; where it names none, the problem
    stands alone."""
    name = where or _path
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = []
    for err in errors[:limit]:
        at = name(err["loc"])
        parts.append(f"{at}: {err['msg']}" if at else err["msg"])
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def explain(exc: BaseException) -> str:
    """An exception for a log line or an error reply: a ValidationError as `describe` has it
    (its str() quotes the inputs), anything else as `Type: message`."""
    if isinstance(exc, ValidationError):
        return describe(exc)
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def _path(loc: tuple[str | int, ...]) -> str:
    return dotted(loc) or "request"


def dotted(loc: tuple[str | int, ...]) -> str:
    """An error's location as it may be logged, dotted; empty for the value as a whole."""
    return ".".join(field_name(p) for p in loc)


def field_name(part: str | int) -> str:
    """A field name or index as it may be logged: an unknown key is the app's choice, so it
    is cut short and quoted (it could hold a newline that forges a log line)."""
    text = str(part)
    return text if SAFE_NAME.fullmatch(text) else ascii(text[:MAX_NAME_CHARS])


def mask_url(url: str) -> str:
    """The URL with its password (in the user part or a `password` query field) masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:{MASK}@{host}"
    query = [
        (k, MASK if "password" in k.lower() else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/*")))
