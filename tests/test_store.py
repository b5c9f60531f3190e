"""Result storage: atomic shards, manifest, canonical loading."""

import json

import pandas as pd
import pytest

from moe_sim import store


def test_shards_round_trip_in_canonical_order(tmp_path):
    store.write_manifest(tmp_path, {"name": "x"}, "abc", 42)
    rows = lambda s, n: pd.DataFrame({"series_index": [s, s], "n": [n, n], "replicate": [1, 0],
                                      "quantity": ["loss", "loss"], "true_atom": [-1, -1], "value": [1.0, 2.0]})
    store.write_shard(tmp_path, "b", rows(1, 10))
    store.write_shard(tmp_path, "a", rows(0, 20))
    assert store.finished_tasks(tmp_path) == {"a", "b"}
    out = store.load_results(tmp_path)
    assert out[["series_index", "replicate"]].values.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert list(tmp_path.glob("shards/.*")) == [], "no temporary files left behind"
    manifest = json.loads((tmp_path / store.MANIFEST).read_text())
    assert manifest["entropy"] == 42 and manifest["fingerprint"] == "abc" and "numpy" in manifest["versions"]


def test_failed_write_leaves_no_shard(tmp_path):
    class Broken(pd.DataFrame):
        def to_parquet(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.write_shard(tmp_path, "t", Broken({"a": [1]}))
    assert store.finished_tasks(tmp_path) == set()
    assert list((tmp_path / store.SHARDS).iterdir()) == []


def test_load_needs_a_results_directory(tmp_path):
    with pytest.raises(ValueError, match="no manifest.json"):
        store.load_results(tmp_path)
    store.write_manifest(tmp_path, {}, "abc", 1)
    with pytest.raises(ValueError, match="no finished shards"):
        store.load_results(tmp_path)
