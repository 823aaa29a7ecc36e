"""What a sweep says on stderr while it works: trial start and end lines, in-trial progress, the summary line.

Lines (``--quiet`` silences all but warnings)::

    backbone (trial 0) started: F1k3e1-F2k3e4-F2k3e4-M3k3e4-M5k3e6-M8k3e6 on this machine (2 CPU)
    trial 0 (backbone): epoch 1/3, step 20/56, 310 img/s, 12 s
    backbone (trial 0) finished in 41 s: A 0.8750, S 1.000, P 1.000, reward 0.8750
    [1/8 done, 1 running, 0 failed, 0 pruned] best reward 0.8812 (trial 1) vs backbone 0.8750 (+0.0062)  elapsed 80s  ETA 290s

The ETA comes from the trials finished so far (their mean duration, the trials still to run and
the concurrency), never from the start-up time.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from nas.record import OK, PRUNED, TrialRecord
from runners.progress_text import core_wait_text, epoch_text

IN_TRIAL_SECONDS = 5.0  # at most one in-trial line per trial this often


def short_name(spec: Any) -> str:
    """A compact architecture name: per stage operator (F fused, M MBConv), layers, kernel, expansion.

    >>> from nas.zoo import get
    >>> short_name(get("efficientnetv2-b0"))
    'F1k3e1-F2k3e4-F2k3e4-M3k3e4-M5k3e6-M8k3e6'
    """
    stages = spec["stages"] if isinstance(spec, dict) else [s.__dict__ for s in spec.stages]
    return "-".join(f"{'F' if s['operator'] == 'fused_mbconv' else 'M'}{s['layers']}k{s['kernel']}e{s['expansion']:g}"
                    for s in stages)


def outcome(record: TrialRecord) -> str:
    """``A .., S .., P .., reward ..`` of a finished record, or why it did not finish.

    >>> outcome(TrialRecord(status="ok", accuracy=0.9, normalized_step_time=1.2, normalized_params=0.5, reward=0.88))
    'A 0.9000, S 1.200, P 0.500, reward 0.8800'
    """
    if record.ok and record.reward is not None:
        a, s, p = record.asp
        return f"A {a:.4f}, S {s:.3f}, P {p:.3f}, reward {record.reward:.4f}"
    if record.status == PRUNED:
        return f"pruned after {record.epochs_run or '?'} epoch(s), A {record.accuracy or 0:.4f}"
    return f"failed: {str(record.failure_reason or 'unknown')[:160]}"


def versus_backbone(best: tuple[float, int] | None, backbone_reward: float | None) -> str:
    """The best trial against the backbone, in words.

    >>> versus_backbone((0.9427, 4), 0.9481)
    'best reward 0.9427 (trial 4) vs backbone 0.9481 (-0.0054): no trial beat the backbone'
    >>> versus_backbone((0.95, 2), 0.94)
    'best reward 0.9500 (trial 2) vs backbone 0.9400 (+0.0100)'
    """
    if best is None:
        return "best reward -" + (f" (backbone {backbone_reward:.4f})" if backbone_reward is not None else "")
    text = f"best reward {best[0]:.4f} (trial {best[1]})"
    if backbone_reward is None:
        return text
    text += f" vs backbone {backbone_reward:.4f} ({best[0] - backbone_reward:+.4f})"
    return text + (": no trial beat the backbone" if best[0] <= backbone_reward else "")


class Progress:
    """The driver's stderr: one line per trial start and end, in-trial progress, a summary line per change."""

    def __init__(self, total: int, quiet: bool, concurrency: int = 1, stream: TextIO | None = None) -> None:
        self.total, self.quiet, self.concurrency = total, quiet, max(1, concurrency)
        self.stream = stream
        self.begin = time.monotonic()
        self.durations: list[float] = []  # seconds of the trials this driver trained (the backbone included)
        self.started_at: dict[int, float] = {}
        self.last_line: dict[int, float] = {}
        self.labels: dict[int, str] = {}
        self.backbone_reward: float | None = None

    def log(self, message: str) -> None:
        """A line on stderr (warnings go out even with ``--quiet``)."""
        print(message, file=self.stream or sys.stderr, flush=True)

    def say(self, message: str) -> None:
        if not self.quiet:
            self.log(message)

    def label(self, number: int, backbone: bool) -> str:
        return f"backbone (trial {number})" if backbone else f"trial {number}"

    def trial_started(self, number: int, spec: Any, where: str, backbone: bool = False) -> None:
        self.started_at[number] = time.monotonic()
        self.labels[number] = self.label(number, backbone)
        self.say(f"{self.labels[number]} started: {short_name(spec)} {where}")

    def trial_reused(self, number: int, source: int) -> None:
        self.say(f"trial {number}: same architecture as trial {source}, its record reused (no training)")

    def trial_progress(self, number: int, info: dict[str, Any]) -> None:
        """In-trial progress (epoch, step, images/s), at most one line per trial every ``IN_TRIAL_SECONDS``."""
        now = time.monotonic()
        waiting = core_wait_text(info)
        if waiting:  # always said: it explains a trial that does not move
            self.say(f"{self.labels.get(number, f'trial {number}')}: {waiting}")
            return
        if now - self.last_line.get(number, 0.0) < IN_TRIAL_SECONDS:
            return
        self.last_line[number] = now
        self.say(f"{self.labels.get(number, f'trial {number}')}: {epoch_text(info, now - self.started_at.get(number, now))}")

    def trial_finished(self, number: int, record: TrialRecord, backbone: bool = False) -> None:
        start = self.started_at.pop(number, None)
        self.last_line.pop(number, None)
        label = self.labels.pop(number, self.label(number, backbone))
        seconds = time.monotonic() - start if start is not None else None
        if seconds is not None and record.status in (OK, PRUNED):
            self.durations.append(seconds)
        if backbone and record.ok and record.reward is not None:
            self.backbone_reward = float(record.reward)
        took = f" in {seconds:.0f} s" if seconds is not None else ""
        where = f" on {record.host} ({record.device or '?'})" if record.host else ""
        self.say(f"{label} finished{took}{where}: {outcome(record)}")

    def eta(self, done: int, running: int) -> str:
        """Seconds left from the mean duration of the trials finished so far ('?' before the first)."""
        remaining = max(0, self.total - done)
        if not remaining:
            return "0s"
        if not self.durations:
            return "?"
        mean = sum(self.durations) / len(self.durations)
        in_flight = [time.monotonic() - t for t in self.started_at.values()]
        unstarted = max(0, remaining - running)
        left_in_flight = max((max(0.0, mean - e) for e in in_flight), default=0.0)
        return f"{left_in_flight + math.ceil(unstarted / self.concurrency) * mean:.0f}s"

    def update(self, done: int, running: int, failed: int, pruned: int, best: tuple[float, int, str] | None, new_done: int = 0) -> None:
        """The summary line: counts, the best trial against the backbone, elapsed time and ETA."""
        elapsed = time.monotonic() - self.begin
        best_text = versus_backbone((best[0], best[1]) if best else None, self.backbone_reward)
        self.say(f"[{done}/{self.total} done, {running} running, {failed} failed, {pruned} pruned] {best_text}  "
                 f"elapsed {elapsed:.0f}s  ETA {self.eta(done, running)}")
