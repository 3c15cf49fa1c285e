"""The results tables a user reads: one dtype per column (text always pandas' `string`, whole
numbers `Int64`, flags `boolean`), kept through Parquet, and one meaning per name (`lr` is the
configured peak learning rate; the history's rate at each evaluation is `scheduled_lr`)."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from tune_ablations.results.frames import load, one_dtype_per_column
from tune_ablations.spec.names import SCHEDULED_LR


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Completed, diverged, errored and running trials (missing values of every kind)."""
    from synthetic import make_synthetic_experiment

    return load(make_synthetic_experiment(tmp_path_factory.mktemp("tables")))


@pytest.mark.parametrize("table", ["trials", "history"])
def test_one_dtype_per_column(results, table):
    df = getattr(results, table)
    assert len(df) > 0
    for col in df.columns:
        values = [v for v in df[col] if not pd.isna(v)]
        kinds = {type(v).__name__ for v in values}
        if values and all(isinstance(v, str) for v in values):
            assert isinstance(df[col].dtype, pd.StringDtype) or col == "status", (col,
                                                                                 df[col].dtype)
        assert str(df[col].dtype) != "object" or not values, (col, kinds)
    for col in ("trial_id", "ablation"):
        assert isinstance(df[col].dtype, pd.StringDtype)
    assert str(df["seed"].dtype) == "Int64"
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    back = pd.read_parquet(io.BytesIO(buf.getvalue()))
    assert [str(d) for d in back.dtypes] == [str(d) for d in df.dtypes]


def test_lr_means_one_thing(results):
    """`lr` is the configured peak in the results table (as in the config, the search spaces
    and Ray's param_space); the history calls the rate at each evaluation `scheduled_lr`."""
    import json

    trials, history = results.trials, results.history
    assert "lr" not in history.columns and SCHEDULED_LR in history.columns
    assert history[SCHEDULED_LR].notna().all()
    for _, row in trials.iterrows():
        run = json.loads((__import__("pathlib").Path(row["path"]) / "run.json").read_text())
        assert row["lr"] == run["config"]["lr"]


def test_mixed_values_become_text_and_numbers_stay_numbers():
    df = one_dtype_per_column(pd.DataFrame({
        "mixed": [1, "a", None], "num": [1, 2.5, None], "flag": [True, None, False],
        "text": ["x", None, "y"], "whole": [1.0, None, 3.0]}), whole=("whole",))
    assert list(df["mixed"]) [:2] == ["1", "a"] and isinstance(df["mixed"].dtype,
                                                              pd.StringDtype)
    assert str(df["num"].dtype) == "float64" and str(df["flag"].dtype) == "boolean"
    assert isinstance(df["text"].dtype, pd.StringDtype) and str(df["whole"].dtype) == "Int64"
