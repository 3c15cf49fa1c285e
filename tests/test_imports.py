"""The import direction holds: config -> corpus, data, model -> train -> trainable -> sweep ->
grid, search; results, analysis and report on the side. `train()` and everything below it never
import Ray; importing the package does no work."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "tune_ablations"

# Each module and the package modules it may import (at top level or inside functions).
ALLOWED = {
    "config": set(),
    "overrides": {"config"},
    "corpus": {"config"},
    "model": {"config"},
    "data": {"config", "corpus"},
    "train": {"config", "data", "model", "overrides"},
    "trainable": {"config", "data", "train"},
    "results": {"config"},
    "analysis": {"config", "results", "report"},
    "report": {"config", "results", "analysis"},
    "search_space": {"config", "overrides"},
    "sweep": {"config", "results"},
    "grid": {"config", "overrides", "data", "model", "train", "trainable", "sweep"},
    "search": {"config", "overrides", "data", "grid", "search_space", "sweep", "trainable"},
}
NO_RAY = {"config", "overrides", "corpus", "model", "data", "train", "results", "analysis",
          "report"}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(package modules, top-level external packages) imported anywhere in the file."""
    ours, ext = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.module:
                    ours.add(node.module.split(".")[0])
                else:
                    ours.update(a.name for a in node.names)
            elif node.module:
                ext.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            ext.update(a.name.split(".")[0] for a in node.names)
    return ours, ext


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_import_direction(module):
    ours, ext = _imports(PKG / f"{module}.py")
    assert ours <= ALLOWED[module], f"{module} imports {ours - ALLOWED[module]}"
    if module in NO_RAY:
        assert "ray" not in ext, f"{module} imports ray"


def test_every_module_is_listed():
    found = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    assert found == set(ALLOWED)


def test_import_does_no_work():
    code = ("import sys, time; t = time.perf_counter()\n"
            "import tune_ablations.config, tune_ablations.analysis, tune_ablations.search_space\n"
            "print('ray' in sys.modules, 'optuna' in sys.modules, 'matplotlib' in sys.modules, "
            "'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=PKG.parent)
    assert out.stdout.split() == ["False", "False", "False", "False"], out.stderr
