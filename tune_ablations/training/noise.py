"""Standard errors of a mean over evaluation windows, which are correlated: windows are taken in
order along the validation split, so neighbours often come from the same document (lag-1
correlation 0.23 at seq_len 128 and 0.28 at 64 on the embedded corpus, benchmarks/RESULTS.md
section 14). Treating them as independent understated the error by 1.8-2.0x there.

Design choice: non-overlapping batch means (Law and Kelton; Flegal and Jones 2010) with batches
of about sqrt(N) contiguous windows: the batch means are nearly independent, so their spread
estimates the error of the overall mean without modelling the correlation. No torch here, so
the results layer reads it without importing the trainer.
"""

from __future__ import annotations

import math

import numpy as np


def batch_means_se(x) -> float:
    """Standard error of the mean of the sequence `x` (in window order) by non-overlapping batch
    means of about sqrt(N) windows; with fewer than 4 windows, the independent-windows error
    (NaN for one)."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < 4:
        return float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    b = max(1, round(math.sqrt(n)))
    k = n // b
    means = x[:k * b].reshape(k, b).mean(axis=1)
    return float(means.std(ddof=1) / math.sqrt(k))
