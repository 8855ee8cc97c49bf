"""Inference speed per method and stage, this tree against a baseline tree, in one run.

For each method (prm, mser_sgpo, wise, pdsl, maskrcnn) a tiny model is trained once on the first
images of coco128 (a few iterations: speed does not depend on accuracy; ``--runs`` keeps them, and
both trees load the same files), then each tree predicts the first ``--images`` images of
coco-val50 in its own process (``PYTHONPATH`` = that tree, one thread each unless ``--threads``),
with a cold proposal cache, and times every image by stage:

* image load          -- ``load_image`` wherever a method calls it;
* backbone forward    -- the ``forward`` of the network's ``backbone`` module(s);
* peak backprop/heads -- the method's network stage (PRM/MSER: peak responses; detectors: the
  model's forward; PDSL: ``detect_and_segment``) minus the backbone;
* proposals           -- ``ProposalCache.get_or_compute`` (computed: the cache starts empty);
* post-processing     -- the rest of ``predict`` (retrieval, NMS, mask pasting, encoding);

then a second proposal pass over the same images (the cache now warm). Table cells are medians
over the images; peak RSS is the prediction process's (the model was trained elsewhere). Both trees
run at the same time, one process and one thread each, so that load from other jobs on a shared
machine hits both alike (run one after the other, a test suite started meanwhile made one tree's
Mask R-CNN look 3x slower).

    python benchmarks/bench_speed.py --baseline ../wt-speed-base [--methods prm,mser_sgpo] [--images 20]

``--measure METHOD`` is the per-tree worker (prints one JSON line); ``--train METHOD`` trains only.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TRAIN_JSON, VAL_JSON, commit, peak_rss_mib  # noqa: E402

METHODS = ["prm", "mser_sgpo", "wise", "pdsl", "maskrcnn"]
STAGES = ["load", "backbone", "network", "proposals", "post", "total"]
STAGE_LABELS = {"load": "image load", "backbone": "backbone forward",
                "network": "peak backprop / heads", "proposals": "proposals (computed)",
                "post": "retrieval / post-processing", "total": "total"}

# Tiny schedules: a handful of steps on the first images of coco128, with a high head rate for
# the PRM classifiers so that their biases leave 0 (an untrained PRM head passes half of the 80
# classes and backpropagates ~300 peaks per image, not what a trained one does).
TRAIN = {  # keys of the config skeleton (issue 16)
    "prm": (32, "prm_cpu.yaml", ["schedule.epochs=2", "schedule.lr=0.1"]),
    "mser_sgpo": (16, "mser_sgpo_cpu.yaml", ["schedule.epochs=2", "schedule.lr=0.1", "schedule.batch_size=16"]),
    "wise": (16, "wise_cpu.yaml", ["prm.schedule.epochs=2", "prm.schedule.lr=0.1", "schedule.iterations=12",
                                   "schedule.warmup_iterations=2", "schedule.lr_steps=[]"]),
    "pdsl": (16, "pdsl_cpu.yaml", ["schedule.iterations=24", "schedule.warmup_iterations=2",
                                   "schedule.lr_steps=[]"]),
    "maskrcnn": (16, "maskrcnn_cpu.yaml", ["schedule.iterations=12", "schedule.warmup_iterations=2",
                                           "schedule.lr_steps=[]"]),
}

# A tiny PRM classifier's logits all sit below the reference's class threshold 0 (the first
# images of coco-val50 pass none); at -0.3 `person` passes on about half of the 20 images and
# rarely another class, as the PRM trained on all of coco128 does (benchmarks/results/prm.md).
CLASS_THRESHOLD = -0.3


# -- stage timers (work on any tree: they patch by name and by object, not by module layout) -----

class StageClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def reset(self) -> None:
        self.seconds = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self.stage(name):
                return fn(*args, **kwargs)
        timed._bench_timed = True  # type: ignore[attr-defined]
        return timed


def patch_everywhere(attr: str, clock: StageClock, stage: str) -> int:
    """Replace ``attr`` in every loaded wsis module that holds the same function."""
    mods = [m for name, m in list(sys.modules.items()) if name.startswith("wsis") and m is not None]
    originals = {id(getattr(m, attr)) for m in mods if callable(getattr(m, attr, None))}
    wrapped = {}
    count = 0
    for m in mods:
        fn = getattr(m, attr, None)
        if callable(fn) and id(fn) in originals and not getattr(fn, "_bench_timed", False):
            wrapped.setdefault(id(fn), clock.wrap(stage, fn))
            setattr(m, attr, wrapped[id(fn)])
            count += 1
    return count


def networks(predictor: Any) -> list:
    models = getattr(predictor, "models", None) or [predictor.model]
    return list(models)


def proposal_caches(obj: Any, seen: set | None = None) -> list:
    """Every ProposalCache reachable from the predictor's attributes (one level of nesting)."""
    from wsis.proposals.cache import ProposalCache

    found = []
    for value in vars(obj).values():
        if isinstance(value, ProposalCache):
            found.append(value)
        elif hasattr(value, "__dict__") and not isinstance(value, type) and type(value).__module__.startswith("wsis"):
            found += [v for v in vars(value).values() if isinstance(v, ProposalCache)]
    return found


def instrument(predictor: Any, method: str, clock: StageClock) -> None:
    from wsis.proposals.cache import ProposalCache

    patch_everywhere("load_image", clock, "load")
    ProposalCache.get_or_compute = clock.wrap("proposals", ProposalCache.get_or_compute)
    for net in networks(predictor):
        net.backbone.forward = clock.wrap("backbone", net.backbone.forward)
    if method == "prm":
        predictor.peak_responses = clock.wrap("network", predictor.peak_responses)
    elif method == "mser_sgpo":
        predictor.stage_responses = clock.wrap("network", predictor.stage_responses)
    elif method == "pdsl":
        if patch_everywhere("detect_and_segment", clock, "network") == 0:
            raise RuntimeError("no detect_and_segment found to time")
    elif patch_everywhere("detect", clock, "network") == 0:  # trees before the stage-by-stage detect()
        predictor.model.forward = clock.wrap("network", predictor.model.forward)


# -- worker: one method, one tree --------------------------------------------------------------

def val_records(n: int):
    from wsis.data.coco import read_coco

    val = read_coco(VAL_JSON)
    return sorted(val.records, key=lambda r: r.image_id)[:n]


def measure(method: str, workdir: Path, images: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from wsis.methods import load_trained
    from wsis.proposals.cache import ProposalCache

    predictor = load_trained(workdir)
    if method in ("prm", "mser_sgpo"):
        predictor.cfg.test.class_threshold = CLASS_THRESHOLD
    records = val_records(images)
    clock = StageClock()
    instrument(predictor, method, clock)
    cache_root = Path(tempfile.mkdtemp(prefix="bench_speed_proposals_"))
    for cache in proposal_caches(predictor):
        cache.root = cache_root
    per_image, outputs = [], []
    for record in records:
        clock.reset()
        with clock.stage("total"):
            found = predictor.predict(record)
        outputs.append(fingerprint(found))
        s = dict(clock.seconds)
        row = {k: s.get(k, 0.0) for k in ("load", "backbone", "proposals", "total")}
        row["network"] = s.get("network", 0.0) - row["backbone"]
        row["post"] = row["total"] - row["load"] - s.get("network", 0.0) - row["proposals"]
        per_image.append(row)
    # second pass of the proposal stage: the same lookups, now against a warm cache
    second = []
    cfg = getattr(predictor, "cfg", None)
    prop_cfg = getattr(cfg, "proposals", None)
    uses_proposals = any(r["proposals"] > 0 for r in per_image)
    if uses_proposals and prop_cfg is not None:
        cache = ProposalCache(cache_root)
        for record in records:
            clock.reset()
            cache.get_or_compute(record.path, prop_cfg.method, **prop_cfg.settings)
            second.append(clock.seconds.get("proposals", 0.0))
    med = {k: statistics.median(r[k] for r in per_image) for k in STAGES}
    return {"method": method, "images": len(records), "threads": threads, "median_s": med,
            "proposals_second_pass_s": statistics.median(second) if second else None,
            "per_image": per_image, "predictions": outputs, "peak_rss_mib": peak_rss_mib(),
            "torch": torch.__version__, "tree": str(Path(importlib.import_module("wsis").__file__).parents[1])}


def fingerprint(found: Any) -> dict:
    """What a prediction is, to compare trees: labels, scores and a digest of the masks."""
    import hashlib

    rles = found.rles() if found.masks is not None and len(found) else []
    digest = hashlib.sha1("".join(str(r["counts"]) for r in rles).encode()).hexdigest()[:16]
    return {"labels": found.labels.tolist(), "scores": [float(v) for v in found.scores], "masks": digest}


def compare_predictions(base: list[dict], new: list[dict]) -> dict:
    """Images whose labels and masks are identical in both trees, and the largest score difference."""
    same = sum(a["labels"] == b["labels"] and a["masks"] == b["masks"] for a, b in zip(base, new))
    diffs = [abs(x - y) for a, b in zip(base, new) if len(a["scores"]) == len(b["scores"])
             for x, y in zip(a["scores"], b["scores"])]
    return {"identical_images": same, "images": len(base), "max_score_diff": max(diffs, default=0.0)}


def parallel(method: str, workdir: Path, images: int, rounds: int = 3, two_threads: bool = False) -> dict:
    """Images/s of ``predict_records`` on this tree: one process with one thread and two worker
    processes with one thread each (``--workers 2``: this process and a spawned one), in
    ``rounds`` round-robin rounds, and with ``two_threads`` one process with two threads too;
    the proposal cache is filled first, so that all do the same work. Also checks that they
    predict the same."""
    import numpy as np
    import torch

    from wsis.methods import load_trained

    predictor = load_trained(workdir)
    if method in ("prm", "mser_sgpo"):
        predictor.cfg.test.class_threshold = CLASS_THRESHOLD
    cache_root = Path(tempfile.mkdtemp(prefix="bench_speed_parallel_"))
    for cache in proposal_caches(predictor):
        cache.root = cache_root
    records = val_records(images)
    for record in records:
        predictor.proposals(record)
    modes = [("1 process, 1 thread", 1, 1), ("2 workers, 1 thread each", 1, 2)]
    if two_threads:
        modes.insert(1, ("1 process, 2 threads", 2, 1))
    rates: dict[str, list[float]] = {label: [] for label, _, _ in modes}
    cpu: dict[str, list[dict]] = {label: [] for label, _, _ in modes}
    preds, loads = {}, []
    for _ in range(rounds):  # round-robin, so that load from other jobs hits every mode alike
        for label, threads, workers in modes:
            torch.set_num_threads(threads)
            before = _cpu_seconds()
            start = time.perf_counter()
            preds[label] = predictor.predict_records(records, progress=False, workers=workers)
            rates[label].append(len(records) / (time.perf_counter() - start))
            after = _cpu_seconds()
            cpu[label].append({k: after[k] - before[k] for k in after})
            loads.append(os.getloadavg()[0])
    # Per mode against one process with one thread: two threads take other kernels (rounding), so
    # only the worker mode is expected to match exactly.
    first = preds["1 process, 1 thread"]
    same = {label: all(len(p[i]) == len(first[i]) and np.array_equal(p[i].scores, first[i].scores) for i in first)
            for label, p in preds.items() if label != "1 process, 1 thread"}
    startup = [worker_startup_cpu(predictor, records) for _ in range(rounds)]
    # On two idle cores the 2-worker run ends when the busier of its two processes does (images are
    # handed out one at a time): one process's CPU seconds over that, per round.
    estimates = [one["self"] / max(two["self"], two["children"])
                 for one, two in zip(cpu["1 process, 1 thread"], cpu["2 workers, 1 thread each"])]
    return {"method": method, "images": len(records), "rounds": rounds,
            "images_per_s": {k: statistics.median(v) for k, v in rates.items()}, "images_per_s_runs": rates,
            "cpu_s_runs": cpu, "worker_startup_cpu_s": startup,
            "estimated_idle_speedup_runs": estimates,
            "same_predictions": same, "load_average_range": [min(loads), max(loads)]}


def _cpu_seconds() -> dict:
    """CPU seconds (user + system) of this process and of its joined child processes."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self": own.ru_utime + own.ru_stime, "children": kids.ru_utime + kids.ru_stime}


def _startup_probe(payload: bytes | None, out: Any) -> None:
    import resource

    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    if payload is not None:  # spawned: what the worker unpickles; forked: inherited
        pickle.loads(payload)
    use = resource.getrusage(resource.RUSAGE_SELF)
    out.put(use.ru_utime + use.ru_stime)


def worker_startup_cpu(predictor: Any, records: list) -> float:
    """CPU seconds a prediction worker of ``wsis.engine.parallel`` spends before its first image
    (spawned: the interpreter, torch and wsis imports and unpickling the predictor and records;
    forked: setting its thread counts)."""
    import multiprocessing

    from wsis.engine.parallel import start_method

    context = multiprocessing.get_context(start_method())
    out = context.Queue()
    payload = None if start_method() == "fork" else pickle.dumps((predictor, records))
    proc = context.Process(target=_startup_probe, args=(payload, out))
    proc.start()
    seconds = out.get()
    proc.join()
    return seconds


def train(method: str, workdir: Path) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_TRAIN_THREADS", "1")))
    from wsis.data.coco import read_coco
    from wsis.methods import get_method
    from wsis.structures import RecordSet

    n, config, overrides = TRAIN[method]
    train_set = read_coco(TRAIN_JSON)
    subset = RecordSet(train_set.records[:n], train_set.categories, f"coco128[:{n}]")
    tree = Path(importlib.import_module("wsis").__file__).parents[1]
    get_method(method).fit(subset, config=tree / "wsis/configs" / config, overrides=overrides, workdir=workdir)


# -- driver -----------------------------------------------------------------------------------

def _tree_env(tree: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))


def run_tree(tree: Path, args: list[str]) -> str:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], env=_tree_env(tree), cwd=tree,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{tree} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def run_trees_together(trees: dict[str, Path], args: list[str]) -> dict[str, str]:
    """The same worker in every tree at the same time (one thread each): on a machine shared with
    other jobs, load that comes and goes then hits both measurements alike."""
    procs = {name: subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], env=_tree_env(tree),
                                    cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, tree in trees.items()}
    outs = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{trees[name]} {' '.join(args)} failed:\n{stderr[-3000:]}")
        outs[name] = stdout
    return outs


def fmt(x: float | None) -> str:
    return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0 or a <= 0:
        return "-"
    return f"{a / b:.1f}x"


def _stat(result: dict, stage: str) -> tuple[float, float]:
    """(median, mean) over the images of one stage; "excl" is total minus proposals per image."""
    values = [r["total"] - r["proposals"] if stage == "excl" else r[stage] for r in result["per_image"]]
    return statistics.median(values), sum(values) / len(values)


def table(results: dict, baseline_label: str, label: str) -> str:
    lines = [f"| method | stage | {baseline_label}: median / mean s/img | {label}: median / mean s/img "
             "| speed-up (median / mean) |", "|---|---|---|---|---|"]
    for method, pair in results.items():
        base, new = pair["baseline"], pair["new"]
        # a tree whose network stage was not captured (negative: only the backbone inside it was
        # timed) cannot split its time; its totals still compare
        split = all(_stat(t, "network")[1] >= 0 for t in (base, new))
        for stage in STAGES[:-1] + ["total", "excl"]:
            if not split and stage in ("backbone", "network", "post"):
                continue
            (a, a_mean), (b, b_mean) = _stat(base, stage), _stat(new, stage)
            if max(a_mean, b_mean) < 5e-4:
                continue
            name = "total excl. proposals" if stage == "excl" else STAGE_LABELS[stage]
            lines.append(f"| {method} | {name} | {fmt(a)} / {fmt(a_mean)} | {fmt(b)} / {fmt(b_mean)} | "
                         f"{ratio(a, b)} / {ratio(a_mean, b_mean)} |")
        a, b = base["proposals_second_pass_s"], new["proposals_second_pass_s"]
        if a is not None or b is not None:
            lines.append(f"| {method} | proposals, 2nd pass (cached) | {fmt(a)} | {fmt(b)} | "
                         f"{ratio(new['median_s']['proposals'], b)} faster than this tree's 1st pass |")
        lines.append(f"| {method} | peak RSS MiB | {base['peak_rss_mib']:.0f} | {new['peak_rss_mib']:.0f} | |")
        if "predictions" in base and "predictions" in new:
            c = compare_predictions(base["predictions"], new["predictions"])
            lines.append(f"| {method} | same predictions (labels, masks) | | {c['identical_images']}/{c['images']} images "
                         f"| max score diff {c['max_score_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="root of the baseline tree (a worktree of main)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/bench_speed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/speed")
    parser.add_argument("--measure", choices=METHODS)
    parser.add_argument("--train", choices=METHODS)
    parser.add_argument("--table-from", type=Path, help="print the table of a results json again")
    parser.add_argument("--parallel", choices=METHODS, help="images/s with 1 or 2 threads / processes (this tree)")
    parser.add_argument("--rounds", type=int, default=3, help="--parallel: round-robin rounds (medians)")
    parser.add_argument("--two-threads", action="store_true", help="--parallel: also one process with 2 threads")
    args = parser.parse_args()
    if args.table_from:
        print(table(json.loads(args.table_from.read_text())["results"], "main (baseline)", "this tree"))
        return
    if args.parallel:
        result = parallel(args.parallel, args.runs / args.parallel, args.images, args.rounds, args.two_threads)
        print(json.dumps(result))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        path = args.out.parent / f"{args.out.name}_parallel_{args.parallel}.json"
        path.write_text(json.dumps({"command": "python benchmarks/bench_speed.py " + " ".join(sys.argv[1:]),
                                    "commit": commit(), **result}, indent=1))
        return
    if args.measure:
        print(json.dumps(measure(args.measure, args.runs / args.measure, args.images, args.threads)))
        return
    if args.train:
        train(args.train, args.runs / args.train)
        return
    if args.baseline is None:
        parser.error("--baseline is required (or --measure / --train)")
    methods = [m for m in args.methods.split(",") if m]
    trees = {"baseline": args.baseline.resolve(), "new": ROOT}
    results: dict[str, dict] = {}
    for method in methods:
        workdir = args.runs.resolve() / method
        if not (workdir / "method.json").is_file():
            print(f"training a tiny {method} model in {workdir} ...", flush=True)
            run_tree(trees["baseline"], ["--train", method, "--runs", str(args.runs.resolve())])
        outs = run_trees_together(trees, ["--measure", method, "--runs", str(args.runs.resolve()),
                                          "--images", str(args.images), "--threads", str(args.threads)])
        results[method] = {which: json.loads(out.strip().splitlines()[-1]) for which, out in outs.items()}
        for which in trees:
            print(f"{method} {which}: {results[method][which]['median_s']['total']:.3f} s/img", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".partial.json").write_text(json.dumps(results, indent=1))
    command = "python benchmarks/bench_speed.py " + " ".join(sys.argv[1:])
    md = table(results, "main (baseline)", "this tree")  # results/speed.md quotes it with the notes
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "commit": commit(), "baseline": str(args.baseline), "results": results}, indent=1))
    args.out.with_suffix(".table.md").write_text(f"Command: `{command}` (commit {commit()})\n\n{md}\n")


if __name__ == "__main__":
    main()
