"""One-shot device check: everything still owed on a GPU, in one run of at most 8 minutes, needing only torch
and this package (no Ray, no Optuna, no data files: synthetic images).

    PYTHONPATH=. python3 bench/gpu_check.py            # on a GPU machine; refuses in one line without one
    PYTHONPATH=. python3 bench/gpu_check.py --cpu      # the same measurements, small, on the CPU
    PYTHONPATH=. python3 bench/gpu_check.py --cpu --smoke   # tiny (the test suite runs this)

Prints one JSON document on stdout and a Markdown table for ``bench/RESULTS.md`` on stderr:

1. ``throughput``: the proxy trainer (:func:`nas.train.train_proxy`: batches made on the device, the
   lock, statistics, validation excluded) in images/s against a bare loop on the same model and batch
   (bf16 autocast + channels_last on CUDA, AdamW, no lock, no statistics). Target >= 0.95.
2. ``neighbour``: S of a trial (:func:`nas.timing.measure_step_time`) alone, next to a second process
   proxy-training (and validating every epoch) on the same device with the device lock, and without
   it. Target with the lock <= 1.05x alone.
3. ``table3``: the direction of the paper's Table 3 from our own step times: an EfficientNet-B4-like
   spec (B0 x1.4 width, x1.8 depth), all MBConv against Fused-MBConv in stages 1-3. Fused should train faster.
4. ``packing``: 1, 2 and 4 small trials packed on one device (each its own process): aggregate images/s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.configs import TimingConfig, TrainConfig  # noqa: E402
from nas.data import Dataset  # noqa: E402
from nas.lock import DeviceLock  # noqa: E402
from nas.model import build  # noqa: E402
from nas.pipeline import DeviceData  # noqa: E402
from nas.plan import count_spec_params  # noqa: E402
from nas.scaling import scale  # noqa: E402
from nas.spec import NetworkSpec  # noqa: E402
from nas.step import make_optimizer  # noqa: E402
from nas.timing import measure_step_time  # noqa: E402
from nas.train import train_proxy  # noqa: E402
from nas.zoo import get  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each measurement is, per mode."""

    images: int  # synthetic training images
    image_size: int  # proxy training size
    batch: int
    epochs: int
    timing: TimingConfig
    repeats: int  # S measurements per neighbour condition
    table3: TimingConfig
    pack_epochs: int
    packs: tuple[int, ...] = (1, 2, 4)  # trials packed on the device at once


SIZES = {
    "gpu": Sizes(8192, 64, 128, 3, TimingConfig(batch_size=128, image_size=64, warmup=5, steps=20), 5,
                 TimingConfig(batch_size=32, image_size=380, warmup=3, steps=10), 3),
    "cpu": Sizes(1024, 32, 64, 2, TimingConfig(batch_size=16, image_size=64, warmup=2, steps=10), 5,
                 TimingConfig(batch_size=4, image_size=96, warmup=1, steps=5), 1),
    "smoke": Sizes(256, 16, 32, 1, TimingConfig(batch_size=4, image_size=32, warmup=1, steps=3), 2,
                   TimingConfig(batch_size=2, image_size=32, warmup=1, steps=3), 1, packs=(1, 2)),
}
SMALL = NetworkSpec.from_block_strings("small", 16, ["r1_k3_s1_e1_i16_o16_c1", "r2_k3_s2_e4_i16_o32_c1",
                                                     "r2_k3_s2_e4_i32_o48", "r2_k3_s2_e4_i48_o64_se0.25"],
                                       head_channels=256, num_classes=10)


def trial_spec(mode: str) -> NetworkSpec:
    """The trial measured for throughput and S: the V2 search baseline (a small net in the smoke run)."""
    return SMALL if mode == "smoke" else get("efficientnetv2-b0", 10)


def synthetic(n: int, size: int, classes: int = 10) -> Dataset:
    """Random uint8 images with random labels: throughput does not care what they show."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return Dataset("synthetic", images, labels, images[:64], labels[:64], classes)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(spec: NetworkSpec, data: DeviceData, sizes: Sizes, steps: int) -> float:
    """Images/s of the plainest training loop on the same model: fixed batch, no lock, no statistics."""
    device, cuda = data.device, data.device.type == "cuda"
    model = build(spec).to(device).train()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, TrainConfig())
    x, y = next(data.train_batches(sizes.batch, sizes.image_size, torch.Generator().manual_seed(0)))
    x = x.contiguous(memory_format=torch.channels_last) if cuda else x
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    sync(device)
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * sizes.batch / (time.perf_counter() - begin)


def throughput(device: torch.device, sizes: Sizes, spec: NetworkSpec) -> dict:
    dataset = synthetic(sizes.images, sizes.image_size)
    data = DeviceData(*dataset.split_validation(0.1, seed=0), device=device)
    config = TrainConfig(epochs=sizes.epochs, image_size=sizes.image_size, batch_size=sizes.batch, deterministic=False)
    result = train_proxy(spec, data, config)
    curve = result.curve[1:] or result.curve  # the first epoch pays allocator and cudnn warm-up
    trainer = sum(e["images"] for e in curve) / sum(e["train_seconds"] for e in curve)
    bare = bare_loop(spec, data, sizes, steps=len(data.train_labels) // sizes.batch)
    return {"spec": spec.name, "image_size": sizes.image_size, "batch": sizes.batch, "trainer_img_s": trainer,
            "bare_img_s": bare, "ratio": trainer / bare}


def neighbour_role(args: argparse.Namespace) -> None:
    """A second trial on the same device: proxy training that validates every epoch, until killed."""
    sizes, device = SIZES[args.mode], torch.device(args.device)
    torch.set_num_threads(args.threads)
    data = DeviceData(*synthetic(sizes.images, sizes.image_size).split_validation(0.2, seed=0), device=device)
    lock = DeviceLock("gpu-check", args.lock_dir, enabled=args.lock == "on")
    config = TrainConfig(epochs=100_000, image_size=sizes.image_size, batch_size=sizes.batch, deterministic=False)
    Path(args.ready).touch()
    train_proxy(trial_spec(args.mode), data, config, lock=lock)


def spawn(role: str, args: argparse.Namespace, *extra: str, threads: int) -> subprocess.Popen:
    command = [sys.executable, __file__, "--role", role, "--mode", args.mode, "--device", args.device, "--threads", str(threads),
               *extra]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for(path: Path, proc: subprocess.Popen | None, seconds: float = 300) -> None:
    """Until ``path`` exists; a bounded wait that also ends if ``proc`` died."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"a helper process did not start (exit {proc.poll()})")
        time.sleep(0.05)


def median_s(spec: NetworkSpec, sizes: Sizes, device: torch.device, lock: DeviceLock) -> list[float]:
    return [measure_step_time(spec, sizes.timing, device, lock=lock).median_ms for _ in range(sizes.repeats)]


def neighbour(device: torch.device, sizes: Sizes, args: argparse.Namespace, threads: int) -> dict:
    """S alone, then beside a validating trainer with the lock and without it (the timer's lock follows the same switch)."""
    spec = trial_spec(args.mode)
    out: dict[str, object] = {"spec": spec.name, "timing": dataclasses.asdict(sizes.timing), "threads_each": threads}
    with tempfile.TemporaryDirectory() as locks:
        out["alone_ms"] = median_s(spec, sizes, device, DeviceLock("gpu-check", locks))
        for switch in ("on", "off"):
            ready = Path(locks) / f"ready-{switch}"
            proc = spawn("neighbour", args, "--lock", switch, "--lock-dir", locks, "--ready", str(ready), threads=threads)
            try:
                wait_for(ready, proc)
                time.sleep(2.0)  # past model build and the first batches
                out[f"lock_{switch}_ms"] = median_s(spec, sizes, device, DeviceLock("gpu-check", locks, enabled=switch == "on"))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
    alone = statistics.median(out["alone_ms"])
    for switch in ("on", "off"):
        out[f"lock_{switch}_ratio"] = statistics.median(out[f"lock_{switch}_ms"]) / alone
    return out


def fused_stages(spec: NetworkSpec, stages: range) -> NetworkSpec:
    """``spec`` with Fused-MBConv in ``stages`` (0-based: the paper's stages 1-3 are 0, 1, 2), SE dropped there."""
    swapped = tuple(dataclasses.replace(s, operator="fused_mbconv", se_ratio=0.0) if i in stages else s
                    for i, s in enumerate(spec.stages))
    return dataclasses.replace(spec, name=f"{spec.name}-fused1-3", stages=swapped)


def table3(device: torch.device, sizes: Sizes) -> dict:
    b4 = scale(get("efficientnet-b0", 1000), 1.4, 1.8, name="b4-like")
    out = {"timing": dataclasses.asdict(sizes.table3)}
    for name, spec in (("mbconv", b4), ("fused_1_3", fused_stages(b4, range(3)))):
        step = measure_step_time(spec, sizes.table3, device)
        out[name] = {"step_ms": step.median_ms, "img_s": step.images_per_second, "params": count_spec_params(spec)}
    out["fused_speedup"] = out["mbconv"]["step_ms"] / out["fused_1_3"]["step_ms"]
    return out


def pack_role(args: argparse.Namespace) -> None:
    """One packed trial: set up, say ready, wait for the go file, train, print its window and images as JSON."""
    sizes, device = SIZES[args.mode], torch.device(args.device)
    torch.set_num_threads(args.threads)
    data = DeviceData(*synthetic(sizes.images, sizes.image_size).split_validation(0.1, seed=0), device=device)
    config = TrainConfig(epochs=sizes.pack_epochs, image_size=sizes.image_size, batch_size=sizes.batch, deterministic=False)
    Path(args.ready).touch()
    wait_for(Path(args.go), None, seconds=600)
    begin = time.time()
    result = train_proxy(SMALL, data, config, lock=None)
    print(json.dumps({"start": begin, "end": time.time(), "images": sum(e["images"] for e in result.curve)}), flush=True)


def packing(args: argparse.Namespace, cores: int) -> dict:
    out = {}
    for n in SIZES[args.mode].packs:
        with tempfile.TemporaryDirectory() as folder:
            go = Path(folder) / "go"
            procs = [subprocess.Popen([sys.executable, __file__, "--role", "pack", "--mode", args.mode, "--device", args.device,
                                       "--threads", str(max(1, cores // n)), "--ready", f"{folder}/ready{i}", "--go", str(go)],
                                      cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
                     for i in range(n)]
            for i, proc in enumerate(procs):
                wait_for(Path(folder) / f"ready{i}", proc)
            go.touch()
            runs = [json.loads(proc.communicate(timeout=600)[0].strip().splitlines()[-1]) for proc in procs]
        wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
        out[str(n)] = {"aggregate_img_s": sum(r["images"] for r in runs) / wall, "wall_s": wall}
    return out


def table(result: dict) -> str:
    rows = []
    if "throughput" in result:
        t = result["throughput"]
        rows.append(("proxy trainer / bare loop images/s", f"{t['trainer_img_s']:.0f} / {t['bare_img_s']:.0f} = {t['ratio']:.3f}",
                     ">= 0.95"))
    if "neighbour" in result:
        rows += [("S next to a validating trainer, lock on / alone", f"{result['neighbour']['lock_on_ratio']:.3f}", "<= 1.05"),
                 ("S next to a validating trainer, lock off / alone", f"{result['neighbour']['lock_off_ratio']:.3f}",
                  "(what the lock prevents)")]
    if "table3" in result:
        rows.append(("Table 3: B4-like MBConv / Fused 1-3 step time", f"{result['table3']['fused_speedup']:.3f}", "> 1 (fused faster)"))
    for n, v in result.get("packing", {}).items():
        rows.append((f"{n} packed trial(s): aggregate images/s", f"{v['aggregate_img_s']:.0f}", ""))
    head = f"{result['device_name']}, torch {result['torch']}, mode {result['mode']}, {result['seconds']:.0f} s\n\n"
    return head + "| measurement | value | target |\n| --- | --- | --- |\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the measurements small on the CPU (default: needs a CUDA GPU)")
    parser.add_argument("--smoke", action="store_true", help="with --cpu: the tiniest sizes (the test suite's run)")
    parser.add_argument("--parts", default="throughput,neighbour,table3,packing",
                        help="measurements to run, comma-separated (default all four)")
    parser.add_argument("--role", choices=("neighbour", "pack"), help=argparse.SUPPRESS)
    for name in ("--mode", "--device", "--lock", "--lock-dir", "--ready", "--go"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        {"neighbour": neighbour_role, "pack": pack_role}[args.role](args)
        return 0
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); --cpu runs the small CPU version", file=sys.stderr)
        return 2
    args.mode = ("smoke" if args.smoke else "cpu") if args.cpu else "gpu"
    args.device = "cpu" if args.cpu else "cuda"
    device, sizes, cores = torch.device(args.device), SIZES[args.mode], os.cpu_count() or 1
    torch.set_num_threads(cores)
    begin = time.perf_counter()
    result = {"mode": args.mode, "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "cores": cores, "date": time.strftime("%Y-%m-%d")}
    parts = {"throughput": lambda: throughput(device, sizes, trial_spec(args.mode)),
             "neighbour": lambda: neighbour(device, sizes, args, threads=cores), "table3": lambda: table3(device, sizes),
             "packing": lambda: packing(args, cores)}
    for part in args.parts.split(","):
        if part not in parts:
            print(f"gpu_check: --parts: {part!r} is not allowed, allowed {', '.join(parts)}", file=sys.stderr)
            return 2
        result[part] = parts[part]()
    result["seconds"] = time.perf_counter() - begin
    print(json.dumps(result, indent=1))
    print(table(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
