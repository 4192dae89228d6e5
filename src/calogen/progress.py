"""A long silent phase announced on stderr, without breaking the one-line error rule.

On a terminal the line ``what ...`` appears when the phase starts and gets its duration when
it ends; if the phase fails the line is erased, so that the error stays the only line. In a
log (stderr not a terminal) one line ``what ... N.N s`` is written when the phase ends, and
nothing if it fails.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType


class Phase:
    """Context manager: ``with Phase("evaluate: figures", show=True): ...``."""

    def __init__(self, what: str, show: bool = True) -> None:
        self.what, self.show = what, show
        self.live = False

    def __enter__(self) -> Phase:
        self.start = time.perf_counter()
        self.live = self.show and sys.stderr.isatty()
        if self.live:
            print(f"{self.what} ...", end="", file=sys.stderr, flush=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.show:
            return
        if exc_type is not None:
            if self.live:
                print("\r\x1b[K", end="", file=sys.stderr, flush=True)  # erase the line
            return
        seconds = f"{time.perf_counter() - self.start:.1f} s"
        if self.live:
            print(f" {seconds}", file=sys.stderr, flush=True)
        else:
            print(f"{self.what} ... {seconds}", file=sys.stderr, flush=True)
