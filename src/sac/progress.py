"""Progress bars: redrawn in place on a terminal; in a log (stderr not a terminal), a plain line a minute."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm

LOG_INTERVAL_S = 60.0  # seconds between a bar's lines in a log


class _Lines:
    """A stream that turns tqdm's in-place redraws (carriage returns, cursor moves) into whole lines."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._last = ""

    def write(self, text: str) -> None:
        for line in text.replace("\x1b[A", "\n").replace("\r", "\n").split("\n"):
            line = line.rstrip()
            if line.strip() and line != self._last:  # a bar's last update and its close draw the same line
                self._stream.write(line + "\n")
                self._last = line

    def flush(self) -> None:
        self._stream.flush()


def on_terminal() -> bool:
    """Whether stderr, where bars and notes go, is a terminal (bars are redrawn in place there)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(iterable: Iterable | None = None, shown: bool = True, **settings) -> tqdm:
    """``tqdm(iterable, **settings)``, hidden unless ``shown``; off a terminal its redraws become a line at most
    every ``LOG_INTERVAL_S`` seconds, so a batch job's log holds readable progress, not thousands of redraws,
    and transient bars (``leave=False``: the tiles of one image or block) are not written at all."""
    if shown and not on_terminal():
        shown = settings.get("leave", True)
        settings = {
            "file": _Lines(sys.stderr),
            "mininterval": LOG_INTERVAL_S,
            "miniters": 1,  # else tqdm's monitor thread redraws a bar 10 s after each of its lines
            "ascii": True,
            **settings,
        }
    return tqdm(iterable, disable=not shown, **settings)
