"""The loop of one driver: fill free slots, settle waiters, relay pruning, time out, tell.

- **One sweep**: every driver counts all drivers' RUNNING trials toward ``n_trials``; a trial claims its
  architecture (``spec_key``) right after its first heartbeat, and the lowest-numbered trial holding a key
  trains it while later ones wait for its record (or are answered at once from a finished one).
- **Told once**: a record is stored on its trial and told; a trial another driver recovered meanwhile keeps
  the recovery (its late result is dropped, never counted twice).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import optuna

from nas.record import BACKBONE_ROLE, FAILED, INTERRUPTED, OK, PRUNED, SURPLUS, TIMEOUT, TrialRecord, attrs, record_of
from nas.scores import score_so_far
from runners.config import SweepConfig
from runners.study import retried
from runners.sweep.executors import InFlight, LocalExecutor, RayExecutor
from runners.sweep.ledger import Ledger, Seen
from runners.sweep.liveness import Heartbeat
from runners.sweep.progress import Progress
from runners.sweep.worker import trial_seed
from search_spaces import SearchSpace

TrialState = optuna.trial.TrialState
CLAIM_WAIT_SECONDS = 30.0  # a trial asked longer ago than this without a claim is not waited for
BACKBONE_VALUES = (float("-inf"), float("inf"), float("inf"))  # the backbone's objective values: last under every direction
STATES = {OK: TrialState.COMPLETE, PRUNED: TrialState.PRUNED, FAILED: TrialState.FAIL}


def report_curve(trial: optuna.Trial, curve: list[dict[str, Any]], score: str = "accuracy") -> None:
    """Each epoch's A so far (``score`` of the curve up to it) as the trial's intermediate value (the dashboard's
    learning curves): what ``--pruner asha`` reports while the trial trains."""
    for end, point in enumerate(curve, start=1):
        value = score_so_far(curve[:end], score)
        if "epoch" in point and value is not None:
            trial.report(float(value), int(point["epoch"]))


class Driver:
    """The loop of one driver: fill free slots, settle waiters, relay pruning, time out, tell."""

    def __init__(self, config: SweepConfig, study: optuna.Study, ledger: Ledger, heartbeat: Heartbeat,
                 executor: RayExecutor | LocalExecutor, space: SearchSpace, num_classes: int, progress: Progress, driver: str,
                 *, reward: Callable[[float, float, float], float] | None = None) -> None:
        self.config, self.study, self.ledger, self.heartbeat, self.executor = config, study, ledger, heartbeat, executor
        self.space, self.num_classes, self.progress, self.driver = space, num_classes, progress, driver
        self.multi = config.objective == "multi"
        self.reward = reward or config.reward_function()
        self.mine: dict[int, InFlight] = {}  # by trial number
        self.new_done = 0
        self.next_stale_check = time.monotonic() + config.heartbeat_interval

    # -- filling slots
    def room(self) -> bool:
        return self.ledger.counted + len(self.ledger.running()) < self.config.n_trials

    def loop(self) -> None:
        while True:
            now = time.monotonic()
            if now >= self.next_stale_check:
                retried(self.ledger.storage, lambda: optuna.storages.fail_stale_trials(self.study))
                self.fail_unclaimed()
                self.next_stale_check = now + self.config.heartbeat_interval
            self.ledger.refresh()
            changed = False
            while len(self.mine) < self.config.max_concurrent and self.room():
                changed |= self.start_one()
            changed |= self.settle_waiters()
            changed |= self.relay_pruning()
            changed |= self.enforce_timeouts()
            if changed:  # after the refill, so "running" counts the trials just started
                self.show()
            if not self.mine:
                if self.ledger.counted >= self.config.n_trials:
                    break
                # other drivers' trials fill the sweep: stay, to recover them if their driver dies
                time.sleep(min(1.0, self.config.heartbeat_interval))
                continue
            self.collect()

    def collect(self) -> None:
        """Wait a little for this driver's trainings (bounded by the heartbeat, pruning and time limits); tell those done."""
        handles = [f.handle for f in self.mine.values() if f.handle is not None]
        waiting = len(handles) < len(self.mine) or self.config.pruner == "asha"
        timeout = min(0.2 if waiting else 5.0, self.config.heartbeat_interval, self.time_to_timeout())
        ready = self.executor.wait(handles, max(0.0, timeout)) if handles else (time.sleep(timeout) or [])
        by_handle = {f.handle: n for n, f in self.mine.items() if f.handle is not None}
        if ready:  # before they leave self.mine: a short trial's wait for a core is told, not dropped
            self.relay_progress()
        for handle in ready:
            self.finish(by_handle[handle], self.executor.result(handle))
        if ready:
            self.show()

    def fail_unclaimed(self) -> None:
        """Recover trials whose driver died between ``ask`` and its first heartbeat (Optuna's check skips them).

        A trial is claimed (``spec_key``) right after its first heartbeat is recorded, within milliseconds of
        its ask; one seen RUNNING unclaimed for longer than ``grace_period`` has no driver, and is failed
        ``interrupted`` and queued again as a stale trial is.
        """
        callback = self.ledger.storage.get_heartbeat_stale_trial_callback()
        for number in list(self.ledger.unclaimed):
            waited = self.ledger.unclaimed_for(number)
            if number in self.mine or waited <= self.config.grace_period:
                continue
            trial_id = self.ledger.trial_id(number)
            try:
                for name, value in attrs(failure_reason=INTERRUPTED).items():
                    self.ledger.storage.set_trial_user_attr(trial_id, name, value)
                if not self.ledger.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # claimed or recovered meanwhile
            self.progress.log(f"trial {number}: no heartbeat {waited:.0f} s after its ask (its driver died); recovered")
            if callback is not None:
                callback(self.study, self.ledger.fetch(number))

    def start_one(self) -> bool:
        """Ask one trial, claim its architecture; train it, wait for its twin, or answer it now."""
        trial = self.study.ask()
        kill_at = os.environ.get("NAS_TEST_KILL_AFTER_ASK")  # test hook: a driver dying before its trial's claim
        if kill_at == "1":  # before its first heartbeat
            os.kill(os.getpid(), signal.SIGKILL)
        trial_id = self.ledger.storage.get_trial_id_from_study_id_trial_number(self.ledger.study_id, trial.number)
        self.ledger.note_asked(trial.number, trial_id)
        try:
            # written before the first heartbeat: a driver dying after it leaves a trial that Optuna's stale check
            # fails as it is, and it must read "interrupted" (queued again), not a failure of the sweep
            for name, value in attrs(failure_reason=INTERRUPTED).items():
                trial.set_user_attr(name, value)
            self.heartbeat.add(trial_id)
            if kill_at == "heartbeat":  # after its first heartbeat, before its claim
                os.kill(os.getpid(), signal.SIGKILL)
            spec = self.space.suggest(trial).with_classes(self.num_classes)
            claim = attrs(spec_key=spec.key(), seed=trial_seed(self.config.seed, trial.number), driver=self.driver)
            for name, value in claim.items():
                trial.set_user_attr(name, value)
        except optuna.exceptions.UpdateFinishedTrialError:  # stalled past grace_period (storage down): recovered meanwhile
            self.heartbeat.remove(trial_id)
            self.progress.log(f"warning: trial {trial.number} was recovered by another driver before its claim; left to its retry")
            return False
        asked = record_of(trial)
        flight = InFlight(trial, trial_id, spec, time.monotonic(), asked.attempt or 0, asked.role)
        self.mine[trial.number] = flight
        self.ledger.refresh()  # sees other drivers' claims made meanwhile
        ahead = [s for s in self.ledger.running() if s.number < trial.number]
        if self.ledger.counted + len(ahead) >= self.config.n_trials:  # another driver took the last slot first
            self.close(trial.number, TrialRecord(failure_reason=SURPLUS), count=False)
            return False
        return self.decide(trial.number)

    def decide(self, number: int) -> bool:
        """Answer from a finished twin, wait for a running one with a lower number, or train; True if finished now."""
        flight = self.mine[number]
        key = flight.spec.key()
        source = self.ledger.index.get(key)
        if source is not None:
            self.answer(number, self.ledger.fetch(source))
            return True
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:  # lower-numbered trials asked a moment ago and still writing their claim: wait until it is visible
            pending = [s for s in self.ledger.running()
                       if s.number < number and s.key is None and self.ledger.unclaimed_for(s.number) < CLAIM_WAIT_SECONDS]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.05)
            self.ledger.refresh()
        if key in self.ledger.index:
            self.answer(number, self.ledger.fetch(self.ledger.index[key]))
            return True
        twins = [s.number for s in self.ledger.claims() if s.key == key and s.number < number]
        if twins:
            flight.winner = min(twins)
            return False
        flight.winner = None
        train = replace(self.config.train, seed=trial_seed(self.config.seed, number), threads=max(1, int(self.config.cpus_per_trial)))
        flight.handle = self.executor.submit(number, flight.spec, train)
        flight.started = time.monotonic()
        self.progress.trial_started(number, flight.spec, self.executor.where, backbone=self.is_backbone(flight))
        return False

    def is_backbone(self, flight: InFlight) -> bool:
        return flight.role == BACKBONE_ROLE

    def settle_waiters(self) -> bool:
        changed = False
        running = {s.number for s in self.ledger.claims()}
        for number, flight in list(self.mine.items()):
            if flight.handle is None and flight.winner is not None and flight.winner not in running:
                changed |= self.decide(number)
        return changed

    # -- pruning and time limits
    def relay_pruning(self) -> bool:
        for number, epoch, value in self.executor.reports():
            flight = self.mine.get(number)
            if flight is None:
                self.executor.decide(number, epoch, True)  # timed out meanwhile: stop it
                continue
            flight.trial.report(value, epoch)
            # the yardstick is never pruned: every comparison needs its full record
            self.executor.decide(number, epoch, flight.trial.should_prune() and not self.is_backbone(flight))
        self.relay_progress()
        return False

    def relay_progress(self) -> None:
        """Tell the in-trial progress the workers posted (epochs, waits for a core) of this driver's trials."""
        for number, info in self.executor.progress_reports():
            if number in self.mine:
                if info.get("cores") == "taken":  # trial_timeout counts from when the trial has its cores
                    self.mine[number].started = time.monotonic()
                self.progress.trial_progress(number, info)

    def time_to_timeout(self) -> float:
        starts = [f.started for f in self.mine.values() if f.handle is not None]
        return max(0.0, min(starts) + self.config.trial_timeout - time.monotonic()) if starts else float("inf")

    def enforce_timeouts(self) -> bool:
        now, changed = time.monotonic(), False
        for number, flight in list(self.mine.items()):
            if flight.handle is not None and now - flight.started > self.config.trial_timeout:
                self.executor.cancel(flight.handle)
                self.finish(number, TrialRecord(failure_reason=f"{TIMEOUT} ({self.config.trial_timeout:g} s); cancelled"))
                changed = True
        return changed

    # -- telling
    def finish(self, number: int, record: TrialRecord) -> None:
        if record.ok:
            try:
                record = record.with_(reward=self.reward(*record.asp))
            except (ValueError, TypeError) as error:
                record = record.with_(status=FAILED, failure_reason=f"reward: {error}")
        if number in self.mine and record.reused_from is None:
            self.progress.trial_finished(number, record, backbone=self.is_backbone(self.mine[number]))
        self.close(number, record)

    def close(self, number: int, record: TrialRecord, count: bool = True) -> None:
        """Store ``record`` on this driver's trial and tell its state; a trial failed meanwhile as stale is left as is."""
        flight = self.mine.pop(number)
        self.heartbeat.remove(flight.trial_id)
        state = STATES[record.status]
        try:
            self.store(flight, record, state)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.progress.log(f"warning: trial {number} was recovered by another driver (heartbeat too late); its result is dropped")
            return
        if record.worker_lost is not None:  # not the trial's fault: recovered like a dead driver's trial
            self.progress.log(f"trial {number}: its worker was lost ({record.worker_lost[:120]}); queued again")
            callback = self.ledger.storage.get_heartbeat_stale_trial_callback()
            if callback is not None:
                callback(self.study, self.ledger.fetch(number))
            count = False
        self.new_done += count
        reward = record.reward if state == TrialState.COMPLETE else None
        self.ledger.absorb(Seen(number, state, record.spec_key or flight.spec.key(), record.failure_reason, flight.attempt,
                                flight.role, reward))

    def store(self, flight: InFlight, record: TrialRecord, state: TrialState) -> None:
        """The record as the trial's user attributes, the curve as intermediate values, then the tell."""
        for name, value in record.to_attrs().items():
            flight.trial.set_user_attr(name, value)
        if self.config.pruner != "asha" and not self.multi:  # per-epoch curve as intermediate values (asha reported them)
            report_curve(flight.trial, record.curve or [], self.config.train.score)
        if state != TrialState.COMPLETE:
            self.study.tell(flight.trial, state=state)
        elif self.is_backbone(flight):  # the yardstick's objective value is kept out: it is never "best" (its
            self.study.tell(flight.trial, BACKBONE_VALUES if self.multi else BACKBONE_VALUES[0])  # metrics stay in its record)
        else:
            self.study.tell(flight.trial, list(record.asp) if self.multi else record.reward)

    def release(self, requeue: Callable[[optuna.Study, optuna.trial.FrozenTrial], None]) -> None:
        """Interrupted: store this driver's in-flight trials FAIL ``interrupted`` and queue them again, as a stale trial is."""
        for number, flight in list(self.mine.items()):
            self.heartbeat.remove(flight.trial_id)
            try:
                self.study.tell(flight.trial, state=TrialState.FAIL)  # its failure_reason says interrupted since the ask
                requeue(self.study, self.ledger.fetch(number))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # recovered by another driver already
            except Exception as error:  # storage gone too: the trial goes stale and the next driver recovers it
                self.progress.log(f"warning: trial {number} left for recovery after the grace period: {type(error).__name__}")
        self.mine.clear()

    def answer(self, number: int, source: optuna.trial.FrozenTrial) -> None:
        """Finish ``number`` with the record of ``source``, a finished trial of the same architecture."""
        status = {TrialState.COMPLETE: OK, TrialState.PRUNED: PRUNED}.get(source.state, FAILED)
        record = TrialRecord.from_attrs({**record_of(source).copied(), **attrs(reused_from=source.number, status=status)})
        self.progress.trial_reused(number, source.number)
        self.finish(number, record)

    def show(self) -> None:
        c = self.ledger.counts
        running = len({s.number for s in self.ledger.running()} | set(self.mine))  # the backbone and this driver's trials too
        self.progress.update(self.ledger.counted, running, c["failed"], c["pruned"], self.ledger.best, self.new_done)
