"""Every entry point against a battery of bad inputs: one clear line naming the field, value or
rule, exit code 2, no traceback, nothing written. Plus the installed `tune-ablations` command,
`--out` as a folder or a file, and help text on every option."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tune_ablations import analysis, cache, export, grid, search, status, submit, train
from tune_ablations.__main__ import main as tool_main


def _bad_corpora(root: Path) -> dict[str, tuple[Path, str]]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.txt").write_text("\n\n")
    (root / "empty_dir").mkdir(exist_ok=True)
    (root / "notext.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n')
    (root / "broken.jsonl").write_text('{"text": "a"\n{{{\n')
    (root / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    (root / "data.csv").write_text("text\nhello\n")
    small = root / "small"
    small.mkdir(exist_ok=True)
    for i in range(4):
        (small / f"{i}.txt").write_text(f"tiny document {i}")
    return {"missing": (root / "nope", "is not an embedded corpus"),
            "empty": (root / "empty.txt", "is empty"),
            "empty_dir": (root / "empty_dir", "folder has no"),
            "notext": (root / "notext.jsonl", "has no 'text' column"),
            "broken_json": (root / "broken.jsonl", "could not be read"),
            "broken_parquet": (root / "broken.parquet", "could not be read"),
            "csv": (root / "data.csv", "file type '.csv' must be one of"),
            "small": (small, "smaller than one window")}


def _clean(capsys, code, message):
    """Exit 2, no traceback, and exactly one `error:` line (the last), naming the problem;
    progress logs (key=value lines) may precede it."""
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    assert err.strip().splitlines()[-1] == errors[0] and message in errors[0], err


@pytest.mark.parametrize("kind", ["missing", "empty", "empty_dir", "notext", "broken_json",
                                  "broken_parquet", "csv", "small"])
@pytest.mark.parametrize("entry", ["train", "grid", "search"])
def test_bad_corpora_everywhere(entry, kind, tmp_path, capsys):
    path, message = _bad_corpora(tmp_path / "c")[kind]
    common = ["--preset", "tiny", "--data", str(path)]
    sweep = ["--storage", str(tmp_path / "out"), "--name", "bad"]
    code = {"train": lambda: train.main(common),
            "grid": lambda: grid.main([*common, *sweep]),
            "search": lambda: search.main(["--space", "lr", *common, *sweep])}[entry]()
    _clean(capsys, code, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--set", "lr=-1"], "lr=-1 must be > 0"),
    (["--set", "lrr=1"], "did you mean 'lr'"),
    (["--set", "lr"], "must look like key=value"),
    (["--ablation", "hi_lr"], "did you mean 'high_lr'"),
    (["--tokens", "0"], "--tokens=0 must be > 0"),
    (["--threads", "0"], "--threads=0 must be >= 1"),
    (["--config", "/no/such.toml"], "no such file"),
    (["--seed", "x"], "invalid int value: 'x'"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
])
def test_train_bad_values(argv, message, capsys):
    try:
        code = train.main(["--smoke-test", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    _clean(capsys, code, message)


QUESTION_ERRORS = [
    (["--arm", "x:lrr=2"], "arm 'x': unknown key 'lrr'; did you mean 'lr'?"),
    (["--arm", "x:vocab_size=2048"], "arm 'x': vocab_size sets the tokenizer, which every arm "
     "shares"),
    (["--arm", "x:ffn=x2"], "arm 'x': ffn='x2': a factor applies to numeric config fields"),
    (["--arm", "x"], "--arm 'x' must look like NAME:KEY=VALUE"),
    (["--arm", "same:lr=x1"], "arm 'same' (lr=x1) resolves to the baseline's config at preset "
     "'tiny'"),
    (["--arm", "a:lr=x2", "--arm", "b:lr=0.006"], "arms 'a' (lr=x2) and 'b' (lr=0.006) resolve "
     "to the same config"),
    (["--arm", "wide:n_heads=5"], "arm 'wide' (n_heads=5) cannot be built at preset 'tiny': "
     "d_model=32 must be divisible by n_heads=5"),
    (["--arm", "huge:batch_size=x100"], "arm 'huge': one step is 12,800 tokens (batch_size=400 "
     "x seq_len=32), more than its budget of 3,840 tokens"),
    (["--arm", "long:max_steps=100"], "arm 'long': max_steps=100 has no effect with "
     "budget='iso_tokens'"),
    (["--arm", "x:lr=x2", "--ablations", "baseline", "y"], "unknown ablation 'y'"),
    (["--arms", "positonal"], "unknown question (name or .toml file) for --arms 'positonal'; "
     "did you mean 'positional'?"),
]


@pytest.mark.parametrize("argv, message", QUESTION_ERRORS)
def test_a_question_is_checked_before_any_compute(argv, message, corpus_dir, tmp_path, capsys,
                                                  monkeypatch):
    """Every bad arm, from a file or the command line: one line naming field, value and rule,
    exit 2, nothing written, no Ray started."""
    import tune_ablations.sweeps.sweep as sweep_module

    def no_ray(*a, **k):
        raise AssertionError("Ray started before the question was checked")

    monkeypatch.setattr(sweep_module, "init_ray", no_ray)
    code = grid.main(["--preset", "tiny", "--data", str(corpus_dir), "--set", "vocab_size=300",
                      "--storage", str(tmp_path / "out"), *argv])
    _clean(capsys, code, message)
    assert not (tmp_path / "out").exists()


def test_a_bad_question_file_and_an_arm_for_one_run(tmp_path, capsys):
    bad = tmp_path / "q.toml"
    bad.write_text('[baseline]\nlr = 1e-3\n[arms.a]\nlr = \n')
    _clean(capsys, grid.main(["--arms", str(bad), "--storage", str(tmp_path)]),
           "q.toml: TOML syntax error")
    bad.write_text('[baseline]\nablation = "high_lr"\n[arms.a]\nlr = "x2"\n')
    _clean(capsys, grid.main(["--arms", str(bad), "--storage", str(tmp_path)]),
           "unknown key in [baseline] 'ablation'")
    _clean(capsys, train.main(["--smoke-test", "--ablation", "mine"]),
           "unknown ablation 'mine'")
    assert train.main(["--smoke-test", "--arm", "mine:lr=x2", "--ablation", "mine", "--set",
                       "text_samples=0", "max_steps=6", "eval_every=3", "--out",
                       str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["config"]["lr"] == 0.006 and result["config"]["name"] == "mine"


def test_bad_toml_config(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[config]\nlr = \n")
    _clean(capsys, train.main(["--smoke-test", "--config", str(bad)]), "TOML syntax error")
    _clean(capsys, grid.main(["--config", str(bad), "--storage", str(tmp_path)]),
           "TOML syntax error")


def test_analysis_and_export_bad_paths(tmp_path, capsys):
    _clean(capsys, analysis.main([str(tmp_path / "none")]), "does not exist")
    (tmp_path / "exp").mkdir()
    f = tmp_path / "file.txt"
    f.write_text("x")
    _clean(capsys, analysis.main([str(tmp_path / "exp"), "--out", str(f)]), "is a file")
    _clean(capsys, export.main([str(tmp_path / "none"), "--out", str(tmp_path / "o")]),
           "does not exist")
    _clean(capsys, export.main([str(tmp_path / "exp"), "--out", str(tmp_path / "o")]),
           "has no completed trial")
    _clean(capsys, search.main(["--space", "nope", "--storage", str(tmp_path)]),
           "unknown search space")


def test_out_takes_a_folder_or_a_file(tmp_path, capsys):
    folder = tmp_path / "runs"
    folder.mkdir()
    assert train.main(["--smoke-test", "--set", "text_samples=0", "--out", str(folder)]) == 0
    assert json.loads((folder / "result.json").read_text())["status"] == "completed"
    assert train.main(["--smoke-test", "--set", "text_samples=0", "max_steps=10",
                       "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["steps"] == 10


COMMANDS = [train, grid, search, analysis, export, status, submit, cache]


@pytest.mark.parametrize("module", COMMANDS)
def test_every_option_has_help_with_its_default(module, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "Design choices" not in text  # help is for users, not design notes
    for action in module.parser()._actions:
        assert action.help, f"{module.__name__}: {action.option_strings or action.dest}"
        takes_value = action.option_strings and action.nargs != 0 and action.dest != "help"
        if takes_value:
            assert "default" in action.help, f"{module.__name__}: {action.option_strings}"


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_answers_version(module, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == "tune-ablations 0.1.0"


def test_help_says_what_the_defaults_are_and_that_storage_takes_uris(capsys):
    with pytest.raises(SystemExit):
        grid.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--seeds SEEDS", "(default: auto)", "--cpus-per-trial", "(default: 1.0)",
                   "--max-failures", "(default: 2)", "s3://bucket/path"):
        assert phrase in text, phrase


@pytest.mark.parametrize("module, extra", [(grid, []), (search, ["--space", "lr"])])
def test_json_means_only_json_on_stdout(module, extra, corpus_dir, tmp_path, capsys):
    args = ["--preset", "tiny", "--data", str(corpus_dir), "--set", "vocab_size=300",
            "--storage", str(tmp_path), "--dry-run", "--json", *extra]
    assert module.main(args) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    assert "event=" in out.err  # the logs are there, on stderr


def test_the_installed_command_dispatches(capsys):
    assert tool_main([]) == 0
    assert "grid" in capsys.readouterr().out
    assert tool_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "tune-ablations 0.1.0"
    assert tool_main(["nope"]) == 2
    out = subprocess.run([sys.executable, "-m", "tune_ablations", "train", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--tokens" in out.stdout


def test_service_and_cache_commands_bad_input(tmp_path, capsys):
    _clean(capsys, status.main(["nope", "--storage", str(tmp_path)]), "no sweep 'nope'")
    _clean(capsys, submit.main(["stop", "nope"]), "no submitted sweep named 'nope'")
    _clean(capsys, submit.main(["grid", "--set", "lr=-1", "--storage", str(tmp_path)]),
           "lr=-1 must be > 0")
    _clean(capsys, submit.main(["grid", "--job-address", "http://127.0.0.1:9", "--preset",
                                "tiny", "--storage", str(tmp_path)]), "no Ray job server there")
    _clean(capsys, cache.main(["verify", "nokey", "--cache-dir", str(tmp_path)]),
           "cache key 'nokey' is not in")


@pytest.mark.parametrize("module", [export, status, cache, submit])
def test_every_new_entry_point_has_a_smoke_test(module, capsys):
    assert module.main(["--smoke-test"]) == 0
    out = capsys.readouterr().out
    expect = {export: "identical_logits=True", status: "completed=4", cache: "bad=-",
              submit: "event=would_submit"}[module]
    assert expect in out


NOISE = ("Result logdir", "token authentication", "RAY_AUTH_MODE", "ExperimentalWarning",
         "A new study created", "Traceback", "driver_artifacts")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["grid", "search"])
def test_a_smoke_sweep_is_quiet_and_writes_only_to_a_temporary_folder(command, tmp_path):
    """What a user sees: no third-party noise, one results folder named, nothing in ./results,
    trial folders named by arm and seed, and run.json holding the user's command line."""
    r = subprocess.run([sys.executable, "-m", f"tune_ablations.{command}", "--smoke-test"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert not [n for n in NOISE if n in out], out[-3000:]
    named = [line.split(None, 1)[1] for line in r.stdout.splitlines()
             if line.startswith("results:")]
    assert len(named) == 1 and not (tmp_path / "results").exists(), out[-2000:]
    exp = Path(named[0])
    assert exp.is_dir() and not exp.is_relative_to(tmp_path)
    trials = sorted(p.name for p in exp.iterdir() if (p / "run.json").exists())
    assert trials and all(n.startswith(("baseline-s", "high_lr-s", "low_lr-s", "trial-"))
                          for n in trials), trials
    run = json.loads((exp / trials[0] / "run.json").read_text())
    assert run["argv"][:3] == ["python", "-m", f"tune_ablations.{command}"], run["argv"]


def test_resume_takes_a_redacted_url_again_and_asks_for_it():
    """sweep.json keeps `--study-storage` with its credentials redacted: the same URL given
    with --resume is accepted (and used), a missing one is asked for, another one refused."""
    from tune_ablations.spec.io import redact
    from tune_ablations.sweeps.options import (
        SearchOptions,
        SweepError,
        refuse_changes,
        with_secrets,
    )

    url = "postgresql+psycopg://user:pw@10.0.0.1:5432/optuna"
    stored = SearchOptions(space="lr", study_storage=redact(url))
    given = SearchOptions(space="lr", study_storage=url)
    refuse_changes(stored, given, {"study_storage"}, what="the search's settings")
    assert with_secrets(stored, given, {"study_storage"}).study_storage == url
    with pytest.raises(SweepError, match="redacted .* give --study-storage again"):
        with_secrets(stored, SearchOptions(space="lr"), set())
    other = SearchOptions(space="lr", study_storage=url.replace("10.0.0.1", "10.0.0.2"))
    with pytest.raises(SweepError, match="differs from the stored"):
        refuse_changes(stored, other, {"study_storage"}, what="the search's settings")
