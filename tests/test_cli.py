"""The moe-sim command line: list, a tiny run with the real estimator, rates, plot, reproduce; errors."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from moe_sim import store
from moe_sim.cli import main

TINY = """
name = "tiny"
description = "two tanh experts, softmax gate, over-specified by one atom"
paper = "b"
n = [60, 120, 240]
replicates = 3
chunk = 3
seed = 5
noise_sd = 0.05
eval_n = 200
k = 3

[model]
gate = "softmax"
expert = "tanh"

[truth]
bias = [0.0, 0.0]
gate = [[2.0], [0.0]]
expert = [[0.5, 1.0], [-0.5, -1.0]]

[estimator]
method = "lse"
init = { kmeans = 1, random = 1 }

[analysis]
target_error = 0.05

[quick]
n = [60, 120]
replicates = 2
"""


@pytest.fixture
def configs(tmp_path):
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "tiny.toml").write_text(TINY)
    return folder


def test_list(configs, capsys):
    assert main(["--configs", str(configs), "list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny") and "n 60..240 x 3 reps (quick: n 60..120 x 2)  [paper b]" in out


def listing(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_run_rates_plot(configs, tmp_path, capsys):
    results = tmp_path / "res"
    assert main(["--configs", str(configs), "run", "tiny", "--out", str(results), "--no-progress"]) == 0
    rows = store.load_results(results)
    assert rows.groupby(["n", "replicate"]).ngroups == 9
    assert (rows.status != "failed").all()
    before = listing(results)
    tables = tmp_path / "tables"
    assert main(["rates", str(results), "--out", str(tables)]) == 0
    out = capsys.readouterr().out
    assert "| series | quantity |" in out and "n^-1/2" in out
    table = pd.read_csv(tables / "tiny_rates.csv")
    assert {"loss", "regression_l2", "param:expert:max"} <= set(table.quantity)
    figures = tmp_path / "fig"
    assert main(["plot", str(results), "--out", str(figures)]) == 0
    assert listing(results) == before, "rates and plot --out leave the results directory untouched"
    names = {p.name for p in figures.iterdir()}
    assert {"tiny.png", "tiny.pdf", "tiny_rates.md", "tiny_sample_complexity.png"} <= names
    assert main(["plot", str(results)]) == 0
    again = results / "figures"
    for name in ("tiny.pdf", "tiny.png", "tiny_rates.csv"):
        assert (figures / name).read_bytes() == (again / name).read_bytes(), f"{name} differs between two plots"


def test_reproduce_quick_and_resume(configs, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--configs", str(configs), "reproduce", "all", "--quick", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"results in {out}/NAME, figures and rate tables in {out / 'figures'}" in printed
    first = store.load_results(out / "tiny_quick")
    assert (out / "figures" / "tiny_quick.png").exists() and (out / "figures" / "tiny_quick_rates.csv").exists()
    assert main(args) == 0, "a rerun resumes: nothing left to do"
    pd.testing.assert_frame_equal(first, store.load_results(out / "tiny_quick"))


def test_errors_exit_with_a_message(configs, tmp_path, capsys):
    assert main(["--configs", str(configs), "reproduce", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["rates", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_bad_output_folders_fail_before_any_fit(configs, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for argv in (["run", "tiny", "--out", str(a_file)], ["reproduce", "tiny", "--out", str(a_file)],
                 ["reproduce", "tiny", "--out", str(tmp_path / "r"), "--figures", str(a_file)]):
        assert main(["--configs", str(configs), *argv, "--no-progress"]) == 2
        assert f"'{a_file}' is an existing file, not a folder" in capsys.readouterr().err
    assert not list(tmp_path.rglob(store.MANIFEST)), "no run started"
    results = tmp_path / "res"
    assert main(["--configs", str(configs), "run", "tiny", "--quick", "--out", str(results), "--no-progress"]) == 0
    for command in ("rates", "plot"):
        assert main([command, str(results), "--out", str(a_file)]) == 2
        assert f"--out '{a_file}' is an existing file" in capsys.readouterr().err
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # every folder read-only
    assert main(["--configs", str(configs), "run", "tiny", "--out", str(tmp_path / "new"), "--no-progress"]) == 2
    assert "--out '" + str(tmp_path / "new") + "' is not writable" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("line, bad_line, message", [
    ("seed = 5", "seed = 5\nreference = { n_strats = 3 }", "unknown config key(s) ['n_strats'] in reference"),
    ("eval_n = 200", "eval_n = 10000000000", "config key 'eval_n' = 10000000000 is not allowed"),
    ("n = [60, 120]", "n = [60]", "config key 'n' = [60] is not allowed"),
    ("seed = 5", "seed = 5\nbounds = [1.0, -1.0]", "config key 'bounds' = [1.0, -1.0] is not allowed"),
])
def test_a_bad_config_writes_nothing_and_the_fixed_one_runs_there(configs, tmp_path, capsys, line, bad_line,
                                                                  message):
    assert line in TINY
    (configs / "tiny.toml").write_text(TINY.replace(line, bad_line))
    out = tmp_path / "res"
    assert main(["--configs", str(configs), "run", "tiny", "--quick", "--out", str(out), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists(), "the config failed before anything was written"
    (configs / "tiny.toml").write_text(TINY)
    assert main(["--configs", str(configs), "run", "tiny", "--quick", "--out", str(out), "--no-progress"]) == 0


def test_python_dash_m(configs):
    done = subprocess.run([sys.executable, "-m", "moe_sim", "--configs", str(configs), "list"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("tiny")
