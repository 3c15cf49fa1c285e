"""`python -m tune_ablations.export <experiment or trial> --out DIR`: a trained model as a folder
of safetensors weights, its config and its tokenizer; `load_pretrained(DIR)` reloads it.

Design choices:
- From an experiment, the best completed trial by the sweep's metric; from a trial folder, that
  trial. Its latest checkpoint is read with `torch.load(..., weights_only=True)`.
- `model.safetensors` holds the weights (the output projection is tied to the embedding, which
  is stored once); `config.json` holds the resolved config and vocabulary size;
  the tokenizer is saved with a pad token and the `model_max_length` the model was trained at,
  so `AutoTokenizer.from_pretrained(DIR)` loads it (transformers 4.x and 5.x).
- No transformers model class matches exactly: `ffn=swiglu` with RoPE and RMSNorm is
  Llama-shaped, but this model scales the embedding by sqrt(d_model) and uses no biases in the
  same places; see README ("Export") for what a Llama conversion would take.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..spec.config import from_flat_dict
from ..spec.names import RUN_FILE, TOKENIZER_DIR
from .experiment import Experiment, ExperimentError
from .frames import best_completed, load_results

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


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
    stored = exp.read_json(TOKENIZER_DIR, str(key), "tokenizer.json")
    if stored is not None:
        import json

        return json.dumps(stored)
    from ..training.runtime import cache_root

    folder = (cache_dir or cache_root()) / str(key) / "tokenizer"
    if not key or not (folder / "tokenizer.json").exists():
        raise ExportError(f"tokenizer of data key {key!r} is neither stored with the "
                          f"experiment nor in the token cache {cache_dir or cache_root()}")
    return (folder / "tokenizer.json").read_text()


def export(source: str | Path, out: str | Path, *, cache_dir: Path | None = None) -> Path:
    """Write weights, config and tokenizer of the best (or given) trial into `out`."""
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast

    from ..training.step import load_checkpoint

    exp, trial = locate_trial(source)
    run = exp.read_json(trial, RUN_FILE)
    try:
        state = load_checkpoint(exp.fetch_checkpoint(trial))["model"]
    except ExperimentError as exc:
        raise ExportError(str(exc)) from None
    state = {k: v.contiguous() for k, v in state.items()}
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    vocab = int(state["embed.weight"].shape[0])
    cfg = run["config"]
    (out / CONFIG_FILE).write_text(json.dumps({
        "model_type": "tune_ablations", "vocab_size": vocab, "config": cfg,
        "trial": exp.path(trial), "ablation": run.get("ablation"), "seed": run.get("seed")},
        indent=2))
    tok_file = out / "tokenizer.json"
    tok_file.write_text(tokenizer_json(exp, run, cache_dir))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_file),
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  model_max_length=int(cfg["seq_len"]))
    tok.save_pretrained(str(out))
    return out


def load_pretrained(path: str | Path, device: str = "cpu"):
    """The model saved by `export`, in eval mode, with identical weights."""
    from safetensors.torch import load_file

    from ..training.model import TransformerLM

    path = Path(path).expanduser()
    meta = json.loads((path / CONFIG_FILE).read_text())
    cfg = from_flat_dict(meta["config"])
    model = TransformerLM(cfg.model, meta["vocab_size"])
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE), device="cpu"))
    return model.to(device).eval()
