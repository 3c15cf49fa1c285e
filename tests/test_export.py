"""Export in the Hugging Face ecosystem's own formats: a stock Llama for `ffn=swiglu`, a
self-contained remote-code model otherwise. Each is loaded by `AutoModelForCausalLM` in a
separate interpreter where `import tune_ablations` is impossible, and must give our logits and
our greedy tokens; a `pipeline("text-generation")` must run on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tune_ablations.results.export import export, load_pretrained, locate_trial
from tune_ablations.spec.config import from_flat_dict
from tune_ablations.sweeps.smoke import smoke_experiment
from tune_ablations.training.model import TransformerLM
from tune_ablations.training.step import load_checkpoint

LOADER = r"""
import json, sys
sys.modules["tune_ablations"] = None  # loading must not need the project
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
path, ids = sys.argv[1], json.loads(sys.argv[2])
remote = json.load(open(path + "/config.json"))["model_type"] != "llama"
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=remote).float().eval()
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
x = torch.tensor(ids)
with torch.no_grad():
    logits = model(x).logits
tokens = model.generate(x, max_new_tokens=10)  # generation_config.json: greedy
text = pipeline("text-generation", model=model, tokenizer=tok)("def main(", max_new_tokens=5)
print(json.dumps({"logits": logits.tolist(), "tokens": tokens.tolist(),
                  "text": text[0]["generated_text"], "class": type(model).__name__,
                  "eos": tok.eos_token_id}))
"""

CASES = {"silu": ({}, "TuneAblationsForCausalLM"),
         "swiglu": ({"ffn": "swiglu"}, "LlamaForCausalLM"),
         "swiglu-no-rope": ({"ffn": "swiglu", "pos_encoding": "none"},
                            "TuneAblationsForCausalLM")}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    overrides, cls = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    exp_dir = smoke_experiment(root, overrides)
    exp, trial = locate_trial(exp_dir)
    cfg = from_flat_dict(exp.read_json(trial, "run.json")["config"])
    state = load_checkpoint(exp.fetch_checkpoint(trial))["model"]
    ours = TransformerLM(cfg.model, state["embed.weight"].shape[0])
    ours.load_state_dict(state)
    return export(exp_dir, root / "model"), ours.eval(), cls


def _load_without_project(path: Path, ids: list[list[int]]) -> dict:
    r = subprocess.run([sys.executable, "-c", LOADER, str(path), json.dumps(ids)],
                       capture_output=True, text=True, cwd=path.parent,
                       env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip(), r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_transformers_loads_it_without_the_project(exported):
    path, ours, cls = exported
    ids = [[5, 17, 42, 7, 99, 3, 64, 12], [1, 2, 3, 4, 5, 6, 7, 8]]
    got = _load_without_project(path, ids)
    assert got["class"] == cls
    with torch.no_grad():
        expected = ours(torch.tensor(ids))
    torch.testing.assert_close(torch.tensor(got["logits"]), expected, rtol=1e-5, atol=1e-5)
    greedy = ours.generate(torch.tensor(ids), 10, greedy=True).tolist()
    for theirs, mine in zip(got["tokens"], greedy):  # transformers stops (pads) after EOS
        stop = next((i + 1 for i, t in enumerate(mine[len(ids[0]):], len(ids[0]))
                     if t == got["eos"]), len(mine))
        assert theirs[:stop] == mine[:stop]
    assert got["text"].startswith("def main(")


def test_folder_is_complete_and_reloads_into_our_model(exported):
    path, ours, cls = exported
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= names
    assert ("modeling_tune_ablations.py" in names) == (cls != "LlamaForCausalLM")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [cls]
    assert json.loads((path / "generation_config.json").read_text())["do_sample"] is False
    card = (path / "README.md").read_text()
    outcome = json.loads(Path(config["tune_ablations"]["trial"], "outcome.json").read_text())
    assert f"{outcome['final']['val_loss']:.4f}" in card and cls in card
    assert f"| tokens trained | {outcome['tokens_seen']} |" in card
    x = torch.randint(0, ours.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(load_pretrained(path)(x), ours(x))
