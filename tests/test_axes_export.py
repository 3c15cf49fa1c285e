"""Every architecture axis exports: the stock class where one matches (Llama with key-value
heads, Mistral with a sliding window), else the remote-code model generated from
training/model.py's source; either gives our logits, in this process and in one that cannot
import the project."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tune_ablations.results import hf_formats
from tune_ablations.results.export import load_pretrained, write_model
from tune_ablations.spec.config import RunConfig, to_flat_dict, with_overrides
from tune_ablations.training.model import TransformerLM

BASE = {"d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 48, "max_seq_len": 64}
AXES = {  # overrides -> the format written
    "silu": ({}, "tune_ablations"),
    "gelu": ({"ffn": "gelu"}, "tune_ablations"),
    "relu2": ({"ffn": "relu2"}, "tune_ablations"),
    "geglu": ({"ffn": "geglu"}, "tune_ablations"),
    "layernorm": ({"norm": "layernorm", "ffn": "swiglu"}, "tune_ablations"),
    "qk_norm": ({"qk_norm": True, "ffn": "swiglu"}, "tune_ablations"),
    "window": ({"sliding_window": 4}, "tune_ablations"),
    "moe": ({"n_experts": 4, "experts_per_token": 2}, "tune_ablations"),
    "moe_top1_gqa": ({"n_experts": 3, "n_kv_heads": 2, "ffn": "swiglu"}, "tune_ablations"),
    "untied": ({"tie_embeddings": False}, "tune_ablations"),
    "llama": ({"ffn": "swiglu"}, "llama"),
    "llama_gqa_untied": ({"ffn": "swiglu", "n_kv_heads": 2, "tie_embeddings": False,
                          "z_loss": 1e-4}, "llama"),
    "mistral_window": ({"ffn": "swiglu", "sliding_window": 4, "n_kv_heads": 1}, "mistral"),
}
VOCAB = 61
IDS = [[5, 17, 42, 7, 59, 3, 44, 12, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]


def _ours(overrides: dict) -> tuple[RunConfig, TransformerLM]:
    cfg = with_overrides(RunConfig(), {**BASE, **overrides, "seq_len": 32})
    torch.manual_seed(0)
    model = TransformerLM(cfg.model, VOCAB)
    with torch.no_grad():  # gains away from 1 (and biases from 0): a mapping error shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return cfg, model.eval()


def _export(name: str, root: Path) -> tuple[Path, TransformerLM]:
    overrides, _ = AXES[name]
    cfg, model = _ours(overrides)
    out = root / name
    out.mkdir()
    write_model(out, model.state_dict(), cfg.model, VOCAB, cfg.data.seq_len, None,
                {"config": to_flat_dict(cfg)})
    return out, model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("axes")
    return {name: _export(name, root) for name in AXES}


@pytest.mark.parametrize("name", list(AXES))
def test_each_axis_picks_its_format_and_reloads_into_our_model(name, folders):
    path, ours = folders[name]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == AXES[name][1]
    assert (path / hf_formats.REMOTE_CODE_FILE).exists() == (AXES[name][1] == "tune_ablations")
    back = load_pretrained(path)
    x = torch.tensor(IDS)
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x), rtol=1e-5, atol=1e-5)


def _generated_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"gen_{path.name}",
                                                  path / hf_formats.REMOTE_CODE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", [n for n, (_, kind) in AXES.items() if kind != "llama"
                                  and kind != "mistral"])
def test_the_generated_modeling_file_computes_our_model(name, folders):
    """The exported file is training/model.py's own source: its model, loaded with the
    exported weights, gives our logits, also for a left-padded row and with a cache."""
    from safetensors.torch import load_file

    path, ours = folders[name]
    gen = _generated_module(path)
    config = json.loads((path / "config.json").read_text())
    hf = gen.TuneAblationsForCausalLM(gen.TuneAblationsConfig(**config)).eval()
    hf.load_state_dict(load_file(str(path / "model.safetensors")))
    x = torch.tensor(IDS)
    with torch.no_grad():
        want = ours(x)
        torch.testing.assert_close(hf(x, use_cache=False).logits, want, rtol=1e-5, atol=1e-5)
        pad = torch.cat([torch.zeros(1, 3, dtype=torch.long), x[:1]], dim=1)  # left-padded
        mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 10,
                                                                          dtype=torch.long)], 1)
        torch.testing.assert_close(hf(pad, attention_mask=mask).logits[:, 3:], want[:1],
                                   rtol=1e-5, atol=1e-5)
        first = hf(x[:, :6], use_cache=True)  # then one token at a time from the cache
        cache, steps = first.past_key_values, []
        for t in range(6, 10):
            out = hf(x[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits[:, 0])
        torch.testing.assert_close(torch.stack(steps, 1), want[:, 6:], rtol=1e-4, atol=1e-4)


def test_the_generated_file_is_the_model_source():
    from tune_ablations.training import model

    text = hf_formats.remote_code()
    body = Path(model.__file__).read_text().split("import torch.nn.functional as F\n", 1)[1]
    body = body.replace(hf_formats.TYPE_ONLY_IMPORT, "")
    assert body.split("\n\n\n", 1)[1] in text  # every definition after the imports, verbatim
    assert "from .." not in text and "import tune_ablations" not in text


LOADER = r"""
import json, sys
sys.modules["tune_ablations"] = None  # loading must not need the project
import torch
from transformers import AutoModelForCausalLM
ids = json.loads(sys.argv[1])
out = {}
for path in sys.argv[2:]:
    kind = json.load(open(path + "/config.json"))["model_type"]
    model = AutoModelForCausalLM.from_pretrained(
        path, trust_remote_code=kind == "tune_ablations").float().eval()
    with torch.no_grad():
        x = torch.tensor(ids)
        out[path] = {"logits": model(x).logits.tolist(), "class": type(model).__name__,
                     "tokens": model.generate(x, max_new_tokens=6, do_sample=False).tolist(),
                     "uncached": model.generate(x, max_new_tokens=6, do_sample=False,
                                                use_cache=False).tolist()}
print(json.dumps(out))
"""


@pytest.mark.extended
@pytest.mark.parametrize("consumer", ["installed", "transformers_4_44"])
def test_every_axis_loads_without_the_project(folders, consumer):
    """Under the transformers installed here (5.x) and, where CI provides it
    (`.ci/transformers_4`), the oldest supported one."""
    python = sys.executable
    if consumer == "transformers_4_44":
        python = os.environ.get("TUNE_ABLATIONS_HF4_PYTHON", "")
        if not python:
            pytest.skip("TUNE_ABLATIONS_HF4_PYTHON names no interpreter with transformers 4.44")
    paths = [str(folders[name][0]) for name in AXES]
    r = subprocess.run([python, "-c", LOADER, json.dumps(IDS), *paths],
                       capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                       cwd=str(Path(paths[0]).parent),
                       env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                            "HOME": str(Path(paths[0]).parent)})
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    classes = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
               "tune_ablations": "TuneAblationsForCausalLM"}
    for name, (_, kind) in AXES.items():
        path, ours = folders[name]
        theirs = got[str(path)]
        assert theirs["class"] == classes[kind], name
        x = torch.tensor(IDS)
        with torch.no_grad():
            torch.testing.assert_close(torch.tensor(theirs["logits"]), ours(x), rtol=1e-5,
                                       atol=1e-5, msg=name)
        greedy = ours.generate(x, 6, greedy=True).tolist()
        assert theirs["tokens"] == greedy and theirs["uncached"] == greedy, name
