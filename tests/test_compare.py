"""Comparisons over seeds: mean ± std tables and the paired test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from micrec_core.evaluation.compare import family_orders, formatted, mean_std, paired


def _results(values: dict[str, list[float]]) -> pd.DataFrame:
    """collect()-shaped rows: one domain, NDCG@20 of each row per seed."""
    return pd.DataFrame([{"row": row, "seed": k, "source": "model", "group": "all", "metric": "ndcg@20",
                          "domain": "A", "value": v} for row, vs in values.items() for k, v in enumerate(vs)])


def test_paired_test_is_scipy_s_over_seeds() -> None:
    a, b = [0.30, 0.32, 0.31, 0.35, 0.33], [0.28, 0.31, 0.27, 0.33, 0.30]
    table = paired(_results({"new": a, "old": b}), "new", "old", "ndcg@20")
    assert table.loc["A", "mean"] == pytest.approx(100 * np.mean(a))
    assert table.loc["A", "change (%)"] == pytest.approx(100 * (np.mean(a) - np.mean(b)) / np.mean(b))
    assert table.loc["A", "p (paired t)"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert table.loc["A", "beyond noise"] and table.loc["A", "seeds"] == 5
    one = paired(_results({"new": a[:1], "old": b[:1]}), "new", "old", "ndcg@20")
    assert np.isnan(one.loc["A", "p (paired t)"]) and not one.loc["A", "beyond noise"]


def test_mean_std_cells() -> None:
    frame = _results({"x": [0.1, 0.3]})
    agg = mean_std(frame, ["row"])
    assert agg.loc["x", "mean"] == pytest.approx(20.0) and agg.loc["x", "std"] == pytest.approx(100 * np.std([.1, .3],
                                                                                                             ddof=1))
    cells = formatted(agg[["mean"]], agg[["std"]].rename(columns={"std": "mean"}), digits=1)
    assert cells.loc["x", "mean"] == "20.0 ± 14.1"


def test_family_orders_against_the_paper() -> None:
    models = ["A", "B", "C", "D"]
    ours = pd.DataFrame({"X": [3.0, 5.0, 4.0, 1.0], "Y": [5.0, 4.0, 3.0, 2.0]}, index=models)
    paper = pd.DataFrame({"X": [5.0, 3.0, 4.0, 1.0], "Y": [5.0, 4.0, 1.0, 3.0]}, index=models)
    families = {"A": "f1", "B": "f1", "C": "f2", "D": "f2"}
    table = family_orders(ours, families, paper)
    assert list(table.index) == [("f1", "X"), ("f1", "Y"), ("f2", "X"), ("f2", "Y")]
    assert list(table["ours order"]) == ["B > A", "A > B", "C > D", "C > D"]
    assert list(table["paper order"]) == ["A > B", "A > B", "C > D", "D > C"]
    assert list(table["same order"]) == [False, True, True, False]
    assert table.loc[("f1", "X"), "ours ranks"] == [1, 3]  # B first of all four, A third (C is second)
    assert table.loc[("f2", "Y"), "paper ranks"] == [3, 4]  # D third, C last by the paper's numbers
    alone = family_orders(ours, families)
    assert list(alone.columns) == ["ours order", "ours ranks"]
    assert list(alone["ours order"]) == list(table["ours order"])
