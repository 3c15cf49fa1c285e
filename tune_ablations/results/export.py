"""`python -m tune_ablations.export <experiment or trial> --out DIR`: a trained model as the
Hugging Face ecosystem's own format, from a local experiment or a URI.

Design choices:
- From an experiment, its best completed trial by the sweep's metric (`frames.best_completed`,
  the one definition); from a trial folder, that trial. The checkpoint is read with
  `torch.load(..., weights_only=True)`, fetched on demand from remote storage.
- The format is picked by `hf_formats`: a stock `LlamaForCausalLM` (or Mistral, with a sliding
  window) when one computes exactly what our model computes, else a self-contained modeling
  file generated from training/model.py, with `auto_map`.
  Both get `generation_config.json` (greedy, the tokenizer's end-of-text token) and a model card.
- The tokenizer is the one stored with the experiment (`tokenizers/<data key>/`), so export works
  from any machine; experiments made before tokenizers were stored fall back to the token cache.
- Every supported consumer loads the folder: the tokenizer files are written here, not by the
  installed transformers (5.x writes `"tokenizer_class": "TokenizersBackend"`, unknown to 4.x),
  as `PreTrainedTokenizerFast` with BPE merges in the "a b" form that tokenizers 0.19 (the one
  transformers 4.44 uses) reads; tokenizers 0.20+ writes pairs, which 0.19 rejects.
  `config.json` records the transformers version that wrote it.
- The model card is the Hub's: a license, `model-index` metrics (validation loss, perplexity,
  bits per byte), the loading snippet with `trust_remote_code=True` where the format needs it,
  and no local paths (a local corpus, experiment or trial is named, not located).
- `load_pretrained(DIR)` rebuilds our `TransformerLM` from either format, weights identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..spec.config import from_flat_dict
from ..spec.io import write_atomic
from ..spec.names import OUTCOME_FILE, RUN_FILE, TOKENIZER_DIR, TOKENIZER_JSON
from ..training.data import EOS, legacy_merges, load_tokenizer
from . import hf_formats
from .experiment import Experiment, ExperimentError
from .frames import best_completed, load_results

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
GENERATION_FILE, CARD_FILE = "generation_config.json", "README.md"
TOKENIZER_FILE, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
DEFAULT_LICENSE = "mit"


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


def export(source: str | Path, out: str | Path, *, cache_dir: Path | None = None,
           license: str = DEFAULT_LICENSE) -> Path:
    """Write weights, config, generation config, tokenizer and a model card of the best (or
    given) trial into `out`."""
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
    hide = _local_paths(exp, run)
    meta = json.loads(_unlocate(json.dumps({
        "config": run["config"], "ablation": run.get("ablation"), "seed": run.get("seed"),
        "trial": trial, "experiment": str(exp) if exp.remote else exp.name,
        "spec": run.get("spec"), "reproduce": run.get("reproduce")}), hide))
    config = write_model(out, state, cfg.model, vocab, cfg.data.seq_len, eos, meta)
    write_atomic(out / GENERATION_FILE, json.dumps(_generation_config(eos), indent=2))
    outcome = exp.read_json(trial, OUTCOME_FILE) or {}
    card = model_card(config, run, outcome, out.name, license=license)
    write_atomic(out / CARD_FILE, _unlocate(card, hide))
    return out


def write_model(out: Path, state: dict, m, vocab: int, seq_len: int, eos: int | None,
                meta: dict[str, Any]) -> dict[str, Any]:
    """Weights, config.json and (remote-code format) the modeling file of our model's `state`
    (config `m`) in `out`; returns the config written."""
    import transformers
    from safetensors.torch import save_file

    config = hf_formats.hf_config(m, vocab, seq_len, eos, meta)
    config["transformers_version"] = transformers.__version__
    save_file(hf_formats.to_hf(state, m), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    write_atomic(out / CONFIG_FILE, json.dumps(config, indent=2))
    if config["model_type"] == hf_formats.REMOTE:
        hf_formats.write_remote_code(out)
    return config


def _local_paths(exp: Experiment, run: dict) -> dict[str, str]:
    """Local paths that the export names but must not publish -> what it says instead."""
    from ..spec.config import is_local_path

    hide: dict[str, str] = {}
    corpus = str((run.get("config") or {}).get("corpus", ""))
    if corpus and is_local_path(corpus):
        hide[corpus] = f"<local corpus {Path(corpus).name}>"
        hide[str(Path(corpus).expanduser().resolve())] = hide[corpus]
    if not exp.remote:
        hide[exp.root] = f"<experiment {exp.name}>"
    hide[str(Path.home())] = "~"
    return hide


def _unlocate(text: str, hide: dict[str, str]) -> str:
    for path in sorted(hide, key=len, reverse=True):  # the longest (most specific) first
        text = text.replace(path, hide[path])
    return text


def _save_tokenizer(text: str, out: Path, seq_len: int) -> int | None:
    """tokenizer.json and the tokenizer config that transformers 4.x and 5.x both load
    (`PreTrainedTokenizerFast`); returns the end-of-text id (or None without one)."""
    eos = load_tokenizer(text).token_to_id(EOS)
    special = {"eos_token": EOS, "pad_token": EOS} if eos is not None else {}
    write_atomic(out / TOKENIZER_FILE, legacy_merges(text))
    write_atomic(out / TOKENIZER_CONFIG, json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": seq_len,
        "clean_up_tokenization_spaces": False, "padding_side": "left", **special,
        # 4.x's PreTrainedTokenizerFast would add token_type_ids, which generate() rejects
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": {str(eos): {
            "content": EOS, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}} if eos is not None else {}}, indent=2))
    write_atomic(out / SPECIAL_TOKENS_FILE, json.dumps(special, indent=2))
    return eos


def _generation_config(eos: int | None) -> dict[str, Any]:
    """Greedy by default (what `TransformerLM.generate(greedy=True)` computes); the trained
    context is the tokenizer's `model_max_length`."""
    return {"do_sample": False, "bos_token_id": eos,
            "eos_token_id": eos, "pad_token_id": eos}


def model_card(config: dict, run: dict, outcome: dict, name: str, *,
               license: str = DEFAULT_LICENSE) -> str:
    """README.md: what the model is, what it was trained on, how well, where it came from, in
    the Hub's card format (YAML metadata with a license and model-index metrics)."""
    meta, final = config["tune_ablations"], outcome.get("final") or {}
    data = run.get("data") or {}
    corpus = str(data.get("corpus", meta["config"].get("corpus")))
    remote = config["model_type"] == hf_formats.REMOTE
    trust = ", trust_remote_code=True" if remote else ""
    rows = [("ablation", meta["ablation"]), ("seed", meta["seed"]),
            ("architecture", config["architectures"][0]),
            ("parameters (non-embedding)", outcome.get("non_embedding_params", "not recorded")),
            ("corpus", corpus), ("tokens trained", outcome.get("tokens_seen", "not recorded")),
            ("final validation loss (nats/token)", _num(final.get("val_loss"))),
            ("final validation bits per byte", _num(final.get("val_bpb"))),
            ("unigram reference loss", _num(outcome.get("unigram_val_loss"))),
            ("status", outcome.get("status", "not recorded")),
            ("trial", meta["trial"]), ("experiment", meta["experiment"]),
            ("written by", f"transformers {config.get('transformers_version', '?')}")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(meta["config"].items()))
    return "\n".join([
        "---", f"license: {license}", "library_name: transformers",
        "pipeline_tag: text-generation", "tags:", "- tune_ablations",
        *_model_index(name, corpus, final), "---", "", f"# {name}", "",
        "A small decoder-only Transformer trained by tune_ablations as one arm of a "
        "pretraining ablation. It is a research artifact for comparing training choices, "
        "not a general-purpose language model. The training data's own terms apply.", "",
        "| | |", "|---|---|", table, "",
        "## Load", "", "```python", "from transformers import AutoModelForCausalLM, "
        "AutoTokenizer", "", f'path = "{name}"  # this folder, or its Hub repository id',
        f"model = AutoModelForCausalLM.from_pretrained(path{trust})",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        'ids = tokenizer(["def main("], return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**ids, max_new_tokens=20)[0]))", "```", "",
        *([f"`trust_remote_code=True` runs `{hf_formats.REMOTE_CODE_FILE}` from this folder "
           "(no stock transformers class computes this architecture); read it first.", ""]
          if remote else []),
        "## Reproduce", "", f"`{meta.get('reproduce') or 'not recorded'}`", "",
        "## Training configuration", "", "| key | value |", "|---|---|", settings, ""])


def _model_index(name: str, corpus: str, final: dict) -> list[str]:
    """The card's `model-index` (the Hub's evaluation results): validation loss, perplexity
    and bits per byte on the corpus's held-out split, where recorded."""
    metrics = [(k, label, final.get(key)) for k, label, key in (
        ("loss", "Validation loss (nats/token)", "val_loss"),
        ("perplexity", "Validation perplexity", "val_ppl"),
        ("bits_per_byte", "Validation bits per byte", "val_bpb"))
        if isinstance(final.get(key), (int, float))]
    if not metrics:
        return []
    lines = ["model-index:", f"- name: {json.dumps(name)}", "  results:", "  - task:",
             "      type: text-generation", "      name: Text Generation", "    dataset:",
             f"      name: {json.dumps(corpus + ' (held-out validation documents)')}",
             f"      type: {json.dumps(corpus)}", "      split: validation", "    metrics:"]
    for kind, label, value in metrics:
        lines += [f"    - type: {kind}", f"      name: {label}", f"      value: {value:.4f}"]
    return lines


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
