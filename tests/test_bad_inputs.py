"""Every bad input gets a clean answer: exit 2, one stderr line naming the option or field and what is allowed,
no traceback, and no file created or changed (the directories involved are snapshotted before and after).

The table runs in-process through ``runners.cli.main`` (none of these cases starts Ray or trains); a sample
runs again as the real console command in subprocesses to show both paths answer alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nas.zoo import get
from runners.cli import main
from runners.config import SweepConfig
from tests.conftest import Result, assert_one_line_error, run_nas

BAD_UTF8 = b"name: \xff\xfe\xfa broken\n"

# (argv with {w} = scratch directory, {run} = a finished sweep, {port} = a port in use; words the line must contain)
CASES: list[tuple[str, list[str], tuple[str, ...]]] = [
    # ---- inspect -------------------------------------------------------------------------------
    ("inspect-unknown", ["inspect", "no-such-net"], ("spec",)),
    ("inspect-utf8", ["inspect", "{w}/bad_utf8.json"], ("spec", "UTF-8")),
    ("inspect-string", ["inspect", "{w}/string.json"], ("spec",)),
    ("inspect-list", ["inspect", "{w}/list.json"], ("spec",)),
    ("inspect-malformed", ["inspect", "{w}/malformed.json"], ("spec", "malformed")),
    ("inspect-empty", ["inspect", "{w}/empty.json"], ("spec",)),
    ("inspect-dir", ["inspect", "{w}/adir"], ("spec",)),
    ("inspect-kernel", ["inspect", "{w}/bad_kernel.json"], ("kernel",)),
    ("inspect-unknown-field", ["inspect", "{w}/extra_field.json"], ("unknown field",)),
    ("inspect-size-0", ["inspect", "efficientnetv2-b0", "--image-size", "0"], ("--image-size",)),
    ("inspect-size-neg", ["inspect", "efficientnetv2-b0", "--image-size", "-5"], ("--image-size",)),
    ("inspect-size-text", ["inspect", "efficientnetv2-b0", "--image-size", "abc"], ("--image-size",)),
    ("inspect-classes-0", ["inspect", "efficientnetv2-b0", "--num-classes", "0"], ("--num-classes",)),
    ("inspect-classes-float", ["inspect", "efficientnetv2-b0", "--num-classes", "1e3"], ("--num-classes",)),
    ("inspect-classes-huge", ["inspect", "efficientnetv2-b0", "--num-classes", "200000"], ("num_classes",)),
    ("inspect-missing", ["inspect"], ("spec",)),
    ("inspect-flag", ["inspect", "efficientnetv2-b0", "--bogus"], ("--bogus",)),
    # ---- scale ---------------------------------------------------------------------------------
    ("scale-no-output", ["scale", "efficientnetv2-b0", "--width", "1.1", "--depth", "1.2"], ("-o",)),
    ("scale-no-depth", ["scale", "efficientnetv2-b0", "--width", "1.1", "-o", "{w}/new.json"], ("--depth",)),
    ("scale-parent-missing", ["scale", "efficientnetv2-b0", "--width", "1", "--depth", "1", "-o", "{w}/no/such/a.json"], ("-o", "does not exist")),
    ("scale-abs-parent-missing", ["scale", "efficientnetv2-b0", "--width", "1", "--depth", "1", "-o", "/no/such/dir/a.json"], ("-o",)),
    ("scale-output-dir", ["scale", "efficientnetv2-b0", "--width", "1", "--depth", "1", "-o", "{w}/adir"], ("-o", "directory")),
    ("scale-output-dir-force", ["scale", "efficientnetv2-b0", "--width", "1", "--depth", "1", "-o", "{w}/adir", "--force"], ("-o", "directory")),
    ("scale-parent-file", ["scale", "efficientnetv2-b0", "--width", "1", "--depth", "1", "-o", "{w}/f/a.json"], ("-o", "not a directory")),
    ("scale-exists", ["scale", "efficientnetv2-b0", "--width", "1", "--depth", "1", "-o", "{w}/existing.json"], ("-o", "--force")),
    ("scale-unwritable", ["scale", "efficientnetv2-b0", "--width", "1", "--depth", "1", "-o", "/proc/a.json"], ("-o", "writable")),
    ("scale-output-empty", ["scale", "efficientnetv2-b0", "--width", "1", "--depth", "1", "-o", "."], ("-o",)),
    ("scale-width-0", ["scale", "efficientnetv2-b0", "--width", "0", "--depth", "1", "-o", "{w}/new.json"], ("width",)),
    ("scale-width-neg", ["scale", "efficientnetv2-b0", "--width", "-2", "--depth", "1", "-o", "{w}/new.json"], ("width",)),
    ("scale-width-nan", ["scale", "efficientnetv2-b0", "--width", "nan", "--depth", "1", "-o", "{w}/new.json"], ("--width",)),
    ("scale-width-inf", ["scale", "efficientnetv2-b0", "--width", "inf", "--depth", "1", "-o", "{w}/new.json"], ("--width",)),
    ("scale-width-text", ["scale", "efficientnetv2-b0", "--width", "wide", "--depth", "1", "-o", "{w}/new.json"], ("--width",)),
    ("scale-depth-0", ["scale", "efficientnetv2-b0", "--width", "1", "--depth", "0", "-o", "{w}/new.json"], ("depth",)),
    ("scale-spec-utf8", ["scale", "{w}/bad_utf8.json", "--width", "1", "--depth", "1", "-o", "{w}/new.json"], ("spec", "UTF-8")),
    ("scale-spec-unknown", ["scale", "nope", "--width", "1", "--depth", "1", "-o", "{w}/new.json"], ("spec",)),
    ("family-no-output", ["scale", "efficientnetv2-b0", "--family"], ("-o",)),
    ("family-output-file", ["scale", "efficientnetv2-b0", "--family", "-o", "{w}/f"], ("-o", "not a directory")),
    ("family-under-file", ["scale", "efficientnetv2-b0", "--family", "-o", "{w}/f/sub"], ("-o", "file")),
    ("family-unwritable", ["scale", "efficientnetv2-b0", "--family", "-o", "/proc/fam"], ("-o", "writable")),
    ("family-members-bad", ["scale", "efficientnetv2-b0", "--family", "--members", "x", "-o", "{w}/fam2"], ("--members",)),
    ("family-members-empty", ["scale", "efficientnetv2-b0", "--family", "--members", ",", "-o", "{w}/fam2"], ("--members",)),
    ("family-members-mixed", ["scale", "efficientnetv2-b0", "--family", "--members", "s,xl", "-o", "{w}/fam2"], ("--members", "xl")),
    ("family-exists", ["scale", "efficientnetv2-b0", "--family", "--members", "s", "-o", "{w}/fam"], ("-o", "--force")),
    # ---- space ---------------------------------------------------------------------------------
    ("space-utf8-yaml", ["space", "--config", "{w}/bad_utf8.yaml"], ("space config", "UTF-8")),
    ("space-utf8-toml", ["space", "--config", "{w}/bad_utf8.toml"], ("space config", "UTF-8")),
    ("space-utf8-json", ["space", "--config", "{w}/bad_utf8.json"], ("space config", "UTF-8")),
    ("space-missing", ["space", "--config", "{w}/nope.yaml"], ("space config",)),
    ("space-dir", ["space", "--config", "{w}/adir"], ("space config",)),
    ("space-extension", ["space", "--config", "{w}/space.txt"], ("space config", ".yaml")),
    ("space-list", ["space", "--config", "{w}/list.yaml"], ("space config", "mapping")),
    ("space-json-string", ["space", "--config", "{w}/string.json"], ("space config", "mapping")),
    ("space-malformed-yaml", ["space", "--config", "{w}/malformed.yaml"], ("space config",)),
    ("space-malformed-toml", ["space", "--config", "{w}/malformed.toml"], ("space config",)),
    ("space-unknown-key", ["space", "--config", "{w}/space_unknown.yaml"], ("unknown key",)),
    ("space-delta", ["space", "--config", "{w}/space_delta.yaml"], ("layers_delta",)),
    ("space-kernel", ["space", "--config", "{w}/space_kernel.yaml"], ("kernel",)),
    ("space-operator", ["space", "--config", "{w}/space_operator.yaml"], ("operator",)),
    ("space-expansion", ["space", "--config", "{w}/space_expansion.yaml"], ("expansion",)),
    ("space-stage-number", ["space", "--config", "{w}/space_stage.yaml"], ("stage",)),
    ("space-backbone", ["space", "--backbone", "nope"], ("spec",)),
    ("space-backbone-utf8", ["space", "--backbone", "{w}/bad_utf8.json"], ("spec", "UTF-8")),
    # ---- evaluate ------------------------------------------------------------------------------
    ("evaluate-tpu", ["evaluate", "efficientnetv2-b0", "--device", "tpu"], ("--device", "cpu, cuda, cuda:N")),
    ("evaluate-mps", ["evaluate", "efficientnetv2-b0", "--device", "mps"], ("--device", "cpu, cuda, cuda:N")),
    ("evaluate-gpu", ["evaluate", "efficientnetv2-b0", "--device", "gpu"], ("--device",)),
    ("evaluate-cuda-x", ["evaluate", "efficientnetv2-b0", "--device", "cuda:x"], ("--device",)),
    ("evaluate-device-empty", ["evaluate", "efficientnetv2-b0", "--device", ""], ("--device",)),
    ("evaluate-cuda-99", ["evaluate", "efficientnetv2-b0", "--device", "cuda:99"], ("--device",)),
    ("evaluate-image-huge", ["evaluate", "efficientnetv2-b0", "--image-size", "100000"], ("--image-size", "GiB")),
    ("evaluate-batch-huge", ["evaluate", "efficientnetv2-b0", "--batch-size", "100000000"], ("--batch-size", "GiB")),
    ("evaluate-timing-batch-huge", ["evaluate", "efficientnetv2-b0", "--timing-batch-size", "100000000"], ("--timing-batch-size",)),
    ("evaluate-timing-image-huge", ["evaluate", "efficientnetv2-b0", "--timing-image-size", "100000"], ("--timing-image-size",)),
    ("evaluate-epochs-0", ["evaluate", "efficientnetv2-b0", "--epochs", "0"], ("--epochs",)),
    ("evaluate-epochs-text", ["evaluate", "efficientnetv2-b0", "--epochs", "ten"], ("--epochs",)),
    ("evaluate-image-4", ["evaluate", "efficientnetv2-b0", "--image-size", "4"], ("image_size",)),
    ("evaluate-batch-1", ["evaluate", "efficientnetv2-b0", "--batch-size", "1"], ("batch_size",)),
    ("evaluate-timing-steps", ["evaluate", "efficientnetv2-b0", "--timing-steps", "2"], ("steps",)),
    ("evaluate-timing-image-8", ["evaluate", "efficientnetv2-b0", "--timing-image-size", "8"], ("image_size",)),
    ("evaluate-threads-0", ["evaluate", "efficientnetv2-b0", "--threads", "0"], ("--threads",)),
    ("evaluate-seed-text", ["evaluate", "efficientnetv2-b0", "--seed", "x"], ("--seed",)),
    ("evaluate-data-missing", ["evaluate", "efficientnetv2-b0", "--data", "{w}/nope"], ("data",)),
    ("evaluate-data-kind", ["evaluate", "efficientnetv2-b0", "--data", "{w}/existing.json"], ("data",)),
    ("evaluate-backbone", ["evaluate", "efficientnetv2-b0", "--backbone", "nope"], ("spec",)),
    ("evaluate-spec-utf8", ["evaluate", "{w}/bad_utf8.json"], ("spec", "UTF-8")),
    ("evaluate-spec-string", ["evaluate", "{w}/string.json"], ("spec",)),
    # ---- search (nothing may appear under {w}/fresh) ----------------------------------------------
    ("search-runs-file", ["search", "--runs-dir", "{w}/f"], ("runs_dir", "not a directory")),
    ("search-runs-under-file", ["search", "--runs-dir", "{w}/f/runs"], ("runs_dir", "file")),
    ("search-runs-unwritable", ["search", "--runs-dir", "/proc/runs"], ("runs_dir", "writable")),
    ("search-run-dir-file", ["search", "--runs-dir", "{w}", "--name", "f"], ("name", "not a directory")),
    ("search-name-dots", ["search", "--runs-dir", "{w}/fresh", "--name", "../x"], ("name",)),
    ("search-name-space", ["search", "--runs-dir", "{w}/fresh", "--name", "a b"], ("name",)),
    ("search-name-empty", ["search", "--runs-dir", "{w}/fresh", "--name", ""], ("name",)),
    ("search-data-fraction-0", ["search", "--runs-dir", "{w}/fresh", "--data-fraction", "0"], ("train.data_fraction", "(0, 1]")),
    ("search-score-unknown", ["search", "--runs-dir", "{w}/fresh", "--score", "sotl"], ("train.score", "accuracy, best_accuracy")),
    ("search-storage-scheme", ["search", "--runs-dir", "{w}/fresh", "--storage", "redis://localhost"], ("storage",)),
    ("search-storage-two-slashes", ["search", "--runs-dir", "{w}/fresh", "--storage", "sqlite://rel.db"], ("storage",)),
    ("search-storage-parent", ["search", "--runs-dir", "{w}/fresh", "--storage", "sqlite:///{w}/no/such/s.db"], ("storage", "does not exist")),
    ("search-storage-dir", ["search", "--runs-dir", "{w}/fresh", "--storage", "sqlite:///{w}/adir"], ("storage", "directory")),
    ("search-storage-not-db", ["search", "--runs-dir", "{w}/fresh", "--storage", "sqlite:///{w}/existing.json"], ("storage", "SQLite")),
    ("search-storage-unwritable", ["search", "--runs-dir", "{w}/fresh", "--storage", "sqlite:////proc/s.db"], ("storage", "writable")),
    ("search-storage-postgres", ["search", "--runs-dir", "{w}/fresh", "--storage", "postgresql://u:hunter2@127.0.0.1:1/db"], ("storage",)),
    ("search-storage-mysql", ["search", "--runs-dir", "{w}/fresh", "--storage", "mysql://u:hunter2@127.0.0.1:1/db"], ("storage",)),
    ("search-address-closed", ["search", "--runs-dir", "{w}/fresh", "--address", "127.0.0.1:1"], ("address",)),
    ("search-address-form", ["search", "--runs-dir", "{w}/fresh", "--address", "nohost"], ("address",)),
    ("search-address-port", ["search", "--runs-dir", "{w}/fresh", "--address", "127.0.0.1:99999"], ("address",)),
    ("search-address-unresolved", ["search", "--runs-dir", "{w}/fresh", "--address", "no.such.host.invalid:6379"], ("address",)),
    ("search-ray-tmpdir-file", ["search", "--runs-dir", "{w}/fresh", "--ray-tmpdir", "{w}/f"], ("ray_tmpdir",)),
    ("search-ray-tmpdir-unwritable", ["search", "--runs-dir", "{w}/fresh", "--ray-tmpdir", "/proc/raytmp"], ("ray_tmpdir", "writable")),
    ("search-cpus-huge", ["search", "--runs-dir", "{w}/fresh", "--cpus-per-trial", "1000"], ("cpus_per_trial",)),
    ("search-cpus-0", ["search", "--runs-dir", "{w}/fresh", "--cpus-per-trial", "0"], ("cpus_per_trial",)),
    ("search-cpus-neg", ["search", "--runs-dir", "{w}/fresh", "--cpus-per-trial", "-1"], ("cpus_per_trial",)),
    ("search-cpus-nan", ["search", "--runs-dir", "{w}/fresh", "--cpus-per-trial", "nan"], ("--cpus-per-trial",)),
    ("search-gpus-big", ["search", "--runs-dir", "{w}/fresh", "--gpus-per-trial", "9"], ("gpus_per_trial",)),
    ("search-gpus-neg", ["search", "--runs-dir", "{w}/fresh", "--gpus-per-trial", "-0.5"], ("gpus_per_trial",)),
    ("search-trials-0", ["search", "--runs-dir", "{w}/fresh", "--trials", "0"], ("--trials",)),
    ("search-concurrent-0", ["search", "--runs-dir", "{w}/fresh", "--concurrent", "0"], ("--concurrent",)),
    ("search-sampler", ["search", "--runs-dir", "{w}/fresh", "--sampler", "grid"], ("sampler",)),
    ("search-objective", ["search", "--runs-dir", "{w}/fresh", "--objective", "fast"], ("objective",)),
    ("search-pruner", ["search", "--runs-dir", "{w}/fresh", "--pruner", "median"], ("pruner",)),
    ("search-reward", ["search", "--runs-dir", "{w}/fresh", "--reward", "best"], ("reward",)),
    ("search-reward-option", ["search", "--runs-dir", "{w}/fresh", "--reward", "accuracy", "--w", "1"], ("reward", "w")),
    ("search-w-inf", ["search", "--runs-dir", "{w}/fresh", "--w", "inf"], ("--w",)),
    ("search-epochs-0", ["search", "--runs-dir", "{w}/fresh", "--epochs", "0"], ("--epochs",)),
    ("search-image-4", ["search", "--runs-dir", "{w}/fresh", "--image-size", "4"], ("image_size",)),
    ("search-image-huge", ["search", "--runs-dir", "{w}/fresh", "--image-size", "100000"], ("image_size", "GiB")),
    ("search-timing-batch-huge", ["search", "--runs-dir", "{w}/fresh", "--timing-batch-size", "100000000"], ("timing.batch_size",)),
    ("search-timing-image-8", ["search", "--runs-dir", "{w}/fresh", "--timing-image-size", "8"], ("image_size",)),
    ("search-data", ["search", "--runs-dir", "{w}/fresh", "--data", "{w}/nope"], ("data",)),
    ("search-backbone", ["search", "--runs-dir", "{w}/fresh", "--backbone", "nope"], ("spec",)),
    ("search-config-utf8", ["search", "--runs-dir", "{w}/fresh", "--config", "{w}/bad_utf8.yaml"], ("sweep config", "UTF-8")),
    ("search-config-toml-utf8", ["search", "--runs-dir", "{w}/fresh", "--config", "{w}/bad_utf8.toml"], ("sweep config", "UTF-8")),
    ("search-config-list", ["search", "--runs-dir", "{w}/fresh", "--config", "{w}/list.yaml"], ("sweep config", "mapping")),
    ("search-config-missing", ["search", "--runs-dir", "{w}/fresh", "--config", "{w}/nope.toml"], ("sweep config",)),
    ("search-config-unknown", ["search", "--runs-dir", "{w}/fresh", "--config", "{w}/sweep_unknown.yaml"], ("unknown key",)),
    ("search-config-train-key", ["search", "--runs-dir", "{w}/fresh", "--config", "{w}/sweep_train_key.yaml"], ("train",)),
    ("search-config-target", ["search", "--runs-dir", "{w}/fresh", "--config", "{w}/sweep_target.yaml"], ("target",)),
    ("search-space-utf8", ["search", "--runs-dir", "{w}/fresh", "--space", "{w}/bad_utf8.toml"], ("space config", "UTF-8")),
    ("search-space-kernel", ["search", "--runs-dir", "{w}/fresh", "--space", "{w}/space_kernel.yaml"], ("kernel",)),
    ("search-resume-utf8", ["search", "--runs-dir", "{w}/runs", "--name", "badutf"], ("run directory", "UTF-8")),
    ("search-resume-string", ["search", "--runs-dir", "{w}/runs", "--name", "strconfig"], ("run directory", "JSON object")),
    # ---- rescore -------------------------------------------------------------------------------
    ("rescore-target-neg", ["rescore", "{run}", "--reward", "constrained", "--target", "-1"], ("target",)),
    ("rescore-target-0", ["rescore", "{run}", "--reward", "constrained", "--target", "0"], ("target",)),
    ("rescore-reward", ["rescore", "{run}", "--reward", "fastest"], ("reward",)),
    ("rescore-option", ["rescore", "{run}", "--reward", "paper", "--target", "1"], ("reward", "target")),
    ("rescore-accuracy-option", ["rescore", "{run}", "--reward", "accuracy", "--w", "1"], ("reward", "w")),
    ("rescore-w-nan", ["rescore", "{run}", "--w", "nan"], ("--w",)),
    ("rescore-alpha-inf", ["rescore", "{run}", "--reward", "constrained", "--alpha", "inf"], ("--alpha",)),
    ("rescore-top-0", ["rescore", "{run}", "--top", "0"], ("--top",)),
    ("rescore-score", ["rescore", "{run}", "--score", "speed"], ("score", "sotl")),
    ("calibrate-target", ["calibrate", "{run}", "--target", "0"], ("target",)),
    ("calibrate-fractions", ["calibrate", "{run}", "--data-fractions", "0,1"], ("data_fractions",)),
    ("calibrate-epochs", ["calibrate", "{run}", "--epochs", "one"], ("--epochs",)),
    ("rescore-no-dir", ["rescore", "{w}/nope"], ("run directory",)),
    ("rescore-file", ["rescore", "{w}/f"], ("run directory",)),
    ("rescore-no-config", ["rescore", "{w}/adir"], ("run directory", "config.json")),
    ("rescore-no-study", ["rescore", "{w}/runs/nostudy"], ("run directory", "no study")),
    ("rescore-config-string", ["rescore", "{w}/runs/strconfig"], ("run directory", "JSON object")),
    ("rescore-config-list", ["rescore", "{w}/runs/listconfig"], ("run directory", "JSON object")),
    ("rescore-config-utf8", ["rescore", "{w}/runs/badutf"], ("run directory", "UTF-8")),
    ("rescore-config-foreign", ["rescore", "{w}/runs/foreign"], ("run directory",)),
    ("rescore-config-malformed", ["rescore", "{w}/runs/malformed"], ("run directory", "malformed")),
    # ---- export --------------------------------------------------------------------------------
    ("export-no-output", ["export", "{run}"], ("-o",)),
    ("export-exists", ["export", "{run}", "-o", "{w}/existing.json"], ("-o", "--force")),
    ("export-dir", ["export", "{run}", "-o", "{w}/adir"], ("-o", "directory")),
    ("export-dir-force", ["export", "{run}", "-o", "{w}/adir", "--force"], ("-o", "directory")),
    ("export-parent-missing", ["export", "{run}", "-o", "{w}/no/such/a.json"], ("-o", "does not exist")),
    ("export-parent-file", ["export", "{run}", "-o", "{w}/f/a.json"], ("-o",)),
    ("export-unwritable", ["export", "{run}", "-o", "/proc/a.json"], ("-o", "writable")),
    ("export-pareto-file", ["export", "{run}", "--trial", "pareto", "-o", "{w}/f"], ("-o", "not a directory")),
    ("export-pareto-under-file", ["export", "{run}", "--trial", "pareto", "-o", "{w}/f/sub"], ("-o",)),
    ("export-trial-missing", ["export", "{run}", "--trial", "999", "-o", "{w}/new.json"], ("trial",)),
    ("export-trial-neg", ["export", "{run}", "--trial", "-1", "-o", "{w}/new.json"], ("trial",)),
    ("export-trial-text", ["export", "{run}", "--trial", "first", "-o", "{w}/new.json"], ("--trial", "best, pareto")),
    ("export-trial-float", ["export", "{run}", "--trial", "1.5", "-o", "{w}/new.json"], ("--trial",)),
    ("export-no-study", ["export", "{w}/runs/nostudy", "-o", "{w}/new.json"], ("run directory", "no study")),
    ("export-config-utf8", ["export", "{w}/runs/badutf", "-o", "{w}/new.json"], ("run directory", "UTF-8")),
    ("export-config-string", ["export", "{w}/runs/strconfig", "-o", "{w}/new.json"], ("run directory",)),
    ("export-no-dir", ["export", "{w}/nope", "-o", "{w}/new.json"], ("run directory",)),
    # ---- report --------------------------------------------------------------------------------
    ("report-exists", ["report", "{run}", "-o", "{w}/existing.html"], ("-o", "--force")),
    ("report-dir", ["report", "{run}", "-o", "{w}/adir"], ("-o", "directory")),
    ("report-dir-force", ["report", "{run}", "-o", "{w}/adir", "--force"], ("-o", "directory")),
    ("report-parent-missing", ["report", "{run}", "-o", "{w}/no/such/r.html"], ("-o", "does not exist")),
    ("report-parent-file", ["report", "{run}", "-o", "{w}/f/r.html"], ("-o",)),
    ("report-unwritable", ["report", "{run}", "-o", "/proc/r.html"], ("-o", "writable")),
    ("report-no-study", ["report", "{w}/runs/nostudy"], ("run directory", "no study")),
    ("report-config-string", ["report", "{w}/runs/strconfig"], ("run directory",)),
    ("report-config-utf8", ["report", "{w}/runs/badutf"], ("run directory", "UTF-8")),
    ("report-no-dir", ["report", "{w}/nope"], ("run directory",)),
    ("report-missing", ["report"], ("run_dir",)),
    # ---- dashboard -----------------------------------------------------------------------------
    ("dashboard-port-huge", ["dashboard", "{run}", "--port", "70000"], ("--port", "65535")),
    ("dashboard-port-0", ["dashboard", "{run}", "--port", "0"], ("--port",)),
    ("dashboard-port-neg", ["dashboard", "{run}", "--port", "-1"], ("--port",)),
    ("dashboard-port-text", ["dashboard", "{run}", "--port", "http"], ("--port",)),
    ("dashboard-port-busy", ["dashboard", "{run}", "--port", "{port}"], ("--port", "in use")),
    ("dashboard-host-unresolved", ["dashboard", "{run}", "--host", "no.such.host.invalid"], ("--host",)),
    ("dashboard-host-foreign", ["dashboard", "{run}", "--host", "192.0.2.1"], ("--host",)),
    ("dashboard-no-study-free-port", ["dashboard", "{w}/runs/nostudy", "--port", "{free}"], ("run directory", "no study")),
    ("dashboard-config-string", ["dashboard", "{w}/runs/strconfig", "--port", "{free}"], ("run directory",)),
    ("dashboard-config-utf8", ["dashboard", "{w}/runs/badutf", "--port", "{free}"], ("run directory", "UTF-8")),
    ("dashboard-no-dir", ["dashboard", "{w}/nope", "--port", "{free}"], ("run directory",)),
    # ---- train ---------------------------------------------------------------------------------
    ("train-tpu", ["train", "efficientnetv2-b0", "--data", "digits", "--device", "tpu"], ("--device", "cpu, cuda, cuda:N")),
    ("train-mps", ["train", "efficientnetv2-b0", "--data", "digits", "--device", "mps"], ("--device",)),
    ("train-cuda-7", ["train", "efficientnetv2-b0", "--data", "digits", "--device", "cuda:7"], ("--device",)),
    ("train-out-file", ["train", "efficientnetv2-b0", "--data", "digits", "--out", "{w}/f"], ("--out", "not a directory")),
    ("train-out-under-file", ["train", "efficientnetv2-b0", "--data", "digits", "--out", "{w}/f/sub"], ("--out", "file")),
    ("train-out-unwritable", ["train", "efficientnetv2-b0", "--data", "digits", "--out", "/proc/train"], ("--out", "writable")),
    ("train-epochs-0", ["train", "efficientnetv2-b0", "--data", "digits", "--epochs", "0"], ("--epochs",)),
    ("train-stages-0", ["train", "efficientnetv2-b0", "--data", "digits", "--stages", "0"], ("stages",)),
    ("train-stages-over", ["train", "efficientnetv2-b0", "--data", "digits", "--epochs", "2", "--stages", "5"], ("stages",)),
    ("train-min-image-4", ["train", "efficientnetv2-b0", "--data", "digits", "--min-image-size", "4"], ("min_image_size",)),
    ("train-image-order", ["train", "efficientnetv2-b0", "--data", "digits", "--min-image-size", "64", "--max-image-size", "32"], ("max_image_size",)),
    ("train-image-huge", ["train", "efficientnetv2-b0", "--data", "digits", "--max-image-size", "100000"], ("--max-image-size", "GiB")),
    ("train-batch-huge", ["train", "efficientnetv2-b0", "--data", "digits", "--batch-size", "100000000"], ("--batch-size", "GiB")),
    ("train-eval-image-4", ["train", "efficientnetv2-b0", "--data", "digits", "--eval-image-size", "4"], ("eval_image_size",)),
    ("train-member", ["train", "efficientnetv2-b0", "--data", "digits", "--member", "xl"], ("member",)),
    ("train-randaugment", ["train", "efficientnetv2-b0", "--data", "digits", "--max-randaugment", "40"], ("max_randaugment",)),
    ("train-mixup", ["train", "efficientnetv2-b0", "--data", "digits", "--min-mixup", "-1"], ("min_mixup",)),
    ("train-dropout", ["train", "efficientnetv2-b0", "--data", "digits", "--max-dropout", "1"], ("max_dropout",)),
    ("train-lr-0", ["train", "efficientnetv2-b0", "--data", "digits", "--lr", "0"], ("lr",)),
    ("train-lr-nan", ["train", "efficientnetv2-b0", "--data", "digits", "--lr", "nan"], ("--lr",)),
    ("train-ema-1", ["train", "efficientnetv2-b0", "--data", "digits", "--ema", "1"], ("ema_decay",)),
    ("train-threads-0", ["train", "efficientnetv2-b0", "--data", "digits", "--threads", "0"], ("--threads",)),
    ("train-progressive-flag-gone", ["train", "efficientnetv2-b0", "--data", "digits", "--progressive"], ("--progressive",)),
    ("train-data", ["train", "efficientnetv2-b0", "--data", "digits", "--data", "{w}/nope"], ("data",)),
    ("train-spec-utf8", ["train", "{w}/bad_utf8.json", "--data", "digits"], ("spec", "UTF-8")),
    ("train-spec-unknown", ["train", "nope", "--data", "digits"], ("spec",)),
    ("train-spec-list", ["train", "{w}/list.json", "--data", "digits"], ("spec",)),
    # ---- the command itself --------------------------------------------------------------------
    ("no-command", [], ("command",)),
    ("unknown-command", ["fly"], ("fly",)),
]

# argparse's own messages (usage errors) name the argument but not always "allowed"
USAGE_WORDS = ("required", "unrecognized arguments", "not allowed with", "invalid choice")


def _fill(argv: list[str], places: dict[str, str]) -> list[str]:
    return [arg.format(**places) for arg in argv]


def snapshot(*roots: Path) -> dict[str, tuple[str, int, str]]:
    """Every file and directory under ``roots`` with its kind, mode and content hash."""
    state: dict[str, tuple[str, int, str]] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs:
                path = Path(folder, name)
                state[str(path)] = ("dir", path.stat().st_mode, "")
            for name in files:
                if name.endswith(("-wal", "-shm")):  # SQLite's WAL files exist while any connection is open (this process's too)
                    continue
                path = Path(folder, name)
                state[str(path)] = ("file", path.stat().st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def call_main(argv: list[str], cwd: Path) -> Result:
    """``runners.cli.main`` in this process, as the console script runs it (cwd, captured streams, SystemExit)."""
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code
    finally:
        os.chdir(before)
    return Result(code, out.getvalue(), err.getvalue())


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)


def build_world(w: Path, run: Path) -> tuple[dict[str, str], socket.socket]:
    """Bad files under ``w`` (and a family written by a good call); returns the placeholders and a busy socket."""
    b0 = get("efficientnetv2-b0").to_dict()
    bad_kernel = json.loads(json.dumps(b0))
    bad_kernel["stages"][0]["kernel"] = 4
    files: dict[str, str | bytes] = {
        "bad_utf8.json": BAD_UTF8, "bad_utf8.yaml": BAD_UTF8, "bad_utf8.toml": BAD_UTF8,
        "string.json": '"hello"', "list.json": "[1, 2]", "list.yaml": "- 1\n- 2\n", "malformed.json": "{",
        "empty.json": "", "bad_kernel.json": json.dumps(bad_kernel), "extra_field.json": json.dumps({**b0, "colour": "red"}),
        "f": "a regular file\n", "existing.json": "{}\n", "existing.html": "<p>mine</p>\n", "adir/keep.txt": "kept\n",
        "space.txt": "layers_delta: 1\n", "malformed.yaml": "a: [1, 2\n", "malformed.toml": "a = \n",
        "space_unknown.yaml": "colour: red\n", "space_delta.yaml": "layers_delta: -1\n",
        "space_kernel.yaml": "defaults:\n  kernels: [4]\n", "space_operator.yaml": "defaults:\n  operators: [conv]\n",
        "space_expansion.yaml": "defaults:\n  expansions: [0]\n", "space_stage.yaml": "stages:\n  99:\n    kernels: [3]\n",
        "sweep_unknown.yaml": "colour: red\n", "sweep_train_key.yaml": "train:\n  colour: red\n",
        "sweep_target.yaml": "reward:\n  name: constrained\n  target: -1\n",
        "runs/nostudy/config.json": json.dumps(SweepConfig(name="nostudy", runs_dir=str(w / "runs")).to_dict()),
        "runs/strconfig/config.json": '"a string"', "runs/listconfig/config.json": "[1]",
        "runs/badutf/config.json": b'{"name": "\xff"}', "runs/foreign/config.json": '{"colour": "red"}',
        "runs/malformed/config.json": "{",
    }
    for name, content in files.items():
        _write(w / name, content)
    assert call_main(["scale", "efficientnetv2-b0", "--family", "--members", "s", "-o", str(w / "fam")], w).code == 0
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    return {"w": str(w), "run": str(run), "port": str(busy.getsockname()[1]), "free": str(free)}, busy


@pytest.fixture(scope="module")
def world(tmp_path_factory, finished_sweep) -> dict[str, str]:
    """A scratch directory of bad files, a finished sweep, a busy port and a free one."""
    places, busy = build_world(tmp_path_factory.mktemp("bad"), finished_sweep)
    yield places
    busy.close()


def check(result: Result, needles: tuple[str, ...]) -> None:
    assert_one_line_error(result, *needles)
    line = result.err.strip()
    assert "allowed" in line or any(word in line for word in USAGE_WORDS), line
    assert "hunter2" not in result.err + result.out  # a storage password never reaches the output
    assert result.out == ""


def test_table_is_large_and_covers_every_command():
    commands = {argv[0] for _, argv, _ in CASES if argv}
    assert len(CASES) >= 150
    assert {"inspect", "scale", "space", "evaluate", "search", "rescore", "export", "report", "dashboard", "train"} <= commands
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("argv", "needles"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input(world, argv, needles):
    roots = (Path(world["w"]), Path(world["run"]))
    before = snapshot(*roots)
    result = call_main(_fill(argv, world), Path(world["w"]))
    check(result, needles)
    assert snapshot(*roots) == before, "a refused command created or changed files"


SUBPROCESS_SAMPLE = ("evaluate-tpu", "search-cpus-huge", "search-address-closed", "rescore-no-study", "scale-exists",
                     "dashboard-port-busy", "train-out-file", "space-utf8-yaml")


def test_console_command_answers_like_in_process(world):
    """The real ``nas`` command gives the same one line for a sample of the table (in parallel subprocesses)."""
    cases = {name: (argv, needles) for name, argv, needles in CASES if name in SUBPROCESS_SAMPLE}
    roots = (Path(world["w"]), Path(world["run"]))
    before = snapshot(*roots)
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(cases, pool.map(lambda c: run_nas(*_fill(c[0], world), cwd=world["w"], timeout=120), cases.values())))
    for name, (argv, needles) in cases.items():
        check(results[name], needles)
        assert results[name].err == call_main(_fill(argv, world), Path(world["w"])).err, name
    assert snapshot(*roots) == before
