"""Diagnosis of progressive learning on CIFAR-10 (issue 18): per-epoch train/val curves, BatchNorm at
each size step, and single-factor variants (smallest size, regularization, stages).

Prints one JSON line per run: the per-epoch history (train accuracy/loss on 1,000 un-augmented
training images, val accuracy/loss, learning rate, CPU seconds) and, at every size step, the
validation accuracy at the new size with the old BN statistics and after re-estimating them.

    python bench/diagnose_progressive.py --variant base --variant min24 ...
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_progressive import SPEC, subset  # noqa: E402
from nas.data import load_dataset  # noqa: E402
from nas.pipeline import DeviceData  # noqa: E402
from nas.progressive import reestimate_batchnorm, train_progressive  # noqa: E402
from nas.schedule import ProgressiveConfig, schedule  # noqa: E402
from nas.train import evaluate  # noqa: E402

REGULARIZED = dict(min_randaugment=2, max_randaugment=6, min_mixup=0.0, max_mixup=0.1)
VARIANTS = {  # name: (progressive, overrides of the base config)
    "fixed": (False, {}),
    "base": (True, {}),
    "min24": (True, {"min_image_size": 24}),
    "min20": (True, {"min_image_size": 20}),
    "fixed_reg": (False, REGULARIZED),
    "base_reg": (True, REGULARIZED),
    "stages2": (True, {"stages": 2}),
    "nobn": (True, {"batchnorm_batches": 0}),
    "s3_final50": (True, {"stages": 3, "final_stage_fraction": 0.5}),
    "s2_24": (True, {"stages": 2, "min_image_size": 24}),
    "s3_final50_min20": (True, {"stages": 3, "min_image_size": 20, "final_stage_fraction": 0.5}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/cifar10/cifar-10-batches-py")
    parser.add_argument("--train-subset", type=int, default=5000)
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = subset(load_dataset(args.data), args.train_subset, args.test_subset)
    probe = DeviceData(*data.split_validation(0.1, seed=0), device="cpu")  # the same split train_progressive makes
    train_probe = torch.arange(1000)
    for name in args.variant:
        progressive, overrides = VARIANTS[name]
        config = ProgressiveConfig(**{**dict(epochs=args.epochs, stages=4, min_image_size=16, max_image_size=32, threads=1,
                                             seed=args.seed, progressive=progressive), **overrides})
        plan, rows, steps = schedule(config), {}, []

        def inspect(epoch, stage, model, plan=plan, rows=rows, steps=steps):
            images = probe.normalize(probe.images("train", stage.image_size)[train_probe])
            rows[epoch] = evaluate(model, iter([(images, probe.train_labels[train_probe])]), torch.device("cpu"))
            if epoch == stage.last_epoch and stage.index + 1 < len(plan):
                size = plan[stage.index + 1].image_size
                copied = copy.deepcopy(model)
                old = evaluate(copied, probe.eval_batches(512, size), torch.device("cpu"))
                gen = torch.Generator().manual_seed(1)
                reestimate_batchnorm(copied, (b for _, b in zip(range(20), probe.train_batches(128, size, gen, crop_padding=0, flip=False))),
                                     torch.device("cpu"))
                new = evaluate(copied, probe.eval_batches(512, size), torch.device("cpu"))
                same = evaluate(model, probe.eval_batches(512, stage.image_size), torch.device("cpu"))
                steps.append({"after_epoch": epoch, "from": stage.image_size, "to": size, "val_acc_old_size": same[0],
                              "val_acc_new_size_old_bn": old[0], "val_acc_new_size_reestimated_bn": new[0]})

        begin = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            s = train_progressive(SPEC, data, config, out_dir=out, device="cpu", log=lambda m: None, on_epoch_end=inspect)
        history = [{**h, "train_accuracy": rows[h["epoch"]][0], "train_eval_loss": rows[h["epoch"]][1]} for h in s["history"]]
        print(json.dumps({"variant": name, "seed": args.seed, "epochs": args.epochs, "overrides": overrides,
                          "test_accuracy": s["test_accuracy"], "train_cpu_seconds": s["train_cpu_seconds"],
                          "train_seconds": s["train_seconds"], "wall_seconds": time.perf_counter() - begin,
                          "sizes": [st.image_size for st in plan], "size_steps": steps, "history": history}), flush=True)


if __name__ == "__main__":
    main()
