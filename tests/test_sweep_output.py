"""What a sweep shows a user besides its answer: the progress table's head in the sweep's own
terms (a grid's arms, seeds and current look; a search's samples, never "4/infinite", and no
"current best trial" for a grid), `--json` refused where it means nothing, and the search's
dry run listing the samples it will draw (all of them for random and QMC samplers, TPE's
seeded start, then how many follow from the results)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tune_ablations import search
from tune_ablations.sweeps.options import ResourceOptions
from tune_ablations.sweeps.sweep import JSON_OUTPUTS
from tune_ablations.sweeps.tuner import arms_progress, rewrite_progress, samples_progress
from tune_ablations.training.resolved import Resolver


def _trial(arm, seed, status="RUNNING", ours=None):
    return SimpleNamespace(config={"ablation": arm, "seed": seed}, status=status,
                           last_result={"status": ours} if ours else {})


def test_a_grids_progress_speaks_of_arms_seeds_and_looks():
    arms = ["baseline", "high_lr", "low_lr"]
    line = arms_progress(arms, "auto", 5)
    trials = [_trial(a, 0, "TERMINATED", "completed") for a in arms] + \
        [_trial(a, 1) for a in arms[:2]] + [_trial("low_lr", 1, "PENDING")]
    assert line(trials) == ("Grid: 3 arms | seeds: look at 2 of up to 5 per arm | trials: "
                            "2 running, 3 done, 1 pending | 6 so far, up to 15 planned")
    assert arms_progress(arms, 2, 5)([]) == ("Grid: 3 arms | 2 seeds per arm | trials: "
                                             "none yet | 0 so far, 6 planned")
    tuned = arms_progress(arms[:2], "auto", 5, lr_sweep=6)
    sweep = [_trial("baseline", 1000, "TERMINATED", "completed"),
             _trial("high_lr", 1000, "TERMINATED", "early_stopped"), _trial("high_lr", 1000)]
    assert tuned(sweep) == ("Grid: 2 arms | lr sweep: 2 of 6 trials done | seeds: none yet | "
                            "trials: 1 running, 1 done, 1 early-stopped | 3 so far, up to 16 "
                            "planned")


def test_a_searchs_progress_counts_samples_of_the_planned():
    trials = [_trial("baseline", 0, "TERMINATED", "completed"),
              _trial("baseline", 0, "TERMINATED", "diverged"), _trial("baseline", 0, "ERROR")]
    assert samples_progress(16)(trials) == ("Search: 3 of 16 samples | trials: 1 done, "
                                            "1 diverged, 1 errored")


def test_rays_head_is_rewritten():
    text = ("== Status ==\nCurrent time: x\nCurrent best trial: 0001 with val_loss=4.1 and "
            "parameters={'ablation': 'high_lr'}\nResult logdir: /tmp/ray/x\nNumber of trials: "
            "4/infinite (4 RUNNING)\n+------+\n| t |")
    out = rewrite_progress(text, "results/g", "Grid: 2 arms", best=False)
    assert out.splitlines() == ["== Status ==", "Current time: x", "Results: results/g",
                                "Grid: 2 arms", "+------+", "| t |"]
    assert "Current best trial" in rewrite_progress(text, "r", "Search: 4 of 16", best=True)


def test_json_without_dry_run_is_refused(tmp_path, capsys):
    """A search prints no JSON while it runs (a grid prints its answer: tests/test_api.py)."""
    assert "search" not in JSON_OUTPUTS and "grid" in JSON_OUTPUTS
    assert search.main(["--space", "lr", "--preset", "tiny", "--json", "--storage",
                        str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--json without --dry-run" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("sampler, known", [("random", 6), ("qmc", 6), ("tpe", 4)])
def test_the_dry_run_lists_what_the_searcher_will_draw(sampler, known, corpus_dir, tmp_path):
    """The listed points are those the real searcher suggests, in order (the base config
    first); for TPE only its seeded start is known, the rest is said by number."""
    args = search.parser().parse_args(["--space", "lr", "--preset", "tiny", "--data",
                                       str(corpus_dir), "--num-samples", "6", "--sampler",
                                       sampler, "--study-storage",
                                       f"sqlite:///{tmp_path / 'study.db'}"])
    plan = search.build_plan(args, None, 0, ResourceOptions(), Resolver())
    listed = [dict(spec.params) for spec in plan.preview]
    assert len(listed) == known
    assert listed[0] == {"lr": 3e-3}  # the tiny preset's lr: where the reference stood
    searcher = plan.searcher(str(tmp_path / "exp"), 1)
    drawn = [searcher.suggest(f"t{i}") for i in range(known)]
    assert drawn == listed
    assert ("2 more samples chosen by TPE" in plan.later) == (sampler == "tpe")
