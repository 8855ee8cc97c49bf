"""The streaming evaluator (reset / process / evaluate): the hand-computed numbers of the one-shot
report, whatever the order of the images and however they are split between evaluators."""
from __future__ import annotations

import pickle

import pytest
from _eval_helpers import dataset, record, spans

from wsis.errors import InputError
from wsis.eval import Evaluator, evaluate
from wsis.structures import Instances

CATEGORIES = {1: "person", 3: "car", 11: "fire hydrant"}


def _case():
    # person: gt [0,10) found exactly (AP 1); car: gt [10,20), pred [10,14) -> IoU .4 (AP@0.5 0,
    # ABO .4); fire hydrant: gt [0,5) in image 2, found exactly; image 3 has a person nobody finds.
    gt = dataset(record(1, [(0, 10), (10, 20)], [1, 3]), record(2, [(0, 5)], [11]), record(3, [(0, 8)], [1]),
                 categories=CATEGORIES)
    preds = {1: spans([(0, 10), (10, 14)], [1, 3], 20, [0.9, 0.8]), 2: spans([(0, 5)], [11], 20, [0.7])}
    return gt, preds


def _stream(gt, preds, order, **options) -> Evaluator:
    ev = Evaluator(gt.categories, name=gt.name, detection=True, semantic=True, **options)
    by_id = gt.by_id()
    for i in order:
        ev.process(by_id[i], preds.get(i, Instances(by_id[i].size, masks=[])))
    return ev


def test_streamed_in_any_order_gives_the_hand_computed_numbers():
    gt, preds = _case()
    rep = _stream(gt, preds, [3, 1, 2]).evaluate()
    # person: 2 positives, one found at 0.9 -> AP 1/2; car 0; hydrant 1 -> mAP@0.5 = 1.5 / 3
    assert rep["voc"]["mAP"]["0.5"] == pytest.approx(0.5)
    assert rep["voc"]["abo"] == pytest.approx((1 + 0.4 + 1 + 0) / 4)
    assert rep["images"] == 3
    one_shot = evaluate(gt, preds, detection=True, semantic=True)
    assert rep == one_shot


def test_split_across_two_evaluators_and_merged_is_the_same():
    gt, preds = _case()
    first, second = _stream(gt, preds, [2]), _stream(gt, preds, [3, 1])
    second.merge(pickle.loads(pickle.dumps(first.state())))  # as it would come from another process
    assert second.evaluate() == evaluate(gt, preds, detection=True, semantic=True)


def test_reset_forgets_and_unprocessed_images_are_not_scored():
    gt, preds = _case()
    ev = _stream(gt, preds, [1, 2, 3])
    ev.reset()
    for i in (1, 2):
        ev.process(gt.by_id()[i], preds[i])
    rep = ev.evaluate()
    assert rep["images"] == 2 and rep["voc"]["mAP"]["0.5"] == pytest.approx(2 / 3)


def test_bad_predictions_fail_at_process():
    gt, preds = _case()
    ev = Evaluator(gt.categories)
    ev.process(gt.by_id()[1], preds[1])
    with pytest.raises(InputError, match="image 1 processed twice"):
        ev.process(gt.by_id()[1], preds[1])
    with pytest.raises(InputError, match="image 2: predictions of size"):
        ev.process(gt.by_id()[2], spans([(0, 5)], [11], 30, [0.7]))
    with pytest.raises(InputError, match="unknown subset"):
        Evaluator(gt.categories, subset="voc21")


WORKER = """
import json, sys
from pathlib import Path
import torch.distributed as dist
sys.path.insert(0, sys.argv[2])
import test_eval_evaluator as t
from wsis.engine.distributed import init_distributed
from wsis.eval import Evaluator
from wsis.structures import Instances

info = init_distributed("cpu")
gt, preds = t._case()
ev = Evaluator(gt.categories, name=gt.name, detection=True, semantic=True)
for r in gt.records[info.rank::info.world_size]:  # each process predicts its share
    ev.process(r, preds.get(r.image_id, Instances(r.size, masks=[])))
rep = ev.evaluate()
Path(sys.argv[1], f"rank{info.rank}.json").write_text(json.dumps(rep))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_under_torchrun_rank_0_gets_the_whole_report(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "worker.py").write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    here = str(Path(__file__).parent)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(tmp_path / "worker.py"), str(tmp_path), here], env=env, capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    gt, preds = _case()
    expected = json.loads(json.dumps(evaluate(gt, preds, detection=True, semantic=True)))
    assert json.loads((tmp_path / "rank0.json").read_text()) == expected
    assert json.loads((tmp_path / "rank1.json").read_text()) == {}
