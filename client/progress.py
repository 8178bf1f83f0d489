"""A Git-style progress meter on stderr: `Uploading gitmld objects:  45% (3/7), 1.2 GiB | 180 MiB/s`.

Long operations (push, prefetch, fsck --verify) should look and behave like Git's own: one
line rewritten in place, throttled so a fast loop does not spend its time printing, shown
only on a terminal unless asked for, and ending with ", done.".
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")
RATE_WINDOW = 2.0  # seconds of samples behind the transfer rate: recent enough to follow changes


def human_size(n: float) -> str:
    """Bytes as Git prints them: `512 bytes`, `1.50 KiB`, `12.3 MiB`, `1.2 GiB` (binary units)."""
    if n < 1024:
        return f"{int(n)} bytes"
    value = float(n)
    for unit in _UNITS[1:]:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            break
    if value >= 100:
        return f"{value:.0f} {unit}"
    if value >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def progress_enabled(requested: bool, stream: TextIO | None = None) -> bool:
    """Progress is on when asked for (`--progress`) or when stderr is a terminal, like Git."""
    if requested:
        return True
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """One progress line. `update()` is cheap to call per item or per chunk: it redraws at most
    every `interval` seconds (and whenever the percentage changes, at most every 0.05 s)."""

    def __init__(
        self,
        title: str,
        total: int | None = None,
        *,
        bytes_mode: bool = False,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.title = title
        self.total = total
        self.bytes_mode = bytes_mode  # the counter itself is bytes (no separate object count)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.clock = clock
        self.done = 0
        self.nbytes: int | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._last_draw: float | None = None
        self._last_percent: int | None = None
        self._last_len = 0
        self._finished = False

    def update(self, done: int, *, total: int | None = None, nbytes: int | None = None) -> None:
        """Set the counter (items, or bytes in bytes mode) and optionally the bytes moved so far."""
        self.done = done
        if total is not None:
            self.total = total
        if nbytes is not None:
            self.nbytes = nbytes
        now = self.clock()
        moved = self._bytes_moved()
        if moved is not None:
            self._samples.append((now, moved))
            while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
                self._samples.popleft()
        if not self.enabled:
            return
        percent = self._percent()
        due = self._last_draw is None or now - self._last_draw >= self.interval
        changed = percent != self._last_percent and now - (self._last_draw or 0.0) >= 0.05
        if due or changed:
            self._draw(now, end="\r")

    def finish(self, note: str = "done") -> None:
        """Draw the final line, `..., done.`, and move to the next line (once); a meter that
        never moved (the work was already done) prints nothing, as Git's do."""
        if self._finished:
            return
        self._finished = True
        if self.enabled and self._last_draw is not None:
            self._draw(self.clock(), end=f", {note}.\n" if note else "\n")

    def render(self) -> str:
        """The progress line without terminator; exposed so tests can check the format."""
        parts = [f"{self.title}: "]
        percent = self._percent()
        if self.bytes_mode:
            counter = human_size(self.done)
            if self.total is not None:
                counter = f"{counter}/{human_size(self.total)}"
        else:
            counter = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        if percent is not None:
            parts.append(f"{percent:3d}% ({counter})")
        else:
            parts.append(counter)
        if self.nbytes is not None and not self.bytes_mode:
            parts.append(f", {human_size(self.nbytes)}")
        rate = self._rate()
        if rate is not None:
            parts.append(f" | {human_size(rate)}/s")
        return "".join(parts)

    def _percent(self) -> int | None:
        if not self.total:
            return None
        return min(100, self.done * 100 // self.total)

    def _bytes_moved(self) -> int | None:
        return self.done if self.bytes_mode else self.nbytes

    def _rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        if t1 - t0 <= 0:
            return None
        return max(0, b1 - b0) / (t1 - t0)

    def _draw(self, now: float, end: str) -> None:
        line = self.render()
        pad = " " * max(0, self._last_len - len(line))  # erase what a longer previous line left
        self.stream.write(f"{line}{pad}{end}")
        self.stream.flush()
        self._last_draw = now
        self._last_percent = self._percent()
        self._last_len = len(line)
