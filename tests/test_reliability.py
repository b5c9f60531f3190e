"""Runs that cannot mix results and stop cleanly (issue 12): provenance on resume, one run per folder,
no worker outliving its run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from moe_sim import store
from moe_sim.config import parse_config
from moe_sim.sweep import make_tasks, run_sweep
from tests.test_sweep import TINY, fake_fit, strip

ROOT = Path(__file__).resolve().parents[1]


def slow_fit(*args, **kwargs):
    """The sweep test double, slowed so that a run is still going when the test acts on it."""
    time.sleep(0.5)
    return fake_fit(*args, **kwargs)


def run_slowly(out: str, n_jobs: int, backend: str) -> None:
    """Entry point of the subprocess runs below."""
    run_sweep(parse_config({**TINY, "replicates": 8}), out, n_jobs=n_jobs, backend=backend, fit_fn=slow_fit,
              progress=False)


def start_run(out: Path, n_jobs: int, backend: str = "loky") -> subprocess.Popen:
    """A sweep in a subprocess (its output in out.log)."""
    code = f"from tests.test_reliability import run_slowly; run_slowly({str(out)!r}, {n_jobs}, {backend!r})"
    with open(f"{out}.log", "w") as log:
        return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=log, stderr=log,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def alive(procs) -> list:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def exp():
    return parse_config(TINY)


def test_a_changed_config_after_a_deleted_manifest_is_refused(exp, tmp_path):
    run_sweep(exp, tmp_path, fit_fn=fake_fit, tasks=make_tasks(exp)[:3], progress=False)
    (tmp_path / store.MANIFEST).unlink()
    with pytest.raises(ValueError, match="holds results of a different config"):
        run_sweep(parse_config({**TINY, "noise_sd": 0.2}), tmp_path, fit_fn=fake_fit, progress=False)
    assert not (tmp_path / store.MANIFEST).exists(), "nothing written by the refused run"
    assert len(store.finished_tasks(tmp_path)) == 3


def test_a_lost_manifest_is_rebuilt_with_the_shards_entropy(tmp_path):
    """A seedless config keeps the entropy its shards were drawn with: no row of other samples mixes in."""
    seedless = parse_config({key: v for key, v in TINY.items() if key != "seed"})
    tasks = make_tasks(seedless)
    run_sweep(seedless, tmp_path, fit_fn=fake_fit, tasks=tasks[:4], progress=False)
    entropy = store.read_manifest(tmp_path)["entropy"]
    (tmp_path / store.MANIFEST).unlink()
    run_sweep(seedless, tmp_path, fit_fn=fake_fit, progress=False)
    assert store.read_manifest(tmp_path)["entropy"] == entropy
    fresh = run_sweep(parse_config({**TINY, "seed": entropy}), tmp_path / "fresh", fit_fn=fake_fit, progress=False)
    pd.testing.assert_frame_equal(strip(store.load_results(tmp_path)).drop(columns="experiment"),
                                  strip(store.load_results(fresh)).drop(columns="experiment"))


def test_a_manifest_without_shards_may_be_replaced(exp, tmp_path):
    run_sweep(exp, tmp_path, fit_fn=fake_fit, tasks=[], progress=False)
    fixed = parse_config({**TINY, "noise_sd": 0.2})
    run_sweep(fixed, tmp_path, fit_fn=fake_fit, tasks=make_tasks(fixed)[:1], progress=False)
    assert store.read_manifest(tmp_path)["fingerprint"] == fixed.fingerprint()


def test_a_truncated_shard_is_recomputed_on_resume(exp, tmp_path, tiny_sweep_rows):
    fresh = tiny_sweep_rows
    run_sweep(exp, tmp_path / "cut", fit_fn=fake_fit, progress=False)
    path = store.shard_paths(tmp_path / "cut")[0]
    path.write_bytes(path.read_bytes()[:100])
    run_sweep(exp, tmp_path / "cut", fit_fn=fake_fit, progress=False)
    pd.testing.assert_frame_equal(strip(store.load_results(tmp_path / "cut")), strip(fresh))


def test_a_shard_of_another_entropy_is_refused_on_resume(exp, tmp_path):
    run_sweep(exp, tmp_path, fit_fn=fake_fit, tasks=make_tasks(exp)[:2], progress=False)
    task = make_tasks(exp)[2]
    store.write_shard(tmp_path, task.id, store.load_results(tmp_path), exp.fingerprint(), 999)
    with pytest.raises(ValueError, match=f"{task.id}.parquet' was drawn with seed entropy 999, expected 11"):
        run_sweep(exp, tmp_path, fit_fn=fake_fit, progress=False)


def test_a_second_concurrent_run_fails_fast_and_writes_nothing(tmp_path):
    tmp_path = tmp_path / "out"
    first = start_run(tmp_path, n_jobs=1)
    try:
        wait_for(lambda: store.finished_tasks(tmp_path), 120, "the first run's first shard")
        other = parse_config({**TINY, "noise_sd": 0.2, "replicates": 8})
        tic = time.monotonic()
        with pytest.raises(ValueError, match=f"is in use by another run \\(pid {first.pid} "):
            run_sweep(other, tmp_path, fit_fn=fake_fit, progress=False)
        assert time.monotonic() - tic < 5
    finally:
        first.terminate()
        first.wait(60)
    found = {store.shard_provenance(p)["fingerprint"] for p in store.shard_paths(tmp_path)}
    assert found == {parse_config({**TINY, "replicates": 8}).fingerprint()}, "no shard of the second run"


BACKENDS = [pytest.param("loky", id="loky"),
            pytest.param("dask", id="dask", marks=[pytest.mark.distributed, pytest.mark.slow])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_worker_outlives_the_run(tmp_path, how, backend):
    """SIGTERM stops the pool; after SIGKILL the workers notice their parent is gone. Either way no process
    of the run is alive 10 s later."""
    tmp_path = tmp_path / "out"
    run = start_run(tmp_path, n_jobs=2, backend=backend)
    main = psutil.Process(run.pid)
    children = []
    try:
        wait_for(lambda: store.finished_tasks(tmp_path), 120, "a first shard")
        children = main.children(recursive=True)  # the workers (and loky's resource tracker)
        assert len(children) >= 2
        run.send_signal(how)
        run.wait(30)
        wait_for(lambda: not alive(children), 10, f"the run's processes {[p.pid for p in alive(children)]} to exit")
        if how == signal.SIGTERM:
            assert run.returncode == 128 + signal.SIGTERM
    finally:  # a failed run leaves nothing behind either: its processes as listed, and any started since
        for proc in alive([*children, *(main.children(recursive=True) if alive([main]) else [])]):
            proc.kill()
        run.kill()
        run.wait(30)
