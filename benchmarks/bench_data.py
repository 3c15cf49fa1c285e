"""Data preparation: first load (read, split, train BPE, tokenize, cache) against a cache hit,
for the embedded corpus and a ~50 MB local text corpus generated here.

    python benchmarks/bench_data.py [--mb 50] [--reps 3]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median  # noqa: E402

from tune_ablations.spec.config import DataConfig  # noqa: E402
from tune_ablations.training.data import prepare_data  # noqa: E402


def make_text_corpus(folder: Path, mb: int) -> Path:
    """~mb MB of .txt documents from the embedded prose, shuffled word order per document."""
    from tune_ablations.training.corpus import load_pydoc_documents

    rng = random.Random(0)
    words = " ".join(load_pydoc_documents()).split()
    folder.mkdir(parents=True, exist_ok=True)
    size, i = 0, 0
    while size < mb * 1_000_000:
        n = rng.randint(200, 2000)
        start = rng.randrange(0, len(words) - n)
        doc = words[start:start + n]
        rng.shuffle(doc)  # overlapping windows would share passages and form one split group
        text = " ".join(doc)
        (folder / f"{i:06d}.txt").write_text(text)
        size += len(text)
        i += 1
    return folder


def measure(cfg: DataConfig, reps: int) -> None:
    firsts, hits = [], []
    for _ in range(reps):
        cache = Path(tempfile.mkdtemp(prefix="bench-cache-"))
        t0 = time.perf_counter()
        d = prepare_data(cfg, cache, log=lambda s: None)
        firsts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        prepare_data(cfg, cache, log=lambda s: None)
        hits.append(time.perf_counter() - t0)
        shutil.rmtree(cache)
    print(f"corpus={Path(cfg.corpus).name} train_tokens={d.manifest['train_tokens']} "
          f"first_s={median(firsts):.2f} hit_s={median(hits):.4f} "
          f"speedup={median(firsts) / median(hits):.0f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print(f"machine {machine()}")
    measure(DataConfig(corpus="embedded", vocab_size=2048), args.reps)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_text_corpus(Path(tmp) / "local", args.mb)
        measure(DataConfig(corpus=str(folder), vocab_size=2048), max(1, args.reps - 2))


if __name__ == "__main__":
    main()
