"""Every notebook in notebooks/ converts and runs top to bottom; each asserts the facts it teaches."""

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.py"))


def test_the_notebooks_are_found():
    """Guards the parametrisation below: an empty glob would run no notebook and pass."""
    assert {p.stem for p in NOTEBOOKS} >= {
        "quickstart", "convergence_rates", "custom_expert", "sigmoid_attention", "attention_rows"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
