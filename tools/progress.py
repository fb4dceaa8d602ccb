"""Progress bars fit for where they are written: tqdm's bar, redrawn in place, on a terminal;
in a log or a pipe a plain line now and then, not a bar redrawn with carriage returns
several times a second."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

LOG_EVERY_S = 30.0
"""The least time between two plain lines (the first and the last are always written)."""
PLAIN = "{n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
"""A plain line after its description: tqdm's own numbers, without the bar."""

if TYPE_CHECKING:  # the stubs' tqdm is generic, the runtime's is not
    _Bar = tqdm[Any]
else:
    _Bar = tqdm


class Progress(_Bar):
    """tqdm's bar where its file (stderr unless given) is a terminal; elsewhere a plain line
    when it starts, at most every LOG_EVERY_S as it goes (however often it is refreshed),
    and when it closes."""

    def __init__(self, iterable: Iterable[Any] | None = None, **kwargs: Any) -> None:
        kwargs["file"] = kwargs.get("file") or sys.stderr
        self._plain = not kwargs["file"].isatty()
        self._said = -math.inf
        if self._plain:  # close() writes the last line itself: leave would add an empty one
            kwargs.update(bar_format=PLAIN, mininterval=LOG_EVERY_S, leave=False)
        super().__init__(iterable, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> None:
        if not self._plain:
            return super().display(msg, pos)
        if msg is None and time.monotonic() - self._said >= LOG_EVERY_S:
            self._line()
        return None

    def clear(self, nolock: bool = False) -> None:
        if not self._plain:  # a plain line is never redrawn: nothing to clear
            super().clear(nolock)

    def close(self) -> None:
        if self._plain and not self.disable:
            self._line()
        super().close()

    def _line(self) -> None:
        """`desc: numbers` (the numbers alone without a desc); set_description's ": " on
        the end of the desc is tqdm's, and said once."""
        self._said = time.monotonic()
        desc = self.desc.removesuffix(": ")
        self.fp.write(f"{desc}: {self}\n" if desc else f"{self}\n")
        self.fp.flush()
