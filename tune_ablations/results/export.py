"""`python -m tune_ablations.export <experiment or trial> --out DIR`: a trained model as the
Hugging Face ecosystem's own format, from a local experiment or a URI.

Design choices:
- From an experiment, its best completed trial by the sweep's metric (`frames.best_completed`,
  the one definition); from a trial folder, that trial. The checkpoint is read with
  `torch.load(..., weights_only=True)`, fetched on demand from remote storage.
- The format is picked by `hf_formats`: a stock `LlamaForCausalLM` when one computes exactly
  what our model computes (`ffn=swiglu`), else a self-contained modeling file with `auto_map`.
  Both get `generation_config.json` (greedy, the tokenizer's end-of-text token) and a model card.
- The tokenizer is the one stored with the experiment (`tokenizers/<data key>/`), so export works
  from any machine; experiments made before tokenizers were stored fall back to the token cache.
- `load_pretrained(DIR)` rebuilds our `TransformerLM` from either format, weights identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..spec.config import from_flat_dict
from ..spec.io import write_atomic
from ..spec.names import OUTCOME_FILE, RUN_FILE, TOKENIZER_DIR, TOKENIZER_JSON
from . import hf_formats
from .experiment import Experiment, ExperimentError
from .frames import best_completed, load_results

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
GENERATION_FILE, CARD_FILE = "generation_config.json", "README.md"
EOS = "<|endoftext|>"


class ExportError(ValueError):
    """An experiment or trial that cannot be exported; the message says why."""


def locate_trial(source: str | Path) -> tuple[Experiment, str]:
    """(experiment, trial folder): `source` is a trial folder, or an experiment (its best
    completed trial)."""
    text = str(source)
    exp = Experiment(source)
    if exp.exists(RUN_FILE):  # a trial folder: its experiment is the parent
        parent = text.rstrip("/").rsplit("/", 1)[0]
        return Experiment(parent), exp.name
    try:
        df = load_results(exp)
    except FileNotFoundError as exc:
        raise ExportError(str(exc)) from None
    best = best_completed(df)
    if best is None:
        raise ExportError(f"{str(exp)!r} has no completed trial to export")
    return exp, str(best["folder"])


def tokenizer_json(exp: Experiment, run: dict, cache_dir: Path | None) -> str:
    """The trial's tokenizer: stored with the experiment, else from the token cache here."""
    key = (run.get("data") or {}).get("key")
    if key and exp.exists(TOKENIZER_DIR, str(key), TOKENIZER_JSON):
        return exp.read_text(TOKENIZER_DIR, str(key), TOKENIZER_JSON)
    from ..training.runtime import cache_root

    folder = (cache_dir or cache_root()) / str(key) / "tokenizer"
    if not key or not (folder / TOKENIZER_JSON).exists():
        raise ExportError(f"tokenizer of data key {key!r} is neither stored with the "
                          f"experiment nor in the token cache {cache_dir or cache_root()}")
    return (folder / TOKENIZER_JSON).read_text()


def export(source: str | Path, out: str | Path, *, cache_dir: Path | None = None) -> Path:
    """Write weights, config, generation config, tokenizer and a model card of the best (or
    given) trial into `out`."""
    from safetensors.torch import save_file

    from ..training.step import load_checkpoint

    exp, trial = locate_trial(source)
    run = exp.read_json(trial, RUN_FILE)
    try:
        state = load_checkpoint(exp.fetch_checkpoint(trial))["model"]
    except ExperimentError as exc:
        raise ExportError(str(exc)) from None
    cfg = from_flat_dict(run["config"])
    tok_text = tokenizer_json(exp, run, cache_dir)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    eos = _save_tokenizer(tok_text, out, cfg.data.seq_len)
    vocab = int(state["embed.weight"].shape[0])
    meta = {"config": run["config"], "ablation": run.get("ablation"), "seed": run.get("seed"),
            "trial": exp.path(trial), "experiment": str(exp), "spec": run.get("spec"),
            "reproduce": run.get("reproduce")}
    config = hf_formats.hf_config(cfg.model, vocab, cfg.data.seq_len, eos, meta)
    save_file(hf_formats.to_hf(state, cfg.model), str(out / WEIGHTS_FILE),
              metadata={"format": "pt"})
    write_atomic(out / CONFIG_FILE, json.dumps(config, indent=2))
    if config["model_type"] == hf_formats.REMOTE:
        hf_formats.write_remote_code(out)
    write_atomic(out / GENERATION_FILE, json.dumps(_generation_config(eos), indent=2))
    outcome = exp.read_json(trial, OUTCOME_FILE) or {}
    write_atomic(out / CARD_FILE, model_card(config, run, outcome, out.name))
    return out


def _save_tokenizer(text: str, out: Path, seq_len: int) -> int | None:
    """tokenizer.json plus transformers' tokenizer files; returns the end-of-text id (or None
    for a tokenizer without one)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    eos = Tokenizer.from_str(text).token_to_id(EOS)
    special = {"eos_token": EOS, "pad_token": EOS} if eos is not None else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text),
                                  model_max_length=seq_len, **special)
    tok.save_pretrained(str(out))
    return eos


def _generation_config(eos: int | None) -> dict[str, Any]:
    """Greedy by default (what `TransformerLM.generate(greedy=True)` computes); the trained
    context is the tokenizer's `model_max_length`."""
    return {"do_sample": False, "bos_token_id": eos,
            "eos_token_id": eos, "pad_token_id": eos}


def model_card(config: dict, run: dict, outcome: dict, name: str) -> str:
    """README.md: what the model is, what it was trained on, how well, where it came from."""
    meta, final = config["tune_ablations"], outcome.get("final") or {}
    data = run.get("data") or {}
    remote = config["model_type"] == hf_formats.REMOTE
    load = ("AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)" if remote
            else "AutoModelForCausalLM.from_pretrained(path)")
    rows = [("ablation", meta["ablation"]), ("seed", meta["seed"]),
            ("architecture", config["architectures"][0]),
            ("parameters (non-embedding)", outcome.get("non_embedding_params", "not recorded")),
            ("corpus", data.get("corpus", meta["config"].get("corpus"))),
            ("tokens trained", outcome.get("tokens_seen", "not recorded")),
            ("final validation loss (nats/token)", _num(final.get("val_loss"))),
            ("final validation bits per byte", _num(final.get("val_bpb"))),
            ("unigram reference loss", _num(outcome.get("unigram_val_loss"))),
            ("status", outcome.get("status", "not recorded")),
            ("trial", meta["trial"]), ("experiment", meta["experiment"])]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(meta["config"].items()))
    return "\n".join([
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags:",
        "- tune_ablations", "---", "", f"# {name}", "",
        "A small decoder-only Transformer trained by tune_ablations as one arm of a "
        "pretraining ablation. It is a research artifact for comparing training choices, "
        "not a general-purpose language model.", "",
        "| | |", "|---|---|", table, "",
        "## Load", "", "```python", "from transformers import AutoModelForCausalLM, "
        "AutoTokenizer", f"model = {load}", "tokenizer = AutoTokenizer.from_pretrained(path)",
        "```", "", "## Reproduce", "", f"`{meta.get('reproduce') or 'not recorded'}`", "",
        "## Training configuration", "", "| key | value |", "|---|---|", settings, ""])


def _num(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "not recorded"


def load_pretrained(path: str | Path, device: str = "cpu"):
    """Our TransformerLM from a folder `export` wrote (either format), in eval mode, with
    identical weights."""
    from safetensors.torch import load_file

    from ..training.model import TransformerLM

    path = Path(path).expanduser()
    config = json.loads((path / CONFIG_FILE).read_text())
    cfg = from_flat_dict(config["tune_ablations"]["config"])
    model = TransformerLM(cfg.model, config["vocab_size"])
    state = load_file(str(path / WEIGHTS_FILE), device="cpu")
    model.load_state_dict(hf_formats.to_ours(state, config["model_type"], cfg.model))
    return model.to(device).eval()
