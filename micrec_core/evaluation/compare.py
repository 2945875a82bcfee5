"""Comparing runs over training seeds: the tables of the results chapters and a paired test.

Runs of two configurations trained with the same seed on the same split share their data; what differs is the
model and its random stream. So the comparison of two rows is paired by seed: the mean relative change of a
metric and a paired t-test over the seeds (scipy's `ttest_rel`), "beyond noise" when p < 0.05. With one seed
there is no test, and the tables say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05


def mean_std(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Mean and standard deviation over seeds (x100) of `value`, grouped by `keys`; std is NaN for one seed."""
    scaled = frame.assign(value=100 * frame["value"])
    return scaled.groupby(list(keys))["value"].agg(["mean", "std"])


def formatted(means: pd.DataFrame, stds: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """'mean ± std' strings ('mean' alone where std is NaN, i.e. one seed; 'n/a' where there is no value)."""

    def cell(m: float, s: float) -> str:
        if np.isnan(m):
            return "n/a"
        return f"{m:.{digits}f}" if np.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"

    rows = [[cell(m, s) for m, s in zip(mr, sr, strict=True)]
            for mr, sr in zip(means.to_numpy(float), stds.to_numpy(float), strict=True)]
    return pd.DataFrame(rows, index=means.index, columns=means.columns)


def paired(results: pd.DataFrame, row: str, base: str, metric: str) -> pd.DataFrame:
    """Row against base per domain on test `metric` (source "model", group "all"), paired by seed.

    `results` is `grid.collect`'s table with a `row` column naming each run's row. Columns: the two means (x100,
    "mean" and "base mean"), the relative change (%), the seeds both have, the paired t-test's p-value (NaN below
    two seeds or for identical values) and whether the difference is beyond noise (p < ALPHA).
    """
    picked = results[(results["source"] == "model") & (results["group"] == "all") & (results["metric"] == metric)]
    wide = picked.pivot_table(index=["domain", "seed"], columns="row", values="value")
    out = []
    for domain, frame in wide.groupby(level="domain"):
        both = frame[[row, base]].dropna()
        a, b = both[row].to_numpy(), both[base].to_numpy()
        p = float(stats.ttest_rel(a, b).pvalue) if len(both) >= 2 and not np.allclose(a, b) else np.nan
        out.append({"domain": domain, "mean": 100 * a.mean(), "base mean": 100 * b.mean(),
                    "change (%)": 100 * (a.mean() - b.mean()) / b.mean() if b.mean() > 0 else np.nan,
                    "seeds": len(both), "p (paired t)": p, "beyond noise": bool(p < ALPHA) if p == p else False})
    return pd.DataFrame(out).set_index("domain")


def family_orders(ours: pd.DataFrame, families: Mapping[str, str], paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """How each family of methods orders its models, per domain: `ours` (rows: models, columns: domains; higher is
    better, e.g. NDCG@20) and `paper` (the same rows and columns; None where there is no paper column). A row per
    (family, domain): its models best first ("A > B"), each one's rank among all rows (1 = best), and with `paper`
    the same by the paper's numbers and whether the two orders agree."""
    rows = []
    for family in dict.fromkeys(families[m] for m in ours.index):  # in the order the rows first show them
        members = [m for m in ours.index if families[m] == family]
        for source, table in (("ours", ours), ("paper", paper)):
            if table is None:
                continue
            ranks = table.rank(ascending=False, method="min")
            for d in ours.columns:
                best_first = sorted(members, key=lambda m, d=d, t=table: -t.loc[m, d])
                rows.append({"family": family, "domain": d, "source": source, "order": best_first,
                             "ranks": [int(ranks.loc[m, d]) for m in best_first]})
    long = pd.DataFrame(rows)
    wide = long.pivot(index=["family", "domain"], columns="source", values=["order", "ranks"])
    wide.columns = [f"{source} {what}" for what, source in wide.columns]
    wide = wide.reindex(pd.MultiIndex.from_frame(long[["family", "domain"]].drop_duplicates()))
    if paper is not None:
        wide["same order"] = [a == b for a, b in zip(wide["ours order"], wide["paper order"], strict=True)]
    for column in [c for c in wide.columns if c.endswith("order") and c != "same order"]:
        wide[column] = wide[column].map(" > ".join)
    return wide
