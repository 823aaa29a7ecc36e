"""The team setup for real: a two-node Ray cluster of separate processes, the study in a real PostgreSQL
server, and no storage password anywhere (files, study, outputs, report, dashboard API, errors)."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from runners.credentials import mask_url, scrub, storage_option
from runners.study import open_run, rdb_storage
from tests.conftest import ROOT, TINY_SEARCH, Result, assert_one_line_error, run_nas
from tests.ray_nodes import RAY, alive_nodes, descendants, free_port, stop_nodes


# ---- masking ----------------------------------------------------------------------------------
def test_mask_url_and_scrub(monkeypatch):
    assert mask_url("postgresql+psycopg://nas:pw0rd99@db:5432/nas") == "postgresql+psycopg://nas:***@db:5432/nas"
    assert mask_url("postgresql+psycopg://nas:p%40ss%2Fword@db/nas") == "postgresql+psycopg://nas:***@db/nas"
    assert mask_url("postgresql://nas@db/nas") == "postgresql://nas@db/nas"  # PGPASSWORD / ~/.pgpass: nothing to hide
    assert mask_url("sqlite:////tmp/run/study.db") == "sqlite:////tmp/run/study.db"
    monkeypatch.setenv("NAS_STORAGE", "postgresql://nas:Zq7-envsecret@db/nas")
    assert storage_option(None) == "postgresql://nas:Zq7-envsecret@db/nas"
    assert storage_option("sqlite:///x.db") == "sqlite:///x.db"  # the flag wins
    # a password seen once is scrubbed from any later text, URL or not
    assert scrub('FATAL: password "Zq7-envsecret" rejected') == 'FATAL: password "***" rejected'
    assert scrub("see mysql://u:other-pw@h/d") == "see mysql://u:***@h/d"


# ---- Ray: a sweep's own instance is local; a real cluster of separate processes ---------------
LOCAL_RAY = """
import json, os, sys
from runners.config import SweepConfig
from runners.ray_cluster import init_ray
from tests.ray_nodes import descendants, listening_addresses
init_ray(SweepConfig(ray_tmpdir=sys.argv[1]))
import ray
node = ray.get(ray.remote(lambda: ray.get_runtime_context().get_node_id()).remote())
print(json.dumps({"node": node, "auth": os.environ.get("RAY_AUTH_MODE"), "gcs": ray.get_runtime_context().gcs_address,
                  "listening": sorted(listening_addresses(descendants({os.getpid()})))}))
ray.shutdown()
"""


@pytest.mark.slow
def test_sweep_ray_instance_listens_on_loopback_only_with_a_token(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="nas-ray-")  # short: Ray's socket paths must stay under 108 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    try:
        proc = subprocess.run([sys.executable, "-c", LOCAL_RAY, ray_tmp], capture_output=True, text=True, timeout=300, cwd=ROOT,
                              env={**env, "HOME": str(tmp_path)})
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["node"] and info["gcs"].startswith("127.0.0.1:")
    assert info["listening"] and set(info["listening"]) == {"127.0.0.1"}, info["listening"]
    assert info["auth"] == "token" and not (tmp_path / ".ray").exists()  # a per-run token, no ~/.ray/auth_token
    assert "Token authentication" not in proc.stderr  # no warning either way


@pytest.mark.slow
def test_search_on_a_two_node_ray_cluster(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="nas-ray-")
    port = free_port()
    address = f"127.0.0.1:{port}"
    # the README's team setup: token authentication on every node and for the driver
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "HOME": str(tmp_path)}
    # an in-process sweep earlier in this pytest run set the local-only switch (runners/credentials.py), which
    # would make a joining node refuse ("Multi-node Ray clusters are not supported")
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    common = ["--num-cpus", "1", "--temp-dir", ray_tmp, "--block", "--disable-usage-stats",
              "--dashboard-agent-listen-port", "0"]
    procs: list[subprocess.Popen] = []
    known: set[int] = set()
    try:
        procs.append(subprocess.Popen([*RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                                       "--include-dashboard", "false", *common],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        assert len(alive_nodes(address, env, 1)) == 1
        # the worker node names the head's address explicitly, as the head does; its log is kept for the failure message
        worker_log = tmp_path / "worker-node.log"
        with worker_log.open("w") as log:
            procs.append(subprocess.Popen([*RAY, "start", "--address", address, "--node-ip-address", "127.0.0.1", *common],
                                          env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        node_ids = alive_nodes(address, env, 2, timeout=180)
        assert len(node_ids) == 2, f"worker node did not join (exit {procs[-1].poll()}): {worker_log.read_text()[-2000:]}"

        result = run_nas("search", "--name", "cluster", "--runs-dir", tmp_path / "runs", "--address", address,
                         "--cpus-per-trial", "1", *TINY_SEARCH, "--json", env={k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "HOME")})
        assert result.code == 0, result.err
        assert result.json()["complete"] == 2
        trials = open_run(tmp_path / "runs" / "cluster").study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        # the backbone and two trials, two at a time, on two 1-CPU nodes: both nodes ran trials
        assert len(trials) == 3 and {t.user_attrs["ray_node_id"] for t in trials} == set(node_ids)
        known = descendants({p.pid for p in procs})
    finally:
        known |= descendants({p.pid for p in procs})
        left = stop_nodes(procs, known)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert all(p.returncode is not None for p in procs)
    assert not left, f"Ray processes left after the cluster stopped: {sorted(left)}"


# ---- no secret anywhere -----------------------------------------------------------------------
def _get(url: str) -> bytes:
    # optuna-dashboard answers 500 without an Accept-Encoding header (FINDINGS.md)
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept-Encoding": "gzip"}), timeout=10) as response:
        body = response.read()
        return gzip.decompress(body) if response.headers.get("Content-Encoding") == "gzip" else body


def _dashboard_api(run_dir: Path, url: str) -> tuple[list[bytes], Result]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "runners.cli", "dashboard", str(run_dir), "--port", str(port),
                             "--storage", url], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    bodies: list[bytes] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not bodies:
            try:
                bodies.append(_get(f"http://127.0.0.1:{port}/api/studies"))
            except OSError:
                time.sleep(0.5)
        assert bodies, "the dashboard did not answer"
        study_id = json.loads(bodies[0])["study_summaries"][0]["study_id"]
        bodies.append(_get(f"http://127.0.0.1:{port}/api/studies/{study_id}"))
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    return bodies, Result(proc.returncode, out, err)


@pytest.mark.slow
def test_no_storage_password_anywhere(postgres, tmp_path):
    url, secret = postgres.new_database(), postgres.password
    runs, exports = tmp_path / "runs", tmp_path / "exports"
    run_dir = runs / "team"
    exports.mkdir()  # -o needs an existing parent directory
    ray_tmp = tempfile.mkdtemp(prefix="nas-ray-")
    outputs: list[Result] = []
    try:
        search = run_nas("search", "--name", "team", "--runs-dir", runs, "--storage", url, "--ray-tmpdir", ray_tmp, *TINY_SEARCH, "--json")
        ray_files = [p for p in Path(ray_tmp).rglob("*") if p.is_file()]
        ray_hits = sorted(str(p) for p in ray_files if secret.encode() in p.read_bytes())
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert search.code == 0, search.err
    assert search.json()["storage"] == mask_url(url) and "***" in mask_url(url)
    assert "warning: a password in --storage" in search.err
    outputs.append(search)

    outputs += [
        run_nas("rescore", run_dir, "--storage", url, "--json"),
        run_nas("export", run_dir, "-o", exports / "arch.json", "--storage", url),
        run_nas("export", run_dir, "--trial", "pareto", "--out-dir", exports / "pareto", env={"NAS_STORAGE": url}),
        run_nas("report", run_dir, env={"NAS_STORAGE": url}),
        # no password in the URL at all: libpq takes it from PGPASSWORD
        run_nas("rescore", run_dir, "--storage", postgres.url(url.rsplit("/", 1)[1], with_password=False), "--json",
                env={"PGPASSWORD": secret}),
    ]
    assert all(r.code == 0 for r in outputs), [r.err for r in outputs]
    assert outputs[1].json()["trials"] == outputs[-1].json()["trials"]
    exported = json.loads((exports / "arch.json").read_text())
    assert exported["provenance"]["storage"] == mask_url(url)

    bodies, dashboard = _dashboard_api(run_dir, url)
    assert len(bodies) == 2 and b'"user_attrs"' in bodies[1]
    outputs.append(dashboard)

    # errors: the run directory keeps no password; a wrong database; a wrong password
    missing = run_nas("rescore", run_dir)
    assert_one_line_error(missing, "***", "NAS_STORAGE")
    wrong_db = run_nas("search", "--name", "other", "--runs-dir", runs, "--storage", url.rsplit("/", 1)[0] + "/nope", *TINY_SEARCH)
    assert_one_line_error(wrong_db, "nas:***@", "nope")
    wrong_pw = run_nas("search", "--name", "other2", "--runs-dir", runs, "--storage", url.replace(secret, secret + "x"), *TINY_SEARCH)
    assert wrong_pw.code == 2 and "password authentication failed" in wrong_pw.err
    outputs += [missing, wrong_db, wrong_pw]

    for result in outputs:
        assert secret not in result.out + result.err, result.err
    for body in bodies:
        assert secret.encode() not in body
    files = [p for p in [*runs.rglob("*"), *exports.rglob("*")] if p.is_file()]
    assert any(p.name == "report.html" for p in files) and any(p.name == "config.json" for p in files)
    assert [str(p) for p in files if secret.encode() in p.read_bytes()] == []
    # owner-only: the run directory 0700, everything the sweep and the report wrote in it 0600
    assert run_dir.stat().st_mode & 0o777 == 0o700
    assert {oct(p.stat().st_mode & 0o777) for p in run_dir.rglob("*") if p.is_file()} == {"0o600"}
    # the whole database, every table and row (study and trial attributes, system attributes, notes)
    import psycopg

    with psycopg.connect(host=postgres.host, port=postgres.port, user=postgres.user, password=secret,
                         dbname=url.rsplit("/", 1)[1]) as conn:
        tables = [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        dump = "".join(str(conn.execute(f'SELECT * FROM "{table}"').fetchall()) for table in tables)
    assert "trial_user_attributes" in tables and "spec_key" in dump and secret not in dump
    study = optuna.load_study(study_name="team", storage=rdb_storage(url))
    assert study.user_attrs["config"]["storage"] == mask_url(url)
    assert ray_hits == [], f"Ray's temp files hold the password: {ray_hits}"
