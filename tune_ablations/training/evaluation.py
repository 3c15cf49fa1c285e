"""Evaluation: validation metrics with their standard error, and the unigram reference every
loss is read against. Never imports Ray.

Design choices:
- All metrics come from one log-softmax pass over fixed windows, with one device sync.
- `val_loss_se` is the standard error of the mean loss across windows by batch means of
  neighbouring windows (`noise.py`: windows of one document correlate, so the independent-
  windows error was 1.8-2.0x too small): the eval noise next to which differences between arms
  should be read.
- The unigram reference is token frequencies fit on the training split (add-half smoothing, so
  an unseen token has finite loss) and scored on the same target tokens: a model that does not
  beat it has learned nothing beyond frequencies. Bits per byte make it comparable across
  tokenizers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .noise import batch_means_se
from .runtime import autocast


def unigram_reference(train_tokens: np.ndarray, windows: torch.Tensor, token_bytes: np.ndarray,
                      vocab_size: int) -> dict[str, float]:
    """Cross-entropy (nats per token) and bits per byte of a unigram model of the training
    split, on the targets of `windows` (N, T + 1)."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64)
    logp = np.log(counts + 0.5) - np.log(counts.sum() + 0.5 * len(counts))
    targets = windows[:, 1:].numpy().ravel()
    nll = float(-logp[targets].sum())
    nbytes = float(token_bytes[targets].sum())
    return {"unigram_val_loss": nll / len(targets),
            "unigram_val_bpb": nll / math.log(2) / max(nbytes, 1.0)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: torch.Tensor, token_bytes: torch.Tensor,
             batch_size: int, device: torch.device, amp: torch.dtype | None) -> dict[str, float]:
    """Validation metrics over `windows` (N, T + 1): loss and its standard error across
    windows, perplexity, bits per byte, top-1 and top-5 accuracy, confidence (mean max
    probability) and entropy, in nats; and the mean loss of each window (`window_losses`), so
    two models scored on the same windows can be compared window by window."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    per_window = torch.zeros(len(windows), dtype=torch.float64, device=device)
    ctx = autocast(device, amp)
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size].to(device, non_blocking=True)
        x, y = w[:, :-1], w[:, 1:]
        with ctx:
            logits = model(x)
        logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        nll = -logp.gather(-1, y[..., None]).squeeze(-1)  # (B, T)
        top5 = logp.topk(5, dim=-1)  # (B, T, 5)
        hit5 = top5.indices == y[..., None]
        entropy = -(logp.exp() * logp).sum(-1)
        parts = (nll.sum(), hit5[..., 0].sum(), hit5.any(-1).sum(),
                 top5.values[..., 0].exp().sum(), entropy.sum(), token_bytes[y].sum())
        sums += torch.stack([t.double() for t in parts])
        per_window[i:i + len(w)] = nll.double().mean(-1)
    nll_sum, top1, top5_, conf, ent, nbytes = sums.tolist()  # the one device sync
    n = windows[:, 1:].numel()
    model.train(was_training)
    loss = nll_sum / n
    per_window_losses = per_window.tolist()
    return {"val_loss": loss, "val_loss_se": batch_means_se(per_window_losses),
            "val_ppl": math.exp(min(loss, 50.0)),
            "val_bpb": nll_sum / math.log(2) / max(nbytes, 1.0), "val_acc": top1 / n,
            "val_top5": top5_ / n, "val_confidence": conf / n, "val_entropy": ent / n,
            "window_losses": per_window_losses}
