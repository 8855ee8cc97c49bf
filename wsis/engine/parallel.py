"""Image-parallel prediction: a dataset split over processes, one thread each.

On a CPU, prediction is a chain of small steps (decoding, proposal generation, OpenCV, numpy,
backward passes through a small network) that use a second thread poorly; two processes with one
thread each keep both cores busy (``benchmarks/bench_speed.py --parallel`` measures it).

``workers=N`` is the calling process plus N - 1 more. The caller predicts from the first image
on, while the others start, and images are handed out one at a time from a shared counter, so a
worker that starts late simply takes fewer. On Linux the workers are forked: they start with the
caller's imports and predictor (copy-on-write), where a spawned worker spent ~4 s of CPU importing
torch and timm and unpickling a 19 MB predictor before its first image -- on 20 images of
~0.75 s, that alone held two processes to ~1.6x one. A forked child of a process whose OpenMP
pool has run can hang if it uses OpenMP threads itself; like torch's DataLoader workers, each
worker first sets torch (and OpenCV) to one thread, so it never starts a parallel region.
Elsewhere (macOS, Windows: fork is unsafe or absent) they are spawned and receive the predictor
and the records pickled. Results come back in the input order and equal the one-process ones:
every image is predicted by the same code on one thread (the caller's thread counts are set to
``threads_per_worker`` meanwhile and restored after).
"""
from __future__ import annotations

import multiprocessing
import queue
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from tqdm import tqdm

_STATE: dict[str, Any] = {}


def _claim(counter: Any, total: int) -> int | None:
    """The next unclaimed image index, or None when every image has been handed out."""
    with counter.get_lock():
        index = counter.value
        if index >= total:
            return None
        counter.value = index + 1
    return index


def _worker(predictor: Any, records: Sequence[Any], threads: int, counter: Any, results: Any) -> None:
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    while (index := _claim(counter, len(records))) is not None:
        try:
            results.put((index, predictor.predict(records[index]), None))
        except Exception:  # noqa: BLE001 -- sent to the caller, which raises it with the image named
            results.put((index, None, traceback.format_exc()))
            return


@contextmanager
def _threads(threads: int) -> Iterator[None]:
    """torch's and OpenCV's thread counts set to ``threads`` in this process, restored on exit."""
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def start_method() -> str:
    """"fork" on Linux (see the module docstring), else "spawn"."""
    return "fork" if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods() else "spawn"


def predict_parallel(predictor: Any, records: Sequence[Any], workers: int, *, progress: bool = True,
                     threads_per_worker: int = 1, desc: str = "predict") -> dict[int, Any]:
    """``{image_id: Instances}`` of ``predictor.predict`` over ``records`` in ``workers`` processes,
    this one included (``workers <= 1`` or a single image: here only, with this process's threads)."""
    records = list(records)
    if workers <= 1 or len(records) <= 1:
        return {r.image_id: predictor.predict(r)
                for r in tqdm(records, desc=desc, disable=not progress, unit="img")}
    context = multiprocessing.get_context(start_method())
    counter = context.Value("q", 0)
    results = context.Queue()
    # fork: the arguments are inherited; spawn: pickled once per worker
    children = [context.Process(target=_worker, args=(predictor, records, threads_per_worker, counter, results),
                                daemon=True)
                for _ in range(min(workers, len(records)) - 1)]
    found: dict[int, Any] = {}
    bar: Any = None

    def receive(block: bool) -> bool:
        try:
            index, instances, error = results.get(timeout=5.0) if block else results.get_nowait()
        except queue.Empty:
            return False
        if error is not None:
            raise RuntimeError(f"prediction of {getattr(records[index], 'path', index)} failed in a worker:\n{error}")
        found[index] = instances
        bar.update()
        return True

    try:
        for child in children:
            child.start()
        # after the fork: a progress bar's monitor thread is not copied into the workers
        bar = tqdm(total=len(records), desc=f"{desc} ({workers} workers)", disable=not progress, unit="img")
        with _threads(threads_per_worker):
            while (index := _claim(counter, len(records))) is not None:
                found[index] = predictor.predict(records[index])
                bar.update()
                while receive(block=False):
                    pass
        while len(found) < len(records):
            if not receive(block=True) and not any(c.is_alive() for c in children) and results.empty():
                missing = [getattr(records[i], "path", i) for i in range(len(records)) if i not in found]
                raise RuntimeError(f"a prediction worker exited without results for {len(missing)} image(s), "
                                   f"first {missing[0]}")
    finally:
        if bar is not None:
            bar.close()
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join()
    return {records[i].image_id: found[i] for i in range(len(records))}
