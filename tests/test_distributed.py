"""torch.distributed helpers, and a real 2-process torchrun (gloo on CPU) checked against one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from wsis.engine import distributed as D
from wsis.errors import InputError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def test_pick_device():
    assert D.pick_device("cpu") == torch.device("cpu")
    assert D.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device"):
        D.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            D.pick_device("cuda")


def test_single_process_is_a_no_op(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    info = D.init_distributed("cpu")
    assert info == D.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert not info.is_distributed and D.is_main() and D.get_world_size() == 1
    x = torch.tensor([1.0, 3.0])
    y = D.all_reduce_mean(x)
    assert torch.equal(y, x) and y is not x
    assert D.all_gather_object({"a": 1}) == [{"a": 1}]
    D.barrier(), D.cleanup()  # both safe without a process group


def test_bad_torchrun_variable_is_an_input_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="WORLD_SIZE"):
        D.init_distributed("cpu")


# The same tiny problem in the worker processes and in this one: 16 samples, mean-squared error,
# 2 steps per epoch (a batch of 4 per rank on 2 ranks = a batch of 8 in one process).
PROBLEM = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def problem():
        g = torch.Generator().manual_seed(11)
        data = TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), data
""")

WORKER = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from problem import problem
    from wsis.engine import Trainer
    from wsis.engine import distributed as D

    out = sys.argv[1]
    info = D.init_distributed("cpu")
    model, opt, data = problem()
    Trainer(model, opt, loss_fn=nn.functional.mse_loss, workdir=out + "/work", epochs=3, seed=5,
            batch_size=4, device="cpu", progress=False).fit(data)
    torch.save({"rank": info.rank, "world": info.world_size, "params": model.state_dict()},
               f"{out}/rank{info.rank}.pt")
    D.cleanup()
""")


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process_on_the_full_batch(tmp_path, monkeypatch):
    (tmp_path / "problem.py").write_text(PROBLEM)
    (tmp_path / "worker.py").write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "worker.py"), str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [(r["rank"], r["world"]) for r in ranks] == [(0, 2), (1, 2)]
    p0, p1 = ranks[0]["params"], ranks[1]["params"]
    assert all(torch.equal(p0[k], p1[k]) for k in p0)  # DDP keeps the replicas identical

    monkeypatch.syspath_prepend(str(tmp_path))
    from problem import problem  # noqa: E402  (written above)
    from wsis.engine import Trainer

    model, opt, data = problem()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, opt, loss_fn=torch.nn.functional.mse_loss, workdir=tmp_path / "single", epochs=3, seed=5,
            batch_size=8, device="cpu", progress=False).fit(data)
    single = model.state_dict()
    for k in single:
        assert not torch.equal(single[k], initial[k])
        # Averaged gradients of two half-batches = the full-batch gradient, up to float rounding.
        assert torch.allclose(p0[k], single[k], rtol=1e-5, atol=1e-6), k

    lines = [json.loads(l) for l in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines if l["event"] == "epoch"] == [1, 2, 3]  # rank 0 alone writes the log
    single_lines = [json.loads(l) for l in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    assert [l["loss"] for l in lines] == pytest.approx([l["loss"] for l in single_lines], rel=1e-5)
