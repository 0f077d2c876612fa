"""The layers point one way: read from the source (every import, function-level ones included), not by running it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"brokenbind": ROOT / "src" / "brokenbind", "datamodules": ROOT / "datamodules",
            "benchmarks": ROOT / "benchmarks"}  # fmt: skip
LOW = ("brokenbind.losses", "brokenbind.metrics", "brokenbind.errors", "brokenbind.world")  # the bottom layer
# The application (open_clip_train to the library's open_clip): the command line, settings and presets, run
# directories and their lock, message rewriting, embed and tune. The rest of brokenbind is the library.
APPLICATION = ("brokenbind.api", "brokenbind.cli", "brokenbind.settings", "brokenbind.rundir", "brokenbind.runlock",
               "brokenbind.messages", "brokenbind.embed", "brokenbind.tune")  # fmt: skip


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from a import b`` counts ``a`` and, if a module, ``a.b``)."""
    files = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = (package, *path.relative_to(folder).with_suffix("").parts)
            files[".".join(parts).removesuffix(".__init__")] = path
    graph = {}
    for name, path in files.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


GRAPH = import_graph()


def test_the_graph_is_read():
    assert "brokenbind.losses.mox" in GRAPH["brokenbind.methods.brokenbind"]
    assert "brokenbind.api" in GRAPH["brokenbind.cli"]


def test_no_import_cycle():
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for dependency in sorted(GRAPH[module]):
            assert dependency not in path, "import cycle: " + " -> ".join([*path[path.index(dependency) :], dependency])
            if dependency not in done:
                visit(dependency, [*path, dependency])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [module])


def test_nothing_imports_the_cli_and_the_core_imports_no_tooling():
    assert [m for m, deps in GRAPH.items() if "brokenbind.cli" in deps] == []
    assert [
        m for m, deps in GRAPH.items() if m.startswith("brokenbind") and any(d.startswith("benchmarks") for d in deps)
    ] == []


def test_losses_and_metrics_import_nothing_above_them():
    above = {m: sorted(d for d in deps if not d.startswith(LOW)) for m, deps in GRAPH.items()
             if m.startswith(("brokenbind.losses", "brokenbind.metrics"))}  # fmt: skip
    assert {m: deps for m, deps in above.items() if deps} == {}


def test_datamodules_import_no_loss_method_module_backbone_or_callback():
    forbidden = ("brokenbind.losses", "brokenbind.methods", "brokenbind.module", "brokenbind.backbones",
                 "brokenbind.callbacks", "brokenbind.api", "brokenbind.tune")  # fmt: skip
    found = {
        m: sorted(d for d in deps if d.startswith(forbidden))
        for m, deps in GRAPH.items()
        if m.startswith("datamodules")
    }
    assert {m: deps for m, deps in found.items() if deps} == {}


def test_the_library_imports_no_application_module_and_no_datamodule():
    library = [m for m in GRAPH if m.startswith("brokenbind") and m != "brokenbind" and m not in APPLICATION]
    assert "brokenbind.module" in library and "brokenbind.methods.brokenbind" in library
    found = {m: sorted(d for d in GRAPH[m] if d in APPLICATION or d.startswith("datamodules")) for m in library}
    assert {m: deps for m, deps in found.items() if deps} == {}


def test_only_the_application_imports_concrete_datamodules():
    concrete = {m for m in GRAPH if m.startswith("datamodules.") and m != "datamodules.base"}
    found = {m: sorted(GRAPH[m] & concrete) for m in GRAPH if m.startswith("brokenbind") and m not in APPLICATION}
    assert {m: deps for m, deps in found.items() if deps} == {}


def test_a_run_is_no_lightning_cli_and_patches_no_command_line():
    """The run is a function (``brokenbind.api._run``), not a LightningCLI subclass with overridden private methods,
    and it hands its arguments to the parser instead of patching ``sys.argv``."""
    for package, folder in PACKAGES.items():
        if package != "brokenbind":
            continue
        for path in folder.rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
                a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
            }
            assert "LightningCLI" not in names, path
            assert not any(isinstance(n, ast.ImportFrom) and n.module == "unittest.mock" for n in ast.walk(tree)), path


def test_the_pairing_graph_the_model_and_the_methods_stand_below_the_run():
    """One pairing graph for everyone, importing nothing of the package but its errors; methods import no evaluation
    (metrics, callbacks) and no model; callbacks build no method; the model is a plain torch module."""
    assert GRAPH["brokenbind.graph"] <= {"brokenbind.errors"}
    above_methods = ("brokenbind.metrics", "brokenbind.callbacks", "brokenbind.module", "brokenbind.model")
    found = {m: sorted(d for d in deps if d.startswith(above_methods))
             for m, deps in GRAPH.items() if m.startswith("brokenbind.methods")}  # fmt: skip
    assert {m: deps for m, deps in found.items() if deps} == {}
    method_classes = {f"brokenbind.methods.{n}" for n in ("brokenbind", "centrobind", "cmcr", "fabind", "transitive")}
    found = {m: sorted(deps & method_classes) for m, deps in GRAPH.items() if m.startswith("brokenbind.callbacks")}
    assert {m: deps for m, deps in found.items() if deps} == {}
    model = ast.parse((PACKAGES["brokenbind"] / "model.py").read_text())
    modules = {a.name for n in ast.walk(model) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(model) if isinstance(n, ast.ImportFrom) and n.module}
    assert "torch" in modules and not any(m.startswith("lightning") for m in modules)
