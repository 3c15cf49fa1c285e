"""The Ray trainable, called with Ray's report/checkpoint/context replaced by recorders: what it
reports, what it records, how it resumes, and that it needs nothing from the driver's disk."""

import json
import pickle
import shutil
from pathlib import Path

import pytest

from tune_ablations.spec.names import REPORT_KEYS
from tune_ablations.spec.resolve import resolve
from tune_ablations.spec.runspec import RunSpec
from tune_ablations.sweeps.trainable import git_sha, package_versions, run_trial
from tune_ablations.training.data import data_id


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

    state = {"reports": [], "checkpoint": None, "trial_dir": tmp_path / "exp" / "trial", "n": 0}
    state["trial_dir"].mkdir(parents=True)

    def report(metrics, checkpoint=None):
        state["n"] += 1
        kept = None
        if checkpoint is not None:
            kept = tmp_path / f"kept_{state['n']}"
            shutil.copytree(checkpoint.path, kept)
        state["reports"].append((metrics, kept))

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: state["checkpoint"])
    monkeypatch.setattr(tune, "get_context", lambda: _Context(state["trial_dir"]))
    monkeypatch.chdir(state["trial_dir"])  # Ray runs a trial in its working directory
    return state


@pytest.fixture
def base(corpus_dir) -> dict:
    return RunSpec(preset="tiny", data=str(corpus_dir), budget="steps",
                   overrides={"vocab_size": 300, "eval_tokens": 512}).to_dict()


def test_trainable_called_directly(stub_tune, base):
    run_trial({"ablation": "baseline", "seed": 0}, base=base, threads=1, sha="abc",
              argv=["python", "-m", "tune_ablations.grid", "--storage", "s3://K:S@b/x"])
    metrics = [m for m, _ in stub_tune["reports"]]
    assert [m["step"] for m in metrics] == [10, 20, 30]
    assert all(tuple(m) == REPORT_KEYS for m in metrics)
    assert all((p / "checkpoint.pt").exists() for _, p in stub_tune["reports"])
    run = json.loads((stub_tune["trial_dir"] / "run.json").read_text())
    spec = RunSpec.from_dict(run["spec"])
    assert run["config"]["lr"] == resolve(spec).optim.lr and run["label"] == "baseline-s0"
    assert run["seed"] == 0 and run["git_sha"] == "abc"
    assert run["versions"]["torch"] and run["data"]["key"] and run["trial_id"] == "stub_00000"
    assert run["argv"][:3] == ["python", "-m", "tune_ablations.grid"]
    assert "K:S" not in json.dumps(run)  # credentials never written
    assert run["reproduce"].startswith("python -m tune_ablations.train --ablation baseline")
    outcome = json.loads((stub_tune["trial_dir"] / "outcome.json").read_text())
    assert outcome["status"] == "completed" and outcome["samples"]


def test_run_json_records_the_optimizer(stub_tune, base):
    """A trial's run.json says which optimizer trained it, with its settings, the versions of
    the packages it came from, and a reproducing command that trains the same."""
    pytest.importorskip("schedulefree")
    base = {**base, "overrides": {**base["overrides"], "optimizer": "schedule_free_adamw",
                                  "max_steps": 10}}
    run_trial({"ablation": "baseline", "seed": 0}, base=base, threads=1)
    run = json.loads((stub_tune["trial_dir"] / "run.json").read_text())
    assert run["config"]["optimizer"] == "schedule_free_adamw"
    assert {"beta1", "beta2", "weight_decay", "lr"} <= set(run["config"])
    assert run["versions"]["schedulefree"]
    assert "optimizer=schedule_free_adamw" in run["reproduce"]


def test_trainable_resumes_from_ray_checkpoint(stub_tune, base):
    from ray import tune

    run_trial({"ablation": "baseline", "seed": 0}, base=base, threads=1)
    full = json.loads((stub_tune["trial_dir"] / "outcome.json").read_text())
    (stub_tune["trial_dir"] / "outcome.json").unlink()  # as if the trial was cut off
    _, ckpt_dir = stub_tune["reports"][1]  # the step-20 checkpoint
    stub_tune["reports"].clear()
    stub_tune["checkpoint"] = tune.Checkpoint.from_directory(str(ckpt_dir))
    run_trial({"ablation": "baseline", "seed": 0}, base=base, threads=1)
    assert [m["step"] for m, _ in stub_tune["reports"]] == [30]
    resumed = json.loads((stub_tune["trial_dir"] / "outcome.json").read_text())
    assert resumed["resumed_from"] == [20]
    assert resumed["final"] == full["final"]


def test_a_finished_trial_is_not_trained_again(stub_tune, base):
    """The driver died after the trial's outcome reached storage but before Ray's snapshot said
    it had finished: resumed, the trial reports its outcome again and does not train."""
    exp = stub_tune["trial_dir"].parent
    run_trial({"ablation": "baseline", "seed": 0}, base=base, threads=1,
              experiment=str(exp))
    first = [m for m, _ in stub_tune["reports"]]
    stub_tune["reports"].clear()
    before = (stub_tune["trial_dir"] / "outcome.json").stat().st_mtime_ns
    run_trial({"ablation": "baseline", "seed": 0}, base=base, threads=1,
              experiment=str(exp))
    (again, ckpt), = stub_tune["reports"]
    assert ckpt is None and again["step"] == first[-1]["step"] == 30
    assert again["val_loss"] == first[-1]["val_loss"]
    assert (stub_tune["trial_dir"] / "outcome.json").stat().st_mtime_ns == before


def test_a_trial_reads_only_the_data_it_is_handed(stub_tune, corpus_dir, tiny_data, tmp_path):
    """On another host the driver's corpus file does not exist: the trial runs from the data
    the driver handed it (pickled, as through Ray's object store), tokenizer included."""
    moved = tmp_path / "only-on-the-driver"
    shutil.copytree(corpus_dir, moved)
    spec = RunSpec(preset="tiny", data=str(moved), budget="steps",
                   overrides={"vocab_size": 300, "eval_tokens": 512})
    from tune_ablations.training.data import prepare_data

    data = prepare_data(resolve(spec).data, tmp_path / "driver-cache", log=lambda s: None)
    handed = pickle.loads(pickle.dumps({data_id(resolve(spec).data): data}))
    shutil.rmtree(moved)
    shutil.rmtree(tmp_path / "driver-cache")  # nothing of the driver's disk is left
    run_trial({"ablation": "baseline", "seed": 0}, base=spec.to_dict(), datasets=handed,
              threads=1, cache_dir=str(tmp_path / "empty-cache"))
    outcome = json.loads((stub_tune["trial_dir"] / "outcome.json").read_text())
    assert outcome["status"] == "completed" and outcome["samples"]
    assert not (tmp_path / "empty-cache").exists()  # no tokenizer was built here


def test_unreadable_checkpoint_restarts_from_scratch(stub_tune, base, tmp_path):
    from ray import tune

    bad = tmp_path / "bad_ckpt"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"truncated garbage")
    stub_tune["checkpoint"] = tune.Checkpoint.from_directory(str(bad))
    with pytest.warns(UserWarning, match="checkpoint_unreadable"):
        run_trial({"ablation": "baseline", "seed": 0}, base=base, threads=1)
    outcome = json.loads((stub_tune["trial_dir"] / "outcome.json").read_text())
    assert outcome["status"] == "completed" and outcome["resumed_from"] == []
    assert [m["step"] for m, _ in stub_tune["reports"]] == [10, 20, 30]


def test_bad_trial_config_rejected_by_trainable(stub_tune, base):
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        run_trial({"ablation": "baseline", "lrr": 1.0}, base=base)


def test_reproducibility_metadata():
    sha = git_sha(Path(__file__).parent)
    assert sha is None or len(sha.split("-")[0]) == 40
    v = package_versions()
    assert {"python", "torch", "ray"} <= set(v)
