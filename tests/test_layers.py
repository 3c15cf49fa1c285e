"""The layer rule: each layer imports only from the layers below it (spec < training < results <
sweeps < commands < api), no module imports itself in a cycle, the training layer and
everything below it never import Ray, the results layer never imports Ray either, the command
modules interpret no spec key (they parse, call the layers and print), and importing the
package does no work. The rules are checked on whatever modules exist, not on a list of
them."""

import ast
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from tune_ablations.spec.config import RunConfig, field_names
from tune_ablations.spec.runspec import RunSpec

PKG = Path(__file__).resolve().parent.parent / "tune_ablations"
LAYERS = ["spec", "training", "results", "sweeps", "commands", "api"]
NO_RAY = {"spec", "training", "results"}


def layer_of(module: str) -> str:
    """`spec.config` -> spec; `api` is the API; another top-level module (`grid`, `cli`) is a
    command."""
    head = module.split(".")[0]
    return head if head in LAYERS else "commands"


def modules() -> list[str]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        if rel.name == "__init__" and len(rel.parts) == 1:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out.append(".".join(parts))
    return out


def imports(module: str) -> tuple[set[str], set[str]]:
    """(package modules, top-level external packages) imported anywhere in the module."""
    parts = module.split(".")
    path = PKG.joinpath(*parts).with_suffix(".py")
    if not path.exists():
        path = PKG.joinpath(*parts, "__init__.py")
    package = parts[:-1] if path.name != "__init__.py" else parts
    ours, ext = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = [target] if node.module else [[*target, a.name] for a in node.names]
            ours.update(".".join(n) for n in names if ".".join(n))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("tune_ablations"):
                ours.add(node.module.removeprefix("tune_ablations").strip("."))
            ext.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            ext.update(a.name.split(".")[0] for a in node.names)
    return {m for m in ours if m}, ext


def test_the_tree_shows_its_layers():
    found = {layer_of(m) for m in modules()}
    assert found == set(LAYERS)
    assert not [p for p in PKG.glob("*.py") if p.stem not in (
        "__init__", "__main__", "cli", "api", "grid", "search", "analysis", "train", "export",
        "status", "submit", "cache")], "a module that is not a command sits at the top level"


@pytest.mark.parametrize("module", modules())
def test_imports_go_down_the_layers(module):
    ours, ext = imports(module)
    rank = LAYERS.index(layer_of(module))
    for dep in ours:
        assert LAYERS.index(layer_of(dep)) <= rank, f"{module} imports {dep}, a higher layer"
    if layer_of(module) in NO_RAY:
        assert "ray" not in ext, f"{module} imports ray"


def test_no_cycles():
    graph = {m: {d for d in imports(m)[0] if d in set(modules())} for m in modules()}
    state: dict[str, int] = {}

    def visit(m, path):
        assert state.get(m) != 1, f"import cycle: {' -> '.join([*path, m])}"
        if state.get(m) == 2:
            return
        state[m] = 1
        for dep in graph.get(m, ()):
            visit(dep, [*path, m])
        state[m] = 2

    for m in graph:
        visit(m, [])


# What a command may take from the spec layer: parsing the spec's arguments, the default
# preset of a machine, names and output conventions; never the resolver, presets' values, arms.
SPEC_FOR_COMMANDS = {"spec.runspec": {"add_spec_args", "spec_from_args", "RunSpec"},
                     "spec.presets": {"default_preset"}, "spec.names": None, "spec.io": None}
# Attributes that read a spec or a config: RunSpec's fields, RunConfig's sections and fields
# (`name`, a plain word everywhere, aside).
SPEC_ATTRS = ({f.name for f in fields(RunSpec)} | {f.name for f in fields(RunConfig)}
              | set(field_names())) - {"name"}
COMMANDS = [m for m in modules() if layer_of(m) == "commands"]


def _spec_uses(module: str) -> list[str]:
    """Where a command module reads a spec or config field (other than the parsed command
    line, `args`) or imports what interprets one."""
    path = PKG.joinpath(*module.split(".")).with_suffix(".py")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in SPEC_ATTRS and not (
                isinstance(node.value, ast.Name) and node.value.id == "args"):
            found.append(f"line {node.lineno}: .{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.level and node.module and \
                node.module.startswith("spec"):
            allowed = SPEC_FOR_COMMANDS.get(node.module, set())
            bad = [a.name for a in node.names if allowed is not None and a.name not in allowed]
            found += [f"line {node.lineno}: {node.module}.{b}" for b in bad]
    return found


@pytest.mark.parametrize("module", COMMANDS)
def test_commands_interpret_no_spec_key(module):
    """Commands parse, call the layers and print: what a spec means is for spec/ (the
    resolver), plans for sweeps/."""
    assert _spec_uses(module) == [], module


def test_the_spec_use_check_finds_what_it_forbids():
    """The check above is not vacuous: the code commands used to hold is found."""
    fake = PKG / "_layers_probe.py"
    fake.write_text("from .spec.resolve import resolve\n"
                    "from .spec.presets import ABLATIONS\n"
                    "def f(spec, args):\n"
                    "    if spec.preset == 'cpu' and args.preset:\n"
                    "        return dict(spec.overrides), resolve(spec).optim.lr\n")
    try:
        assert sorted(_spec_uses("_layers_probe")) == sorted([
            "line 1: spec.resolve.resolve", "line 2: spec.presets.ABLATIONS",
            "line 4: .preset", "line 5: .overrides", "line 5: .optim", "line 5: .lr"])
    finally:
        fake.unlink()


def test_import_does_no_work():
    code = ("import sys\n"
            "import tune_ablations.spec.config, tune_ablations.analysis, tune_ablations.grid\n"
            "import tune_ablations.sweeps.search_space, tune_ablations.results.report\n"
            "import tune_ablations.api, tune_ablations.sweeps.grid_plan\n"
            "print('ray' in sys.modules, 'optuna' in sys.modules, 'matplotlib' in sys.modules, "
            "'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=PKG.parent)
    assert out.stdout.split() == ["False", "False", "False", "False"], out.stderr
