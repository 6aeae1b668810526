"""Produce an iterator's next items in a background thread, so that the host prepares batch t+1 while the
device runs step t.

Example::

    source = Prefetcher(map(plan.place_batch, dataset.batches(8, seed=0)))
    try:
        batch = next(source)
    finally:
        source.close()
"""
from __future__ import annotations

import queue
import threading


class Prefetcher:
    """Produce the next ``size`` items of an iterator in a background thread (order preserved).

    :meth:`close` stops the thread and waits for it (at most the time to produce the item in hand). The
    thread must not outlive the run: one still inside JAX (placing a batch on devices) when the
    interpreter shuts down is killed in the middle of a C++ call, and the process aborts
    (``terminate called after throwing an instance of ''``, exit 134) after the run has finished.
    """

    def __init__(self, iterator, size: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self._thread.start()

    def _put(self, kind: str, value) -> bool:
        """Queue ``(kind, value)`` unless the consumer has closed; returns whether it was queued."""
        while not self._stop.is_set():
            try:
                self._queue.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator):
        try:
            while not self._stop.is_set() and self._put("item", next(iterator)):
                pass
        except StopIteration:
            self._put("end", None)
        except BaseException as e:  # surfaced in the consumer
            self._put("error", e)

    def __iter__(self):
        return self

    def __next__(self):
        kind, value = self._queue.get()
        if kind == "end":
            raise StopIteration
        if kind == "error":
            raise value
        return value

    def close(self):
        self._stop.set()
        self._thread.join()
