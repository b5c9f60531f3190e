"""Every notebook in notebooks/ converts and runs top to bottom; each asserts the facts it teaches."""

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.py"))
# Notebooks that measure rates over replicates and a grid of n (minutes on 2 cores): `make test-all` runs them.
RATE_NOTEBOOKS = {"convergence_rates", "custom_expert", "attention_rows"}


def test_the_notebooks_are_found():
    """Guards the parametrisation below: an empty glob would run no notebook and pass."""
    assert {p.stem for p in NOTEBOOKS} >= {
        "quickstart", "convergence_rates", "custom_expert", "sigmoid_attention", "attention_rows"}
    assert RATE_NOTEBOOKS < {p.stem for p in NOTEBOOKS}, "a slow mark names a notebook that is gone"


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] * (p.stem in RATE_NOTEBOOKS))
                                  for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
