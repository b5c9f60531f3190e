"""The moe-sim command line: list, a tiny run with the real estimator, rates, plot, reproduce; errors."""

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


def test_run_rates_plot(configs, tmp_path, capsys):
    results = tmp_path / "res"
    assert main(["--configs", str(configs), "run", "tiny", "--out", str(results), "--no-progress"]) == 0
    rows = store.load_results(results)
    assert rows.groupby(["n", "replicate"]).ngroups == 9
    assert (rows.status != "failed").all()
    assert main(["rates", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| series | quantity |" in out and "n^-1/2" in out
    table = pd.read_csv(results / "tiny_rates.csv")
    assert {"loss", "regression_l2", "param:expert:max"} <= set(table.quantity)
    figures = tmp_path / "fig"
    assert main(["plot", str(results), "--out", str(figures)]) == 0
    names = {p.name for p in figures.iterdir()}
    assert {"tiny.png", "tiny.pdf", "tiny_rates.md", "tiny_sample_complexity.png"} <= names
    again = tmp_path / "again"
    assert main(["plot", str(results), "--out", str(again)]) == 0
    for name in ("tiny.pdf", "tiny.png", "tiny_rates.csv"):
        assert (figures / name).read_bytes() == (again / name).read_bytes(), f"{name} differs between two plots"


def test_reproduce_quick_and_resume(configs, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--configs", str(configs), "reproduce", "all", "--quick", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    first = store.load_results(out / "results" / "tiny_quick")
    assert (out / "tiny_quick.png").exists() and (out / "tiny_quick_rates.csv").exists()
    assert main(args) == 0, "a rerun resumes: nothing left to do"
    pd.testing.assert_frame_equal(first, store.load_results(out / "results" / "tiny_quick"))


def test_errors_exit_with_a_message(configs, tmp_path, capsys):
    assert main(["--configs", str(configs), "reproduce", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["rates", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_python_dash_m(configs):
    done = subprocess.run([sys.executable, "-m", "moe_sim", "--configs", str(configs), "list"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("tiny")
