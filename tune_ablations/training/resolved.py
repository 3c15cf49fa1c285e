"""Run specs resolved with their data: the one place that resolves a spec, prepares the corpora
it reads (once each) and resolves it again with the tokenizer's real vocabulary, so that
iso-FLOP budgets count the model that will be built.

Every caller goes through a `Resolver`: `train`, a sweep's plan, its data preparation and
dry run, each Ray trial, and the smoke experiment.

Design choices:
- Data is prepared at most once per resolver and corpus (`data_id`): a grid of six arms on one
  corpus tokenizes it once, then every arm resolves against its real vocabulary.
- `datasets`: data already prepared elsewhere (a trial gets the driver's through Ray's object
  store); `memo`: where newly prepared data is kept (a Ray worker keeps one across the trials
  it runs); `fetch`: a last source before preparing (a resumed sweep's stored token data of a
  corpus file this machine lacks).
- `prepare=False` resolves with the config's `vocab_size` standing in and prepares nothing: only
  for checking a sweep's settings on a machine that will not run it (`submit`, whose job
  prepares the data on the cluster), never for a budget that is trained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..spec.config import DataConfig, RunConfig, check_paths
from ..spec.resolve import resolve
from ..spec.runspec import RunSpec
from .data import TokenData, check_fits, data_id, prepare_data
from .domains import with_domains
from .optimizers import check_available


class Resolver:
    """Resolve specs with their real vocabulary, preparing each corpus they read once."""

    def __init__(self, cache_dir: str | Path | None = None, *,
                 datasets: dict[str, TokenData] | None = None,
                 memo: dict[str, TokenData] | None = None,
                 fetch: Callable[[DataConfig, str], TokenData | None] | None = None,
                 prepare: bool = True, log: Callable[[str], Any] = lambda s: None):
        self.cache = Path(cache_dir) if cache_dir else None
        self.given = dict(datasets or {})
        self.datasets: dict[str, TokenData] = memo if memo is not None else {}
        """Every dataset this resolver used or prepared, by data id."""
        self.fetch, self.prepare, self.log = fetch, prepare, log

    def config(self, spec: RunSpec) -> RunConfig:
        """The spec's config, its budget counted with the real vocabulary (checked to fit the
        data: at least one window of its seq_len)."""
        first = resolve(spec)
        if not self.prepare:
            return first
        check_available(first.optim)  # a missing optimizer package, before any data
        data = self.data(first.data)
        check_fits(data, first.data.seq_len)
        return resolve(spec, vocab_size=data.vocab_size)

    def run(self, spec: RunSpec) -> tuple[RunConfig, TokenData]:
        """(the spec's config, the data it reads): what one training run needs."""
        cfg = self.config(spec)
        return cfg, self.data(cfg.data)

    def configs(self, specs: Iterable[RunSpec]) -> list[RunConfig]:
        return [self.config(s) for s in specs]

    def data(self, cfg: DataConfig) -> TokenData:
        """The prepared data of a config's corpus (and its extra domains)."""
        key = data_id(cfg)
        if key in self.given:
            self.datasets.setdefault(key, self.given[key])
        if key not in self.datasets:
            data = self.fetch(cfg, key) if self.fetch else None
            if data is None:
                check_paths(cfg)
                data = prepare_data(cfg, self.cache, log=self.log)
            self.datasets[key] = with_domains(data, cfg, self.cache)
        return self.datasets[key]
