"""The Ray worker side of a sweep: evaluate one candidate, never raise (failures become records)."""

from __future__ import annotations

import os
import traceback
from dataclasses import replace
from typing import Any

import optuna

from nas.data import Dataset
from nas.spec import NetworkSpec
from runners.config import config_from_dict
from runners.study import quiet_optuna, rdb_storage


def trial_seed(study_seed: int, number: int) -> int:
    """Per-trial seed derived from (study seed, trial number)."""
    return (study_seed * 1_000_003 + number * 7919 + 17) % (2**31 - 1)



def asha_pruner() -> optuna.pruners.BasePruner:
    """The successive-halving pruner; driver and workers must build the same one."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)



def evaluate_trial(spec_json: dict, dataset: Dataset, config_json: dict, backbone_json: dict, seed: int,
                   prune: dict | None, use_gpu: bool, run_dir: str) -> dict[str, Any]:
    """Runs inside a Ray worker: evaluate one candidate; never raises (failures become records)."""
    import torch

    from nas.timing import ReferenceCache
    from runners.evaluate import evaluate_candidate

    config = config_from_dict(config_json)
    threads = max(1, int(config.cpus_per_trial))
    torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 in workers
    train = replace(config.train, seed=seed, threads=threads)
    on_epoch = None
    if prune is not None:
        quiet_optuna()
        study = optuna.load_study(study_name=prune["study"], storage=rdb_storage(prune["storage"]),
                                  pruner=asha_pruner())
        trial = optuna.trial.Trial(study, prune["trial_id"])

        def on_epoch(epoch: int, metrics: dict) -> bool:
            trial.report(metrics["val_accuracy"], epoch)
            return trial.should_prune()

    import ray

    node = ray.get_runtime_context().get_node_id()
    try:
        record = evaluate_candidate(
            NetworkSpec.from_dict(spec_json), dataset, train, config.timing, backbone=NetworkSpec.from_dict(backbone_json),
            device="cuda" if use_gpu and torch.cuda.is_available() else "cpu", on_epoch=on_epoch,
            reference_cache=ReferenceCache(os.path.join(run_dir, "reference_times.json")),
        )
    except Exception as error:  # the sweep goes on; the trial is stored FAIL with this reason
        record = {"status": "failed", "failure_reason": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc(limit=8)}
    record["ray_node_id"] = node
    return record
