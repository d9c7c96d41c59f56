"""Progress for steps without a natural count (an export in a child process, one batched generate call): a tqdm
line with the elapsed time, refreshed while the step runs; off when stderr is not a terminal (tqdm's disable=None).
Steps with a count use tqdm directly."""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator


@contextlib.contextmanager
def busy(desc: str, interval_s: float = 0.5) -> Iterator[None]:
    from tqdm.auto import tqdm
    bar = tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}", leave=False, disable=None)
    stop = threading.Event()

    def tick():
        while not stop.wait(interval_s):
            bar.refresh()

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        bar.close()
