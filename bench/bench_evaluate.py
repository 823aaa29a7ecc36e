"""Candidate evaluation benchmark (issues 4 and 13), all figures from one run:

1. images/s of the proxy trainer (the shared ``TrainStep``, no host sync per step) against a minimal
   hand-written PyTorch loop over in-memory tensors (same model, data, batch size, image size,
   optimizer; target ratio >= 0.95);
2. coefficient of variation of 5 repeated step-time measurements of one spec (timing the trainer's step);
3. Spearman rank correlation of two timing passes over 8 diverse specs (target >= 0.9).

    python bench/bench_evaluate.py [--data ../shared/data/cifar10/cifar-10-batches-py]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.configs import TimingConfig, TrainConfig  # noqa: E402
from nas.data import load_dataset  # noqa: E402
from nas.model import build  # noqa: E402
from nas.pipeline import DeviceData, resize_uint8  # noqa: E402
from nas.step import make_optimizer  # noqa: E402
from nas.timing import measure_step_time  # noqa: E402
from nas.train import pick_device, train_proxy  # noqa: E402
from nas.zoo import get  # noqa: E402
from search_spaces import SearchSpace  # noqa: E402


def minimal_loop(spec, dd: DeviceData, config: TrainConfig, device) -> float:
    """The baseline: pre-resized, pre-normalized tensors, shuffled slices, no augmentation. Returns images/s."""
    torch.manual_seed(config.seed)
    model = build(spec).to(device)
    optimizer = make_optimizer(model, config)
    x_all = dd.normalize(resize_uint8(dd.train_images, config.image_size))  # (N, 3, S, S) float
    y_all = dd.train_labels
    n, seen, seconds = len(x_all), 0, 0.0
    for _ in range(config.epochs):
        begin = time.perf_counter()
        order = torch.randperm(n, device=device)
        for start in range(0, n - n % config.batch_size, config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(idx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - begin
    return seen / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-image-size", type=int, default=64)
    parser.add_argument("--timing-batch-size", type=int, default=32)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    ds = load_dataset(args.data)
    dd = DeviceData(*ds.split_validation(0.2, seed=0), device=device)
    spec = get("efficientnetv2-b0", ds.num_classes)
    config = TrainConfig(epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size, threads=args.threads)

    baseline = minimal_loop(spec, dd, config, device)
    result = train_proxy(spec, dd, config)
    ours = sum(c["images"] for c in result.curve) / sum(c["train_seconds"] for c in result.curve)
    print(f"throughput: proxy trainer {ours:.1f} img/s, minimal loop {baseline:.1f} img/s, ratio {ours / baseline:.3f}", flush=True)

    timing = TimingConfig(batch_size=args.timing_batch_size, image_size=args.timing_image_size, warmup=3, steps=10)
    repeats = [measure_step_time(spec, timing, device, train=config).median_ms for _ in range(5)]
    cv = statistics.pstdev(repeats) / statistics.fmean(repeats)
    print(f"step time of {spec.name}, 5 measurements: {[round(r, 1) for r in repeats]} ms, CV {cv:.3%}", flush=True)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.default()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=11))
    specs = []
    for _ in range(8):
        trial = study.ask()
        specs.append(space.suggest(trial).with_classes(ds.num_classes))
        study.tell(trial, 0.0)
    passes = [[measure_step_time(s, timing, device, train=config).median_ms for s in specs] for _ in range(2)]
    rho = pd.Series(passes[0]).corr(pd.Series(passes[1]), method="spearman")
    print(f"8 specs, two passes (ms): {[round(x) for x in passes[0]]} / {[round(x) for x in passes[1]]}; Spearman {rho:.3f}")
    print(json.dumps({"machine": platform.node(), "device": str(device), "torch": torch.__version__, "threads": args.threads,
                      "data": ds.name, "throughput_ratio": ours / baseline, "proxy_img_s": ours, "minimal_img_s": baseline,
                      "step_time_cv": cv, "step_time_repeats_ms": repeats, "spearman": rho, "passes_ms": passes}, indent=1))


if __name__ == "__main__":
    main()
