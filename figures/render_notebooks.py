"""Execute every notebook in notebooks/ and save its last figure as figures/notebooks/NAME.png.

The README shows these pictures; run `make notebook-figures` after changing a notebook.
"""

import base64
from pathlib import Path

import jupytext
import nbclient

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    out_dir = ROOT / "figures" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted((ROOT / "notebooks").glob("*.py")):
        notebook = jupytext.read(path)
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
        images = [output["data"]["image/png"] for cell in notebook.cells if cell.cell_type == "code"
                  for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
        if images:
            (out_dir / f"{path.stem}.png").write_bytes(base64.b64decode(images[-1]))
            print(f"{path.stem}: saved {out_dir / (path.stem + '.png')}")
        else:
            print(f"{path.stem}: no figure")


if __name__ == "__main__":
    main()
