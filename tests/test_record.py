"""The trial record: JSON round trips, old and unknown attributes kept, the partial writes checked."""

import json

import pytest

from nas.errors import InputError
from nas.record import (
    BACKBONE_ROLE,
    INTERRUPTED,
    METRICS,
    NOT_COPIED,
    SURPLUS,
    TrialRecord,
    attrs,
    record_of,
)

FULL = TrialRecord(status="ok", accuracy=0.9, normalized_step_time=1.2, normalized_params=0.5, reward=0.88, spec_key="k",
                   curve=[{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_accuracy": 0.9}], seed=3, role=BACKBONE_ROLE,
                   trained_step={"optimizer": "AdamW"}, step_time_samples_ms=[1.0, 2.0, 3.0])


def test_round_trip_through_user_attributes_and_json():
    stored = json.loads(json.dumps(FULL.to_attrs()))  # as Optuna stores user attributes
    assert TrialRecord.from_attrs(stored) == FULL
    assert FULL.asp == (0.9, 1.2, 0.5) and list(FULL.metrics()) == list(METRICS)


def test_unknown_and_old_attributes_are_kept_and_written_back():
    old = {"status": "ok", "accuracy": 0.5, "a_key_from_an_older_version": [1, 2]}
    record = TrialRecord.from_attrs(old)
    assert record.extra == {"a_key_from_an_older_version": [1, 2]} and record.accuracy == 0.5
    assert record.to_attrs()["a_key_from_an_older_version"] == [1, 2]
    assert TrialRecord.from_attrs({"status": "running?"}).status == "failed"  # an unknown stored status reads as failed


def test_a_finished_record_clears_the_claims_interrupted_reason():
    # the claim stores failure_reason=INTERRUPTED at ask; the tell writes the record's None over it
    assert FULL.to_attrs()["failure_reason"] is None
    assert "traceback" not in TrialRecord(traceback="x").to_attrs()  # shown once, never stored


def test_bad_status_and_unknown_partial_fields_are_refused():
    with pytest.raises(InputError, match="status"):
        TrialRecord(status="done")
    with pytest.raises(TypeError, match="not fields"):
        attrs(normalised_step_time=1.0)
    assert attrs(role=BACKBONE_ROLE, retry_of=4) == {"role": "backbone", "retry_of": 4}


def test_roles_reasons_and_what_a_duplicate_takes_over():
    assert TrialRecord(failure_reason=INTERRUPTED).interrupted and TrialRecord(failure_reason=SURPLUS).surplus
    assert FULL.is_backbone and not TrialRecord().is_backbone
    copied = FULL.copied()
    assert not set(NOT_COPIED) & set(copied) and copied["spec_key"] == "k"


def test_record_of_reads_a_trial():
    class Trial:
        user_attrs = FULL.to_attrs()

    assert record_of(Trial()) == FULL
