import json
import shutil
from pathlib import Path

import pytest

from tune_ablations.config import REPORT_KEYS, to_flat_dict
from tune_ablations.trainable import git_sha, package_versions, run_trial


class _Context:
    def __init__(self, trial_dir):
        self.trial_dir = trial_dir

    def get_trial_dir(self):
        return str(self.trial_dir)

    def get_trial_id(self):
        return "stub_00000"


@pytest.fixture
def stub_tune(monkeypatch, tmp_path):
    """ray.tune's report / get_checkpoint / get_context replaced by recorders."""
    from ray import tune

    state = {"reports": [], "checkpoint": None, "trial_dir": tmp_path / "trial", "n": 0}
    state["trial_dir"].mkdir()

    def report(metrics, checkpoint=None):
        state["n"] += 1
        kept = tmp_path / f"kept_{state['n']}"
        shutil.copytree(checkpoint.path, kept)
        state["reports"].append((metrics, kept))

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: state["checkpoint"])
    monkeypatch.setattr(tune, "get_context", lambda: _Context(state["trial_dir"]))
    monkeypatch.chdir(state["trial_dir"])  # Ray runs a trial in its working directory
    return state


def test_trainable_called_directly(stub_tune, tiny_cfg):
    flat = to_flat_dict(tiny_cfg) | {"ablation": "baseline", "preset": "tiny"}
    run_trial(flat, threads=1, sha="abc")
    metrics = [m for m, _ in stub_tune["reports"]]
    assert [m["step"] for m in metrics] == [10, 20, 30]
    assert all(tuple(m) == REPORT_KEYS for m in metrics)
    assert all((p / "checkpoint.pt").exists() for _, p in stub_tune["reports"])
    run = json.loads((stub_tune["trial_dir"] / "run.json").read_text())
    assert run["config"] == to_flat_dict(tiny_cfg)
    assert run["seed"] == tiny_cfg.seed and run["git_sha"] == "abc"
    assert run["versions"]["torch"] and run["data"]["key"] and run["trial_id"] == "stub_00000"
    outcome = json.loads((stub_tune["trial_dir"] / "outcome.json").read_text())
    assert outcome["status"] == "completed" and outcome["samples"]


def test_trainable_resumes_from_ray_checkpoint(stub_tune, tiny_cfg, monkeypatch):
    from ray import tune

    flat = to_flat_dict(tiny_cfg)
    run_trial(flat, threads=1)
    full = json.loads((stub_tune["trial_dir"] / "outcome.json").read_text())
    _, ckpt_dir = stub_tune["reports"][1]  # the step-20 checkpoint
    stub_tune["reports"].clear()
    stub_tune["checkpoint"] = tune.Checkpoint.from_directory(str(ckpt_dir))
    run_trial(flat, threads=1)
    assert [m["step"] for m, _ in stub_tune["reports"]] == [30]
    resumed = json.loads((stub_tune["trial_dir"] / "outcome.json").read_text())
    assert resumed["resumed_from"] == [20]
    assert resumed["final"] == full["final"]


def test_unreadable_checkpoint_restarts_from_scratch(stub_tune, tiny_cfg, tmp_path):
    from ray import tune

    bad = tmp_path / "bad_ckpt"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"truncated garbage")
    stub_tune["checkpoint"] = tune.Checkpoint.from_directory(str(bad))
    with pytest.warns(UserWarning, match="checkpoint_unreadable"):
        run_trial(to_flat_dict(tiny_cfg), threads=1)
    outcome = json.loads((stub_tune["trial_dir"] / "outcome.json").read_text())
    assert outcome["status"] == "completed" and outcome["resumed_from"] == []
    assert [m["step"] for m, _ in stub_tune["reports"]] == [10, 20, 30]


def test_bad_flat_config_rejected_by_trainable(stub_tune):
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        run_trial({"ablation": "baseline", "preset": "tiny", "lrr": 1.0})


def test_reproducibility_metadata():
    sha = git_sha(Path(__file__).parent)
    assert sha is None or len(sha.split("-")[0]) == 40
    v = package_versions()
    assert {"python", "torch", "ray"} <= set(v)
