"""The import direction holds: every module imports only modules of a lower rank (so there can be
no cycle); `train()` and everything below it never import Ray; importing the package does no
work."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "tune_ablations"

# Rank order, lowest first: a module may import only modules listed before it.
RANK = ["config", "flops", "resolve", "overrides", "runtime", "cli", "sweep_args", "corpus",
        "data", "domains", "model", "cache", "evaluation", "step", "cooldown", "train",
        "trainable", "storage", "results", "stats", "search_space", "plan", "summary",
        "markdown", "report", "analysis", "export", "study", "tuner", "sweep", "grid",
        "search", "submit", "status"]
NO_RAY = {"config", "flops", "resolve", "overrides", "cli", "sweep_args", "corpus", "model",
          "data", "domains", "cache", "runtime", "evaluation", "step", "cooldown", "train",
          "storage", "results", "stats", "report", "analysis", "export", "summary",
          "markdown"}


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


@pytest.mark.parametrize("module", RANK)
def test_imports_only_lower_ranks(module):
    ours, ext = _imports(PKG / f"{module}.py")
    allowed = set(RANK[:RANK.index(module)])
    assert ours <= allowed, f"{module} imports {ours - allowed}, which rank at or above it"
    if module in NO_RAY:
        assert "ray" not in ext, f"{module} imports ray"


def test_no_cycles():
    graph = {m: _imports(PKG / f"{m}.py")[0] for m in RANK}
    state: dict[str, int] = {}

    def visit(m, path):
        assert state.get(m) != 1, f"import cycle: {' -> '.join([*path, m])}"
        if state.get(m) == 2:
            return
        state[m] = 1
        for dep in graph.get(m, ()):
            visit(dep, [*path, m])
        state[m] = 2

    for m in RANK:
        visit(m, [])


def test_every_module_is_ranked():
    found = {p.stem for p in PKG.glob("*.py")} - {"__init__", "__main__"}
    assert found == set(RANK)


def test_import_does_no_work():
    code = ("import sys, time; t = time.perf_counter()\n"
            "import tune_ablations.config, tune_ablations.analysis, tune_ablations.search_space\n"
            "print('ray' in sys.modules, 'optuna' in sys.modules, 'matplotlib' in sys.modules, "
            "'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=PKG.parent)
    assert out.stdout.split() == ["False", "False", "False", "False"], out.stderr
