"""``examples/quickstart.ipynb`` runs from start to end, as a user runs it: in a fresh kernel, from a working directory
that holds ``experiments/`` (the notebook's paths start at the repository root), writing its runs there."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
# The objects a reader looks at, as the notebook leaves them in its kernel: printed by a cell the test appends.
REPORT = """
import json
print(json.dumps({
    "methods": sorted(rows["method"].unique()),
    "test_methods": sorted(test.index),
    "stages": sorted(rows["stage"].unique()),
    "diagnosis": {name: sorted(diagnosis(run)) for name, run in runs.items()},
    "embeddings": {modality: list(vectors.shape) for modality, vectors in embeddings.items()},
    "labels": len(index),
    "folder": str(folder),
}))
"""
DIAGNOSIS = ["cos_pseudo_pivot", "cos_pseudo_target", "mAP_pivot_target", "mAP_pseudo_target", "mAP_query_pivot",
             "mAP_query_pseudo"]  # fmt: skip


@pytest.mark.slow
def test_the_quickstart_notebook_runs_and_compares_both_methods(tmp_path):
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(REPORT))
    # a cell that raises stops the run with CellExecutionError, naming the cell and its traceback
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}).execute()

    report = json.loads(next(out.text for out in notebook.cells[-1].outputs if out.get("name") == "stdout"))
    assert report["methods"] == report["test_methods"] == ["brokenbind", "fabind"]
    assert report["stages"] == ["test", "val"]
    for measures in report["diagnosis"].values():
        assert measures == sorted(f"evaluation/fou->zer/{measure}" for measure in DIAGNOSIS)
    shapes = report["embeddings"]
    assert set(shapes) == {"fou", "pix", "zer"} and len({tuple(shape) for shape in shapes.values()}) == 1
    assert shapes["fou"][0] == report["labels"] > 0
    assert (tmp_path / report["folder"] / "zer.npy").is_file()  # the runs were written in the working directory
    plots = [out for cell in notebook.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert len(plots) == 3  # validation curves and loss terms, pivot diagnosis, embeddings
