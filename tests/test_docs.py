"""The documentation site builds offline in strict mode (a broken link, anchor or API reference fails it) and has its
key pages; the example notebook is committed without outputs."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # mkdocs in a subprocess
def test_the_site_builds_strictly_with_its_key_pages(tmp_path):
    site = tmp_path / "site"
    # Material prints an end-of-life notice for MkDocs 1.x on every build; it is not about this site (Makefile, docs)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert "WARNING" not in build.stderr
    for page in ("index", "getting-started", "concepts", "own-data", "encoders", "methods", "own-method", "metrics",
                 "results", "tuning", "cluster", "scale-cost", "benchmark", "choosing", "troubleshooting"):  # fmt: skip
        assert (site / f"{page}.html").is_file(), page
    api = (site / "reference" / "api.html").read_text()
    assert 'id="brokenbind.api.fit"' in api and 'id="brokenbind.api.RunResult"' in api
    assert 'id="brokenbind.methods.base.BindingMethod"' in (site / "reference" / "methods.html").read_text()
    assert 'id="datamodules.base.PairedDataModule"' in (site / "reference" / "datamodules.html").read_text()
    # the benchmark's figures are mounted from benchmarks/results/ and shown on the benchmark page
    benchmark = (site / "benchmark.html").read_text()
    for figure in (ROOT / "benchmarks" / "results" / "bench").glob("*.png"):
        assert f'src="results/bench/{figure.name}"' in benchmark
        assert (site / "results" / "bench" / figure.name).read_bytes() == figure.read_bytes()
    # the troubleshooting table is tests/test_bad_inputs.py's CASES, a row per case
    troubleshooting = (site / "troubleshooting.html").read_text()
    cases = re.findall(r'^    Case\("(\w+)"', (ROOT / "tests" / "test_bad_inputs.py").read_text(), re.M)
    assert len(cases) >= 60
    assert [case for case in cases if f"<code>{case}</code>" not in troubleshooting] == []


def test_the_example_notebook_is_committed_without_outputs():
    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert [(cell.outputs, cell.execution_count) for cell in code] == [([], None)] * len(code)


def test_the_method_example_is_the_one_the_suite_test_runs():
    """docs/own-method.md shows tests/test_suite.py's MY_METHOD, which that test trains and compares in a suite."""
    page = (ROOT / "docs" / "own-method.md").read_text()
    example = re.search(r"```python\n# my_methods\.py\n(.*?)```", page, re.S)
    assert example, "docs/own-method.md lost its my_methods.py example"
    module = ast.parse((ROOT / "tests" / "test_suite.py").read_text())
    tested = next(
        node.value.value
        for node in module.body
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "MY_METHOD" for target in node.targets)
    )
    assert example.group(1) == tested.lstrip("\n")
