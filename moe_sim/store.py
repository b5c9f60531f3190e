"""Result storage: one Parquet shard per finished task, written atomically, plus manifest.json.

A results directory holds `manifest.json` (the effective config, its fingerprint, the seed entropy, package
versions, git revision) and `shards/<task id>.parquet`. A shard exists only once its task is complete
(temporary file, then `os.replace`), so a killed sweep leaves no partial shard and a rerun skips exactly the
finished tasks.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

MANIFEST = "manifest.json"
SHARDS = "shards"
PACKAGES = ("moe-sim", "numpy", "scipy", "pandas", "pyarrow", "joblib", "matplotlib", "dask", "distributed",
            "torch")
ROW_ORDER = ["series_index", "n", "replicate", "quantity", "true_atom"]


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_revision() -> str | None:
    """The checkout's commit (with '+dirty' when files differ), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(out, config: dict, fingerprint: str, entropy: int, extra: dict | None = None) -> dict:
    """Create `out/manifest.json` and return its content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "config": config,
        "fingerprint": fingerprint,
        "entropy": entropy,
        "versions": _versions(),
        "git_revision": git_revision(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }

    def write(tmp):
        Path(tmp).write_text(json.dumps(manifest, indent=2, default=str))

    _atomic_write(out / MANIFEST, write)
    return manifest


def read_manifest(out) -> dict:
    path = Path(out) / MANIFEST
    if not path.exists():
        raise ValueError(f"results directory {str(out)!r} has no {MANIFEST}: not a moe-sim results directory")
    return json.loads(path.read_text())


def shard_path(out, task_id: str) -> Path:
    return Path(out) / SHARDS / f"{task_id}.parquet"


def write_shard(out, task_id: str, rows: pd.DataFrame) -> Path:
    """Write one task's rows atomically."""
    path = shard_path(out, task_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: rows.to_parquet(tmp, index=False))
    return path


def finished_tasks(out) -> set[str]:
    """Ids of the tasks whose shard is complete."""
    folder = Path(out) / SHARDS
    return {p.stem for p in folder.glob("*.parquet")} if folder.exists() else set()


def load_results(out) -> pd.DataFrame:
    """All rows of a results directory, in a canonical order (independent of the order tasks finished)."""
    read_manifest(out)
    paths = sorted((Path(out) / SHARDS).glob("*.parquet"))
    if not paths:
        raise ValueError(f"results directory {str(out)!r} holds no finished shards yet")
    rows = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    return rows.sort_values(ROW_ORDER, kind="stable").reset_index(drop=True)
