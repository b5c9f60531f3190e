"""Result storage: atomic shards with provenance, manifest, canonical loading, permissions, the run lock."""

import json
import os
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest

from moe_sim import store


def rows(s, n):
    return pd.DataFrame({"series_index": [s, s], "n": [n, n], "replicate": [1, 0], "quantity": ["loss", "loss"],
                         "true_atom": [-1, -1], "value": [1.0, 2.0]})


def test_shards_round_trip_in_canonical_order(tmp_path):
    store.write_manifest(tmp_path, {"name": "x"}, "abc", 42)
    store.write_shard(tmp_path, "b", rows(1, 10), "abc", 42)
    store.write_shard(tmp_path, "a", rows(0, 20), "abc", 42)
    assert store.finished_tasks(tmp_path) == {"a", "b"}
    out = store.load_results(tmp_path)
    assert out[["series_index", "replicate"]].values.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert list(tmp_path.glob("shards/.*")) == [], "no temporary files left behind"
    manifest = json.loads((tmp_path / store.MANIFEST).read_text())
    assert manifest["entropy"] == 42 and manifest["fingerprint"] == "abc" and "numpy" in manifest["versions"]
    assert store.shard_provenance(store.shard_path(tmp_path, "a")) == {"fingerprint": "abc", "entropy": 42,
                                                                       "task": "a"}


def test_files_are_readable_by_others(tmp_path):
    """Results are shared: shards and manifest get the mode an ordinary open gives (0644 under umask 022)."""
    old = os.umask(0o022)
    try:
        store.write_manifest(tmp_path, {}, "abc", 1)
        path = store.write_shard(tmp_path, "a", rows(0, 10), "abc", 1)
    finally:
        os.umask(old)
    for p in (tmp_path / store.MANIFEST, path):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_failed_write_leaves_no_shard(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        store.write_shard(tmp_path, "t", rows(0, 10), "abc", 1)
    assert store.finished_tasks(tmp_path) == set()
    assert list((tmp_path / store.SHARDS).iterdir()) == []


def test_load_needs_a_results_directory(tmp_path):
    with pytest.raises(ValueError, match="no manifest.json"):
        store.load_results(tmp_path)
    store.write_manifest(tmp_path, {}, "abc", 1)
    with pytest.raises(ValueError, match="no finished shards"):
        store.load_results(tmp_path)


def test_load_refuses_shards_of_another_config_or_entropy(tmp_path):
    store.write_manifest(tmp_path, {}, "abc", 1)
    store.write_shard(tmp_path, "a", rows(0, 10), "abc", 1)
    store.write_shard(tmp_path, "b", rows(1, 10), "xyz", 1)
    with pytest.raises(ValueError, match=r"shards/b.parquet' holds results of a different config "
                                         r"\(fingerprint xyz, expected abc\)"):
        store.load_results(tmp_path)
    store.write_shard(tmp_path, "b", rows(1, 10), "abc", 2)
    with pytest.raises(ValueError, match="b.parquet' was drawn with seed entropy 2, expected 1"):
        store.load_results(tmp_path)
    store.shard_path(tmp_path, "a").rename(store.shard_path(tmp_path, "c"))
    store.write_shard(tmp_path, "b", rows(1, 10), "abc", 1)
    with pytest.raises(ValueError, match="c.parquet' holds the rows of task 'a'"):
        store.load_results(tmp_path)


def test_truncated_files_are_named(tmp_path):
    store.write_manifest(tmp_path, {}, "abc", 1)
    path = store.write_shard(tmp_path, "a", rows(0, 10), "abc", 1)
    path.write_bytes(path.read_bytes()[:-40])
    assert store.finished_tasks(tmp_path) == set(), "a truncated shard is not a finished task"
    with pytest.raises(ValueError, match="a.parquet' is truncated or damaged"):
        store.load_results(tmp_path)
    manifest = tmp_path / store.MANIFEST
    manifest.write_text(manifest.read_text()[:50])
    with pytest.raises(ValueError, match=f"{manifest}' is not valid JSON"):
        store.read_manifest(tmp_path)


def test_run_lock_names_the_holder_and_dies_with_it(tmp_path):
    hold = "import sys, time; from moe_sim import store; lock = store.run_lock(sys.argv[1], 'the first run'); " \
           "lock.__enter__(); time.sleep(300)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while "the first run" not in ((tmp_path / store.LOCK).read_text() if (tmp_path / store.LOCK).exists() else ""):
            assert time.monotonic() < deadline, "the holder did not take the lock within 120 s"
            time.sleep(0.1)
        with pytest.raises(ValueError, match=f"in use by another run \\(pid {holder.pid} .*the first run\\)"):
            with store.run_lock(tmp_path, "the second run"):
                pass
        holder.kill()  # no cleanup: the kernel releases the lock
        holder.wait(60)
        with store.run_lock(tmp_path, "the second run"):
            assert "the second run" in (tmp_path / store.LOCK).read_text()
    finally:
        holder.kill()
        holder.wait(60)


def test_output_dir_checks(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out '.*file' is an existing file"):
        store.check_output_dir(tmp_path / "file", "--out")
    assert store.check_output_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists(), "a check creates nothing"
    # a read-only location (root may write anywhere, so the kernel's answer is simulated)
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(tmp_path))
    with pytest.raises(ValueError, match=f"--out '.*new' is not writable \\('{tmp_path}' is read-only\\)"):
        store.check_output_dir(tmp_path / "new", "--out")
