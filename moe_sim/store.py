"""Result storage: one Parquet shard per finished task, written atomically, plus manifest.json and a lock.

A results directory holds `manifest.json` (the effective config, its fingerprint, the seed entropy, package
versions, git revision), `shards/<task id>.parquet` and `.lock`. A shard exists only once its task is complete
(temporary file, then `os.replace`), so a killed sweep leaves no partial shard and a rerun skips exactly the
finished tasks. Every shard carries its provenance (config fingerprint, seed entropy, task id) in its Parquet
metadata, so rows of different configs cannot mix even when the manifest is lost or replaced. One run at a
time holds `.lock` (an flock, released by the kernel when its holder dies), so two runs cannot write into one
directory at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
SHARDS = "shards"
LOCK = ".lock"
PROVENANCE_KEY = b"moe_sim.provenance"
PACKAGES = ("moe-sim", "numpy", "scipy", "pandas", "pyarrow", "joblib", "matplotlib", "dask", "distributed")
ROW_ORDER = ["series_index", "n", "replicate", "quantity", "true_atom"]


def _file_mode() -> int:
    """0666 less the process umask: what an ordinary `open` would create (0644 under the usual umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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


def check_output_dir(path, what: str) -> Path:
    """`path` as a folder that exists or can be created, and is writable; a ValueError naming it otherwise.

    Called before any work, so a bad --out fails in a second instead of after the fits."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is an existing file, not a folder; choose a folder")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r} is not writable ({str(existing)!r} is read-only); choose a "
                         f"writable folder")
    return path


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())  # mkstemp creates 0600; results are meant to be shared and read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def run_lock(out, description: str):
    """Hold `out/.lock` for one run; a ValueError naming the holder when another run holds it.

    An flock is released by the kernel when its process dies (even by SIGKILL), so a crashed run never
    leaves a stale lock. The file records who holds it, for the other run's error message."""
    out = check_output_dir(out, "results directory")
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, _file_mode())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            raise ValueError(f"results directory {str(out)!r} is in use by another run ({holder}); wait for it "
                             f"to finish or choose another output directory") from None
        info = (f"pid {os.getpid()} on {socket.gethostname()}, started "
                f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}: {description}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def write_manifest(out, config: dict, fingerprint: str, entropy: int, extra: dict | None = None) -> dict:
    """Create (or replace) `out/manifest.json` and return its content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "config": config,
        "fingerprint": fingerprint,
        "entropy": entropy,
        "versions": _versions(),
        "git_revision": git_revision(),
        "command": " ".join(sys.argv),
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
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON ({exc}): truncated or damaged; delete it and rerun "
                         f"the sweep to rebuild it from the shards' provenance") from None
    missing = {"config", "fingerprint", "entropy"} - set(manifest)
    if missing:
        raise ValueError(f"{str(path)!r} lacks {sorted(missing)}: not a moe-sim manifest")
    return manifest


def shard_path(out, task_id: str) -> Path:
    return Path(out) / SHARDS / f"{task_id}.parquet"


def shard_paths(out) -> list[Path]:
    """Every shard file of a results directory, sorted by name."""
    return sorted((Path(out) / SHARDS).glob("*.parquet"))


def write_shard(out, task_id: str, rows: pd.DataFrame, fingerprint: str, entropy: int) -> Path:
    """Write one task's rows atomically, with their provenance in the Parquet metadata."""
    path = shard_path(out, task_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(rows, preserve_index=False)
    provenance = json.dumps({"fingerprint": fingerprint, "entropy": int(entropy), "task": task_id})
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PROVENANCE_KEY: provenance.encode()})
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def shard_provenance(path: Path) -> dict | None:
    """The provenance stored in a shard, or None when the file cannot be read (truncated or damaged)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    return json.loads(meta[PROVENANCE_KEY]) if PROVENANCE_KEY in meta else {}


def provenance_error(path: Path, found: dict, fingerprint: str, entropy: int | None) -> str | None:
    """Why a readable shard does not belong to the run (fingerprint, entropy) or to its own task; None if it does."""
    if not found:
        return f"shard {str(path)!r} carries no provenance (written by an older moe-sim)"
    if found.get("task") != path.stem:
        return f"shard {str(path)!r} holds the rows of task {found.get('task')!r}"
    if found.get("fingerprint") != fingerprint:
        return (f"shard {str(path)!r} holds results of a different config (fingerprint {found.get('fingerprint')}, "
                f"expected {fingerprint})")
    if entropy is not None and found.get("entropy") != entropy:
        return (f"shard {str(path)!r} was drawn with seed entropy {found.get('entropy')}, expected {entropy}; "
                f"its samples differ from the others'")
    return None


def scan_shards(out) -> tuple[dict[Path, dict], list[Path]]:
    """(readable shards with their provenance, unreadable shards) of a results directory."""
    readable, damaged = {}, []
    for path in shard_paths(out):
        found = shard_provenance(path)
        if found is None:
            damaged.append(path)
        else:
            readable[path] = found
    return readable, damaged


def finished_tasks(out) -> set[str]:
    """Ids of the tasks whose shard is readable."""
    return {path.stem for path in scan_shards(out)[0]}


def load_results(out) -> pd.DataFrame:
    """All rows of a results directory, in a canonical order (independent of the order tasks finished).

    Every shard must be readable and carry the manifest's fingerprint and entropy: a ValueError names the
    first that does not."""
    manifest = read_manifest(out)
    readable, damaged = scan_shards(out)
    if damaged:
        raise ValueError(f"shard {str(damaged[0])!r} is truncated or damaged ({len(damaged)} in all); rerun the "
                         f"sweep into {str(out)!r} to recompute it")
    for path, found in readable.items():
        error = provenance_error(path, found, manifest["fingerprint"], manifest["entropy"])
        if error:
            raise ValueError(f"{error}; it does not belong to {str(Path(out) / MANIFEST)!r}")
    if not readable:
        raise ValueError(f"results directory {str(out)!r} holds no finished shards yet")
    rows = pd.concat([pd.read_parquet(p) for p in readable], ignore_index=True)
    return rows.sort_values(ROW_ORDER, kind="stable").reset_index(drop=True)
