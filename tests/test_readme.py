"""The README's Python example runs as written."""

import re
from pathlib import Path

import pytest

from moe_sim.fit.gbar import DegenerateGBarWarning

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.slow  # the example's two searches at n = 5000, k = 3, G_bar and a profile: over a minute on 2 cores
def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    namespace = {}
    with pytest.warns(DegenerateGBarWarning):  # the example's G_bar sits on the expert-size bound, as it says
        exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["fit"].converged and not namespace["fit"].worse_than_truth
