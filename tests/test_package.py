"""Installed like a tool: the wheel carries the search spaces and the command, and works from
outside the checkout."""

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_license_matches_pyproject():
    from tune_ablations.spec.toml import toml_module

    meta = toml_module().loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "tune-ablations" in meta["scripts"]


@pytest.mark.extended  # builds and installs a wheel (~40 s); CI's extended step runs it
def test_wheel_works_outside_the_checkout(tmp_path):
    """Build the wheel, install it (without dependencies) into a fresh venv that borrows this
    environment's dependencies, and run `search --smoke-test --space lr` from another folder."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(ROOT)], check=True, timeout=300)
    wheel = next(dist.glob("tune_ablations-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True,
                             check=True).stdout.strip()
    # The dependencies (torch, ray, ...) come from this environment; .pth files there, such as
    # the editable install of the checkout, are not processed for a path added this way.
    deps = [p for p in site.getsitepackages() if "site-packages" in p]
    Path(purelib, "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "TUNE_ABLATIONS_CACHE": os.environ["TUNE_ABLATIONS_CACHE"]}
    where = subprocess.run([str(py), "-c", "import tune_ablations as t; print(t.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    assert str(ROOT) not in where.stdout and "site-packages" in where.stdout, where
    out = subprocess.run([str(venv / "bin" / "tune-ablations"), "search", "--smoke-test",
                          "--space", "lr", "--num-samples", "2", "--storage",
                          str(tmp_path / "results")], capture_output=True, text=True,
                         cwd=elsewhere, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "event=sweep_done trials=2" in out.stderr
