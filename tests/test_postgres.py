"""The throwaway PostgreSQL server works as an Optuna RDB storage through our own storage helper."""

from __future__ import annotations

import optuna

from runners.study import rdb_storage


def test_study_round_trip_on_postgres(postgres):
    url = postgres.new_database()
    study = optuna.create_study(study_name="pg", storage=rdb_storage(url), direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    again = optuna.load_study(study_name="pg", storage=rdb_storage(url))
    assert [t.value for t in again.trials] == [t.value for t in study.trials]
    assert len(again.trials) == 3
