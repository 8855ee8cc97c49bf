"""Peak backpropagation speed: the reference's one-backward-per-peak loop vs the batched passes.

EfficientNet-Lite0 features (``wsis.backbones``; the packaged ImageNet weights when available,
else random init -- timing does not depend on the weights) + a 20-class PRM head, one 448x448
image, the 16 strongest peaks. Each mode is timed end to end (forward pass(es) + backward pass(es)
+ normalisation) as ``peak_response_maps`` runs it; the table shows the median of ``--repeats``
runs (round-robin over the modes) after one warm-up run each, and checks that every mode returns the loop's maps.

``--networks T`` (T > 1) times instead MSER's inference case: T networks of this architecture (as
MSER's stages) on the same image, ``--peaks`` peaks each, looped one network after the other
(with either peak mode) against the stacked pass over all networks
(``stacked_peak_response_maps``).

    .venv/bin/python benchmarks/bench_peak_backprop.py [--peaks 16] [--repeats 3] [--threads 2] [--networks 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from wsis.backbones import create_backbone
from wsis.cues.peak_backprop import peak_response_maps, stacked_peak_response_maps
from wsis.cues.prm import PRMNet

MODES = {  # label -> peak_response_maps keyword arguments (chunk: all peaks unless given)
    "loop (reference: 1 backward / peak)": dict(batched=False),
    "batched, vmap over one-hot grads": dict(batched=True, batch_mode="vmap"),
    "batched, image repeated per peak": dict(batched=True, batch_mode="expand"),
    "vmap, chunks of 2 peaks": dict(batched=True, batch_mode="vmap", chunk=2),
    "vmap, chunks of 4 peaks": dict(batched=True, batch_mode="vmap", chunk=4),
}


def build_model(device: torch.device) -> tuple[PRMNet, str]:
    try:
        backbone, weights = create_backbone("tf_efficientnet_lite0", pretrained=True), "ImageNet"
    except Exception:  # no packaged weights: random init times the same
        backbone, weights = create_backbone("tf_efficientnet_lite0", pretrained=False), "random"
    return PRMNet(backbone, 20).to(device).eval(), weights


def strongest_peaks(model: PRMNet, image: torch.Tensor, k: int) -> torch.Tensor:
    with torch.no_grad():
        peaks, values = model.find_peaks(model.crm(image))
    return peaks[values.argsort(descending=True)[:k]]


def time_modes(model: PRMNet, image: torch.Tensor, peaks: torch.Tensor, modes: list[tuple[str, dict]],
               repeats: int) -> tuple[list[float], list[torch.Tensor]]:
    """Median seconds and maps per mode (see :func:`time_runs`)."""
    def run(kwargs: dict) -> torch.Tensor:
        _, prms, _ = peak_response_maps(model, image, peaks, **{"chunk": len(peaks), **kwargs})
        return prms

    return time_runs(run, modes, repeats, image.is_cuda)


def time_runs(run, modes: list[tuple[str, dict]], repeats: int, cuda: bool) -> tuple[list[float], list]:
    """Median seconds and outputs of ``run(kwargs)`` per mode. Runs go round-robin over the modes so
    that load from other processes on a shared machine hits every mode alike."""
    def timed(kwargs: dict):
        out = run(kwargs)
        if cuda:
            torch.cuda.synchronize()
        return out

    maps = [timed(kwargs) for _, kwargs in modes]  # warm-up
    times: list[list[float]] = [[] for _ in modes]
    for _ in range(repeats):
        for i, (_, kwargs) in enumerate(modes):
            start = time.perf_counter()
            timed(kwargs)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times], maps


NETWORK_MODES = {
    "networks looped, peaks looped": dict(stacked=False, batched=False),
    "networks looped, peaks vmapped": dict(stacked=False, batched=True),
    "networks stacked + peaks vmapped": dict(stacked=True),
}


def time_networks(models: list[PRMNet], image: torch.Tensor, k: int, repeats: int) -> None:
    peaks = [strongest_peaks(m, image, k) for m in models]

    def run(kwargs: dict) -> torch.Tensor:
        if kwargs["stacked"]:
            out = stacked_peak_response_maps(models, image, lambda t, m, crm: peaks[t], chunk=k)
            return torch.cat([prms for _, prms, _ in out])
        return torch.cat([peak_response_maps(m, image, p, chunk=k, batched=kwargs["batched"])[1]
                          for m, p in zip(models, peaks)])

    modes = list(NETWORK_MODES.items())
    seconds, maps = time_runs(run, modes, repeats, image.is_cuda)
    for (label, _), secs, prms in zip(modes, seconds, maps):
        diff = (prms - maps[0]).abs().max().item()
        print(f"{label:40s} {secs:9.3f} {seconds[0] / secs:8.2f}x {diff:11.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peaks", type=int, default=16)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="all", help="comma-separated indices into the mode list, or all")
    parser.add_argument("--networks", type=int, default=1, help="T > 1: T networks looped vs stacked")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model, weights = build_model(device)
    image = torch.randn(1, 3, args.size, args.size, device=device)
    peaks = strongest_peaks(model, image, args.peaks)
    modes = list(MODES.items())
    if args.modes != "all":
        modes = [modes[int(i)] for i in args.modes.split(",")]

    print(f"peak backprop: tf_efficientnet_lite0 ({weights} weights), {args.size}x{args.size}, "
          f"{len(peaks)} peaks, device={device}, threads={torch.get_num_threads()}, "
          f"median of {args.repeats} runs, torch {torch.__version__}")
    print(f"{'mode':40s} {'seconds':>9s} {'speed-up':>9s} {'max |diff|':>11s}")
    if args.networks > 1:
        models = [model] + [build_model(device)[0] for _ in range(args.networks - 1)]
        for m in models[1:]:  # stages differ in their weights, not just the head
            with torch.no_grad():
                for param in m.parameters():
                    param.add_(0.01 * torch.randn_like(param))
        print(f"{args.networks} networks")
        time_networks(models, image, args.peaks, args.repeats)
        return
    seconds, maps = time_modes(model, image, peaks, modes, args.repeats)
    for (label, _), secs, prms in zip(modes, seconds, maps):
        diff = (prms - maps[0]).abs().max().item()
        print(f"{label:40s} {secs:9.3f} {seconds[0] / secs:8.2f}x {diff:11.2e}")


if __name__ == "__main__":
    main()
