"""Export in the Hugging Face ecosystem's own formats: a stock Llama for `ffn=swiglu`, a
self-contained remote-code model otherwise. Each is loaded by `AutoModelForCausalLM` in a
separate interpreter where `import tune_ablations` is impossible, under the transformers
installed here (5.x) and, where CI provides it, under the oldest supported one (4.44 with its
tokenizers 0.19: `.ci/transformers_4` sets TUNE_ABLATIONS_HF4_PYTHON); there it must give our
logits and our greedy tokens (with and without the key-value cache), equal tokens for a
left-padded batch and for each prompt alone, run in `pipeline("text-generation")`, and the
model card's own snippet must run as written (no trust-remote-code prompt)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tune_ablations.results.export import export, load_pretrained, locate_trial
from tune_ablations.spec.config import from_flat_dict
from tune_ablations.sweeps.smoke import smoke_experiment
from tune_ablations.training.data import legacy_merges
from tune_ablations.training.model import TransformerLM
from tune_ablations.training.step import load_checkpoint

HF4_ENV = "TUNE_ABLATIONS_HF4_PYTHON"
PROMPTS = ["def main(", "import os\nclass Parser:"]  # different lengths: the batch is padded
LOADER = r"""
import json, sys
sys.modules["tune_ablations"] = None  # loading must not need the project
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
path, ids, prompts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
remote = json.load(open(path + "/config.json"))["model_type"] not in ("llama", "mistral")
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=remote).float().eval()
tok = AutoTokenizer.from_pretrained(path)  # no trust_remote_code: tokenizer_config suffices
x = torch.tensor(ids)
with torch.no_grad():
    logits = model(x).logits
    tokens = model.generate(x, max_new_tokens=10)  # generation_config.json: greedy
    uncached = model.generate(x, max_new_tokens=10, use_cache=False)
    batch = tok(prompts, padding=True, return_tensors="pt")
    batched = model.generate(**batch, max_new_tokens=8)[:, batch["input_ids"].shape[1]:]
    alone, gap = [], 0.0
    for i, p in enumerate(prompts):
        one = tok([p], return_tensors="pt")
        alone.append(model.generate(**one, max_new_tokens=8)[0, one["input_ids"].shape[1]:])
        n = int(one["attention_mask"].sum())
        padded = model(**batch).logits[i, -n:]
        gap = max(gap, float((padded - model(**one).logits[0]).abs().max()))
text = pipeline("text-generation", model=model, tokenizer=tok)("def main(", max_new_tokens=5)
snippet = open(path + "/README.md").read().split("```python\n")[1].split("```")[0]
exec(snippet.replace('path = "', 'path = "' + path.rsplit("/", 1)[0] + "/"))
print(json.dumps({"logits": logits.tolist(), "tokens": tokens.tolist(),
                  "uncached": uncached.tolist(), "batched": batched.tolist(),
                  "alone": [a.tolist() for a in alone], "padded_gap": gap,
                  "text": text[0]["generated_text"], "class": type(model).__name__,
                  "eos": tok.eos_token_id,
                  "fast": isinstance(tok, transformers.PreTrainedTokenizerFast),
                  "transformers": transformers.__version__}))
"""

CASES = {"silu": ({}, "TuneAblationsForCausalLM"),
         "swiglu": ({"ffn": "swiglu"}, "LlamaForCausalLM"),
         "swiglu-no-rope": ({"ffn": "swiglu", "pos_encoding": "none"},
                            "TuneAblationsForCausalLM"),
         # muP's multipliers (x sqrt(16) in, x 1/2 out at d_model 32): folded or carried
         "swiglu-mup": ({"ffn": "swiglu", "parametrization": "mup", "mup_base_width": 16},
                        "LlamaForCausalLM"),
         "silu-mup": ({"parametrization": "mup", "mup_base_width": 16},
                      "TuneAblationsForCausalLM")}


EXTENDED = {"swiglu-mup", "silu-mup"}  # the fast check: test_parametrization's in-process load


@pytest.fixture(scope="module", params=[
    pytest.param(c, marks=pytest.mark.extended) if c in EXTENDED else c for c in sorted(CASES)])
def exported(request, tmp_path_factory, corpus_dir):
    overrides, cls = CASES[request.param]
    data = None
    if request.param == "silu":  # a local corpus: the card must not say where it lies
        overrides, data = {**overrides, "vocab_size": 300}, str(corpus_dir)
    root = tmp_path_factory.mktemp(request.param)
    exp_dir = smoke_experiment(root, overrides, data)
    exp, trial = locate_trial(exp_dir)
    cfg = from_flat_dict(exp.read_json(trial, "run.json")["config"])
    state = load_checkpoint(exp.fetch_checkpoint(trial))["model"]
    ours = TransformerLM(cfg.model, state["embed.weight"].shape[0])
    ours.load_state_dict(state)
    return export(exp_dir, root / "model"), ours.eval(), cls, exp_dir / trial


def _load_without_project(path: Path, ids: list[list[int]], python: str) -> dict:
    r = subprocess.run([python, "-c", LOADER, str(path), json.dumps(ids), json.dumps(PROMPTS)],
                       capture_output=True, text=True, cwd=path.parent, timeout=300,
                       stdin=subprocess.DEVNULL,  # a trust-remote-code prompt fails at once
                       env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                            "HOME": str(path.parent)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip(), r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[:tokens.index(eos) + 1] if eos in tokens else tokens


def _check_loaded(exported, python: str) -> dict:
    path, ours, cls, _ = exported
    ids = [[5, 17, 42, 7, 99, 3, 64, 12], [1, 2, 3, 4, 5, 6, 7, 8]]
    got = _load_without_project(path, ids, python)
    assert got["class"] == cls and got["fast"]
    with torch.no_grad():
        expected = ours(torch.tensor(ids))
    torch.testing.assert_close(torch.tensor(got["logits"]), expected, rtol=1e-5, atol=1e-5)
    greedy = ours.generate(torch.tensor(ids), 10, greedy=True).tolist()
    n = len(ids[0])
    for theirs, uncached, mine in zip(got["tokens"], got["uncached"], greedy):
        # transformers stops (pads) after EOS; the cache changes nothing
        assert _until_eos(theirs[n:], got["eos"]) == _until_eos(mine[n:], got["eos"])
        assert _until_eos(uncached[n:], got["eos"]) == _until_eos(mine[n:], got["eos"])
    assert got["padded_gap"] < 1e-4  # a left-padded row has the unpadded prompt's logits
    for batched, alone in zip(got["batched"], got["alone"]):
        assert _until_eos(batched, got["eos"]) == _until_eos(alone, got["eos"])
    assert got["text"].startswith("def main(")
    return got


def test_transformers_5_loads_it_without_the_project(exported):
    import transformers

    got = _check_loaded(exported, sys.executable)
    assert got["transformers"] == transformers.__version__


def test_transformers_4_44_loads_it_without_the_project(exported):
    """The oldest supported consumer: transformers 4.44 with tokenizers 0.19, in CI's own
    environment (`.ci/transformers_4`)."""
    python = os.environ.get(HF4_ENV)
    if not python:
        pytest.skip(f"{HF4_ENV} names no interpreter with transformers 4.44 (CI's "
                    "`.ci/transformers_4` builds one and sets it)")
    got = _check_loaded(exported, python)
    assert got["transformers"].startswith("4.44")


def test_folder_is_complete_and_reloads_into_our_model(exported):
    import transformers

    path, ours, cls, trial_dir = exported
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "README.md"} <= names
    assert ("modeling_tune_ablations.py" in names) == (cls != "LlamaForCausalLM")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [cls]
    assert config["transformers_version"] == transformers.__version__
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    merges = json.loads((path / "tokenizer.json").read_text())["model"]["merges"]
    assert merges and all(isinstance(m, str) and m.count(" ") == 1 for m in merges)
    assert json.loads((path / "generation_config.json").read_text())["do_sample"] is False
    card = (path / "README.md").read_text()
    outcome = json.loads((trial_dir / "outcome.json").read_text())
    assert f"{outcome['final']['val_loss']:.4f}" in card and cls in card
    assert f"| tokens trained | {outcome['tokens_seen']} |" in card
    x = torch.randint(0, ours.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(load_pretrained(path)(x), ours(x))


def test_the_card_is_the_hubs(exported):
    """License, model-index metrics in the Hub's form, trust_remote_code where the format needs
    it, and no local path anywhere in the folder's text."""
    path, _, cls, trial_dir = exported
    card = (path / "README.md").read_text()
    head = card.split("---")[1]
    assert re.search(r"^license: mit$", head, re.M)
    outcome = json.loads((trial_dir / "outcome.json").read_text())
    index = head[head.index("model-index:"):]
    for kind, key in (("loss", "val_loss"), ("perplexity", "val_ppl"),
                      ("bits_per_byte", "val_bpb")):
        assert f"- type: {kind}\n" in index
        assert f"value: {outcome['final'][key]:.4f}" in index
    assert "type: text-generation" in index and "split: validation" in index
    remote = cls != "LlamaForCausalLM"
    assert ("from_pretrained(path, trust_remote_code=True)" in card) == remote
    exp_root = str(trial_dir.parent)
    for name in ("README.md", "config.json", "tokenizer_config.json"):
        text = (path / name).read_text()
        assert exp_root not in text and str(Path.home()) + "/" not in text, name
        assert not re.search(r"/tmp/|/root/|/home/", text), name


def test_merges_in_the_form_every_tokenizers_reads():
    pairs = json.dumps({"model": {"type": "BPE", "merges": [["a", "b"], ["ab", "c"]]}})
    assert json.loads(legacy_merges(pairs))["model"]["merges"] == ["a b", "ab c"]
    spaced = json.dumps({"model": {"type": "BPE", "merges": [["a b", "c"]]}})
    assert legacy_merges(spaced) == spaced  # only the pair form can say it
    assert legacy_merges(json.dumps({"model": {"type": "WordPiece"}})) == \
        json.dumps({"model": {"type": "WordPiece"}})
