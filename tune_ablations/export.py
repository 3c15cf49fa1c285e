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
from typing import Any

from .config import METRIC, MODE, RUN_FILE, with_overrides
from .resolve import resolve

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


class ExportError(ValueError):
    """An experiment or trial that cannot be exported; the message says why."""


def best_trial(path: Path) -> Path:
    """`path` itself if it is a trial folder, else the experiment's best completed trial."""
    if (path / RUN_FILE).exists():
        return path
    from .results import load_results

    try:
        df = load_results(path)
    except FileNotFoundError as exc:
        raise ExportError(str(exc)) from None
    done = df[df["status"].astype(str) == "completed"].dropna(subset=[METRIC]) \
        if len(df) else df
    if done.empty:
        raise ExportError(f"{str(path)!r} has no completed trial to export")
    return Path(done.sort_values(METRIC, ascending=MODE == "min").iloc[0]["path"])


def latest_checkpoint(trial: Path) -> Path:
    found = sorted(trial.glob("checkpoint_*/checkpoint.pt"))
    if not found:
        raise ExportError(f"trial {str(trial)!r} has no checkpoint (checkpoint_*/checkpoint.pt)")
    return found[-1].parent


def _tokenizer_dir(run: dict[str, Any], cache_dir: Path | None) -> Path:
    from .data import cache_root

    key = (run.get("data") or {}).get("key")
    folder = (cache_dir or cache_root()) / str(key) / "tokenizer"
    if not key or not (folder / "tokenizer.json").exists():
        raise ExportError(f"tokenizer of data key {key!r} not found under "
                          f"{cache_dir or cache_root()}; pass --cache-dir")
    return folder


def export(source: str | Path, out: str | Path, *, cache_dir: Path | None = None) -> Path:
    """Write weights, config and tokenizer of the best (or given) trial into `out`."""
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast

    from .step import load_checkpoint

    trial = best_trial(Path(source).expanduser())
    run = json.loads((trial / RUN_FILE).read_text())
    state = load_checkpoint(latest_checkpoint(trial))["model"]
    state = {k: v.contiguous() for k, v in state.items()}
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    tok_dir = _tokenizer_dir(run, cache_dir)
    vocab = int(state["embed.weight"].shape[0])
    cfg = run["config"]
    (out / CONFIG_FILE).write_text(json.dumps({
        "model_type": "tune_ablations", "vocab_size": vocab, "config": cfg,
        "trial": str(trial), "ablation": run.get("ablation"), "seed": run.get("seed")},
        indent=2))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"),
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  model_max_length=int(cfg["seq_len"]))
    tok.save_pretrained(str(out))
    return out


def load_pretrained(path: str | Path, device: str = "cpu"):
    """The model saved by `export`, in eval mode, with identical weights."""
    from safetensors.torch import load_file

    from .model import TransformerLM

    path = Path(path).expanduser()
    meta = json.loads((path / CONFIG_FILE).read_text())
    cfg = with_overrides(resolve({"preset": "tiny"}), meta["config"])
    model = TransformerLM(cfg.model, meta["vocab_size"])
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE), device="cpu"))
    return model.to(device).eval()


def parser():
    from .cli import build_parser

    ap = build_parser("export", "Export a trained model (safetensors, config, tokenizer).")
    ap.add_argument("source", nargs="?",
                    help="experiment folder (its best completed trial) or a trial")
    ap.add_argument("--out", help="output folder (required unless --smoke-test)")
    ap.add_argument("--smoke-test", action="store_true", help="export a tiny real run (trained "
                    "here, seconds) and check that the reloaded model gives identical logits")
    ap.add_argument("--cache-dir", help="token cache holding the tokenizer (default "
                    "$TUNE_ABLATIONS_CACHE or ~/.cache/tune_ablations)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from .cli import fail

    args = parser().parse_args(argv)
    if args.smoke_test:
        return _smoke(args.out)
    if not args.source or not args.out:
        return fail("export needs an experiment or trial folder and --out (or --smoke-test)")
    try:
        out = export(args.source, args.out,
                     cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    except ValueError as exc:
        return fail(exc)
    print(f"event=exported path={out}")
    return 0


def _smoke(out: str | None) -> int:
    import tempfile

    import torch

    from .analysis import smoke_experiment
    from .model import TransformerLM
    from .step import load_checkpoint

    root = Path(tempfile.mkdtemp(prefix="ta-export-"))
    exp = smoke_experiment(root)
    target = export(exp, out or root / "model")
    trial = best_trial(exp)
    cfg = resolve(json.loads((trial / RUN_FILE).read_text())["config"])
    model = load_pretrained(target)
    ref = TransformerLM(cfg.model, model.vocab_size).eval()
    ref.load_state_dict(load_checkpoint(latest_checkpoint(trial))["model"])
    x = torch.randint(0, model.vocab_size, (2, 16))
    with torch.no_grad():
        same = torch.equal(model(x), ref(x))
    print(f"event=exported path={target} identical_logits={same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
