"""Progress of long command-line steps: a tqdm bar on a terminal, log lines otherwise.

tqdm draws nothing when stderr is not a terminal (a log file, CI, a pipe), so a long ``hemo
evaluate`` or ``hemo predict`` there was silent until its end. :func:`progress` keeps the bar on
a terminal and otherwise logs one line every :data:`LOG_EVERY_S` seconds, and one at the end
when the step took that long::

    with progress(total=len(rows), desc="predict", unit="scan") as advance:
        for row in rows:
            ...
            advance(1)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

log = logging.getLogger(__name__)

#: Seconds between two progress lines when stderr is not a terminal.
LOG_EVERY_S = 30.0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


@contextmanager
def progress(
    total: int | None,
    desc: str,
    unit: str,
    *,
    stream: TextIO | None = None,
    every_s: float = LOG_EVERY_S,
) -> Iterator[Callable[[int], None]]:
    """Report how far a step is; yields ``advance(n)`` to call as items are done.

    Args:
        total: Items in all, or ``None`` when unknown (a folder walked as it is read).
        desc: What is done (``"predict"``).
        unit: One item (``"scan"``).
        stream: Where a bar goes (default ``sys.stderr``); log lines go through logging.
        every_s: Seconds between log lines off a terminal.
    """
    out = sys.stderr if stream is None else stream
    if _is_terminal(out):
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit=unit, file=out) as bar:
            yield bar.update
        return
    start = last = time.monotonic()
    done = 0

    def line() -> str:
        of = f" of {total:,}" if total is not None else ""
        rate = done / max(time.monotonic() - start, 1e-9)
        return f"{desc}: {done:,}{of} {unit}s ({rate:.1f} {unit}s/s)"

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            log.info("%s", line())

    yield advance
    if time.monotonic() - start >= every_s:
        log.info("%s, done", line())


__all__ = ["LOG_EVERY_S", "progress"]
