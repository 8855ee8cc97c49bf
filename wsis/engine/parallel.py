"""Image-parallel prediction: a dataset split over worker processes, one thread each.

On a CPU, prediction is a chain of small steps (decoding, proposal generation, OpenCV, numpy,
backward passes through a small network) that use a second thread poorly; two processes with one
thread each keep both cores busy (``benchmarks/bench_speed.py --parallel`` measures it). Workers
are spawned (not forked: a forked child of a process whose OpenMP pool has run can hang), receive
the predictor once, pickled, and predict whole images; results come back in the input order and
equal the one-process ones (each image is predicted the same way, on one thread).
"""
from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Sequence

from tqdm import tqdm

_PREDICTOR: Any = None


def _init_worker(payload: bytes, threads: int) -> None:
    global _PREDICTOR
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    _PREDICTOR = pickle.loads(payload)


def _predict_one(record: Any) -> tuple[int, Any]:
    return record.image_id, _PREDICTOR.predict(record)


def predict_parallel(predictor: Any, records: Sequence[Any], workers: int, *, progress: bool = True,
                     threads_per_worker: int = 1, desc: str = "predict") -> dict[int, Any]:
    """``{image_id: Instances}`` of ``predictor.predict`` over ``records`` in ``workers`` processes
    (``workers <= 1`` or a single image: in this process)."""
    records = list(records)
    if workers <= 1 or len(records) <= 1:
        return {r.image_id: predictor.predict(r)
                for r in tqdm(records, desc=desc, disable=not progress, unit="img")}
    payload = pickle.dumps(predictor)
    found: dict[int, Any] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(records)), mp_context=context,
                             initializer=_init_worker, initargs=(payload, threads_per_worker)) as pool:
        futures = [pool.submit(_predict_one, r) for r in records]
        with tqdm(total=len(records), desc=f"{desc} ({workers} workers)", disable=not progress, unit="img") as bar:
            for future in as_completed(futures):
                image_id, instances = future.result()
                found[image_id] = instances
                bar.update()
    return {r.image_id: found[r.image_id] for r in records}
