"""The ledger: what a driver knows about every trial of its study (counts, the architecture index, the best reward).

Kept incrementally from the driver's own tells and small queries, never by re-reading the whole
study on the hot path: finished trials never change, so each is read once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna

from nas.record import BACKBONE_ROLE, TrialRecord, record_of
from runners.study import KINDS, kind

TrialState = optuna.trial.TrialState


@dataclass(frozen=True)
class Seen:
    """The part of a trial the driver's bookkeeping needs."""

    number: int
    state: TrialState
    key: str | None
    reason: str | None
    attempt: int
    role: str | None
    reward: float | None
    started: float = 0.0  # POSIX time the trial started (0 when unknown)

    @property
    def kind(self) -> str:
        return kind(self.state, TrialRecord(failure_reason=self.reason, role=self.role))

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> Seen:
        r = record_of(trial)
        return cls(trial.number, trial.state, r.spec_key, r.failure_reason, r.attempt or 0, r.role,
                   r.reward if trial.state == TrialState.COMPLETE else None,
                   trial.datetime_start.timestamp() if trial.datetime_start else 0.0)


class Ledger:
    """Counts, the architecture index and the best reward, from the study, updated incrementally.

    Finished trials never change, so each is read once: from this driver's own tells, or fetched
    by number when it leaves the RUNNING/WAITING set or appears as a number not seen before.
    """

    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, max_retries: int) -> None:
        self.study, self.storage, self.max_retries = study, storage, max_retries
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.counts = dict.fromkeys(KINDS[:5], 0)
        self.finished: set[int] = set()
        self.counted = 0
        self.index: dict[str, int] = {}  # spec_key -> number of the finished trial that answers it
        self.best: tuple[float, int, str] | None = None  # (reward, number, spec_key)
        self.active: dict[int, Seen] = {}  # RUNNING and WAITING trials at the last refresh
        self.ids: dict[int, int] = {}  # number -> storage trial id
        self.horizon = -1  # every number up to here is finished-known or active
        self.unclaimed: dict[int, float] = {}  # RUNNING trial without a claim -> monotonic time this driver first saw it so
        for trial in study.get_trials(deepcopy=False):  # once, at start-up
            self.horizon = max(self.horizon, trial.number)
            if trial.state.is_finished():
                self.absorb(Seen.of(trial))
            else:
                self.active[trial.number] = Seen.of(trial)
        self.refresh()

    def trial_id(self, number: int) -> int:
        if number not in self.ids:
            self.ids[number] = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        return self.ids[number]

    def fetch(self, number: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self.trial_id(number))

    def absorb(self, seen: Seen) -> None:
        if seen.number in self.finished:
            return
        self.finished.add(seen.number)
        self.active.pop(seen.number, None)
        self.ids.pop(seen.number, None)
        found = seen.kind
        if found == "backbone":  # the reference trial: not counted; a sampled twin of it is answered from it
            if seen.state == TrialState.COMPLETE and seen.key is not None:
                self.index.setdefault(seen.key, seen.number)
            return
        self.counts[found] += 1
        if found == "interrupted":
            self.counted += seen.attempt >= self.max_retries  # not queued again: it stays a failure of the sweep
            return
        if found == "surplus":
            return
        self.counted += 1
        if seen.key is not None:
            self.index.setdefault(seen.key, seen.number)
        if seen.reward is not None and (self.best is None or (seen.reward, -seen.number) > (self.best[0], -self.best[1])):
            self.best = (seen.reward, seen.number, seen.key or "")

    def refresh(self) -> None:
        """Bring the ledger up to date: one small query plus one read per trial that changed since."""
        current = {t.number: Seen.of(t) for t in self.storage.get_all_trials(self.study_id, deepcopy=False,
                                                                              states=(TrialState.RUNNING, TrialState.WAITING))}
        for number in [n for n in self.active if n not in current]:  # finished since the last look
            self.see(self.fetch(number), current)
        while True:  # numbers are dense: probe past the highest known one for trials never seen (another driver's)
            number = self.horizon + 1
            if number not in current:
                try:
                    trial = self.fetch(number)
                except KeyError:
                    break
                self.see(trial, current)
            self.horizon = number
        self.active = current
        now = time.monotonic()
        self.unclaimed = {n: self.unclaimed.get(n, now) for n, s in current.items() if s.state == TrialState.RUNNING and s.key is None}

    def unclaimed_for(self, number: int) -> float:
        """Seconds this driver has seen trial ``number`` RUNNING without a claim (a duration on this host's clock; 0 if claimed)."""
        return time.monotonic() - self.unclaimed[number] if number in self.unclaimed else 0.0

    def see(self, trial: optuna.trial.FrozenTrial, current: dict[int, Seen]) -> None:
        if trial.state.is_finished():
            self.absorb(Seen.of(trial))
        else:
            current[trial.number] = Seen.of(trial)

    def note_asked(self, number: int, trial_id: int) -> None:
        self.ids[number] = trial_id

    def running(self) -> list[Seen]:
        return [s for s in self.active.values() if s.state == TrialState.RUNNING and s.role != BACKBONE_ROLE]

    def claims(self) -> list[Seen]:
        """RUNNING trials that may answer a later twin: the search trials and the backbone trial."""
        return [s for s in self.active.values() if s.state == TrialState.RUNNING]
