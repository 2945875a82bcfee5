"""What the chapters share: the label of the data their numbers come from, training their grid with a report of what
was reused, the provenance lines above their tables, and the per-model tables themselves (mean and spread over seeds
in the paper's layout)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from IPython.display import display

from micrec_core.config import Config
from micrec_core.data.dataset import SplitParams
from micrec_core.evaluation.metrics import GROUPS
from micrec_core.runs.grid import (
    collect,
    failures,
    parse_variant,
    provenance_line,
    provenance_table,
    run_dir,
    run_grid,
    settled,
    stopping_statement,
    variant_label,
    variant_model,
)
from micrec_core.runs.sweep import select, validation_table


def train_grid(dataset: Path, variants: Iterable[str], seeds: Iterable[int], runs: Path,
               **options: Any) -> dict[tuple[str, int], Path]:
    """`grid.run_grid` for every (variant, seed), printing per run whether it was reused, trained now or evaluated now
    from its training twin's model (`experiment.reevaluate`); a variant whose run is another's on this dataset
    (`grid.twin`) gets the folder the grid trained for it, and says so."""
    variants, seeds = list(variants), list(seeds)

    def stamps() -> dict[Path, float]:
        root = Path(runs) / Path(dataset).resolve().name
        return {path.parent: path.stat().st_mtime for path in root.glob("*/seed*/metrics.json")}

    before = stamps()
    start = time.perf_counter()
    trained = run_grid(dataset, variants, seeds, Path(runs), **options)
    print(f"grid ready in {time.perf_counter() - start:.0f} s")
    after = stamps()
    folders = dict(zip([(v, k) for v in variants for k in seeds], trained, strict=True))
    for (v, k), folder in folders.items():
        if k == seeds[0] and folder.parent.name != v:
            print(f"{v} is {folder.parent.name}'s run on this data, not trained on its own")
    for (v, k), folder in folders.items():
        if before.get(folder) == after.get(folder):
            state = "reused"
        elif "training_of" in json.loads((folder / "metrics.json").read_text())["provenance"]:
            state = "evaluated now (its training twin's model)"
        else:
            state = "trained now"
        print(f"{v:>14} seed {k}: {state} -> {folder}")
    return folders


def sweep_selection(dataset: Path, runs: Path, points: list[dict[str, Any]], seeds: list[int],
                    labels: Mapping[str, Mapping[str, Any]] | None = None,
                    ) -> tuple[pd.DataFrame, dict[str, str], str]:
    """Chapter 6's choice of a MICRec configuration, on validation only: the sweep's `validation_table` over
    `seeds` (rows labelled by `labels`, run label -> settings shown; default the points themselves), its points whose
    runs diverged (label -> reason), and the label `select` picks among the others. Every point needs a result per
    seed that no later training changes: a missing run or one a time budget stopped is an error, not a smaller
    sweep."""
    folders = list(dict.fromkeys(run_dir(Path(runs), dataset, "micrec", seed, point) for point in points
                                 for seed in seeds))  # two points may name one run (gamma_cl=1 and micrec)
    unfinished = [folder for folder in folders if not settled(folder)]
    if unfinished:
        raise ValueError(f"{len(unfinished)} of the sweep's {len(folders)} runs are not finished (the first: "
                         f"{unfinished[0]}): a selection now would see part of the sweep")
    diverged = {folder.parent.name: reason for folder, reason in failures(folders).items()}
    labels = labels if labels is not None else {variant_label("micrec", point): point for point in points}
    results = collect(Path(runs), dataset)
    table = validation_table(results[results["seed"].isin(seeds)], labels)
    return table, diverged, select(table.drop(index=[label for label in diverged if label in table.index]))


PAPER_MAX_EPOCHS = 1000  # the paper: up to 1000 epochs, early stopping
PAPER_MIN_COUNT = SplitParams.min_count  # the paper's filter: users and items with more than 10 interactions


def data_label(raw: str | Path | None, release: str, min_count: int, source: bool = True) -> str:
    """What a chapter's numbers come from, as its statements, figure titles and captions name it: SYNTHETIC for the
    generated default; else the Amazon release (and, with `source`, the folder it was read from), followed by the
    k-core filter wherever it is not the paper's, so that a pair built at `--min-count 5` says so beside each number."""
    if raw is None:
        return "SYNTHETIC data (micrec_core.data.synth), not Amazon"
    label = f"Amazon {release} data" + (f" from {raw}" if source else "")
    if int(min_count) != PAPER_MIN_COUNT:
        label += f", built at --min-count {int(min_count)} (the paper's filter: {PAPER_MIN_COUNT})"
    return label


def protocol_note(data_label: str, max_epochs: int, seeds: int) -> str:
    """What this executed copy of a chapter trained on and how long, generated from its parameters so that the
    sentence is true in every copy (the synthetic default and each real pair)."""
    patience = Config().patience
    if max_epochs >= PAPER_MAX_EPOCHS:
        budget = f"up to {max_epochs} epochs with early stopping (patience {patience}), the paper's protocol"
    else:
        budget = (f"**`max_epochs = {max_epochs}`, not the paper's protocol** (up to {PAPER_MAX_EPOCHS} epochs, "
                  f"patience {patience}): a run that stops at the cap may not have converged, so the models are "
                  "compared at a fixed training budget")
    return f"**This copy** ran on {data_label}, {seeds} training seed{'' if seeds == 1 else 's'}, {budget}."


def caption(title: str, provenance: str, stopped: str) -> str:
    """A table's title with the provenance line and how the runs stopped under it."""
    return f"{title}\n  {provenance}\n  {stopped}"


def wide(series: pd.Series, rows: list[str], domains: list[str], metrics: Mapping[str, str],
         names: Mapping[str, str], axis: str = "domain") -> pd.DataFrame:
    """A (variant, domain, metric)-indexed series as the paper's table: a row per variant in `rows` (renamed by
    `names`), a column per (domain, metric label) for the `metrics` {label: metric key}."""
    table = series.unstack(["domain", "metric"]).reindex(
        columns=pd.MultiIndex.from_tuples([(d, metrics[m]) for d in domains for m in metrics]))
    table.columns = pd.MultiIndex.from_product([domains, list(metrics)], names=[axis, "metric"])
    return table.reindex(rows).rename(index=dict(names))


def provenance(run_info: pd.DataFrame, data_label: str, seeds: list[int] | str, min_count: int,
               max_epochs: int) -> tuple[str, str]:
    """Show each run's provenance (commit, data hash, device, epochs, why it stopped) and return the one-line summary
    and the stopping statement that go under every table's title. `seeds`: the training seeds, or a phrase where
    the models have different ones."""
    table = provenance_table(run_info)
    display(table)
    line = provenance_line(table, data_label, seeds, min_count)
    own = table[table["same_as"] == ""] if "same_as" in table else table  # a twin's run is counted once
    stopped = stopping_statement(own["stopped"], max_epochs)
    print(line)
    print(stopped)
    if table["git_commit"].nunique() > 1:
        print(f"WARNING: these runs were trained by {table['git_commit'].nunique()} different code commits; "
              "differences between rows may partly come from code changes (delete the run folders to retrain).")
    return line, stopped


def check_runs(folders: Mapping[tuple[str, int], Path], results: pd.DataFrame, domains: list[str], data_hash: str,
               max_epochs: int) -> None:
    """Every (variant, seed) asked for has a finished run of that variant (with its run label's settings) on this
    data with this max_epochs, test and most-popular metrics for every domain, group and N; every metric is in
    [0, 1], none missing for "all"."""
    expected = {f"{name}@{n}" for name in ("precision", "recall", "ndcg") for n in Config().eval_ns} | {"users"}
    for (v, k), folder in folders.items():
        saved = json.loads((folder / "metrics.json").read_text())
        name, own = parse_variant(folder.parent.name)
        assert (saved["config"]["model"], saved["config"]["ablation"]) == variant_model(name), v
        settings = {key: value for key, value in own.items() if key != "params"}
        assert all(saved["config"][key] == value for key, value in settings.items()), v
        assert all(saved["config"]["params"][key] == value for key, value in own.get("params", {}).items()), v
        assert saved["config"]["seed"] == k and saved["config"]["max_epochs"] == max_epochs, (v, k)
        assert saved["provenance"]["dataset_sha256"] == data_hash, (v, k)
        for source in ("test", "most_popular"):
            assert set(saved[source]) == set(domains), (v, source)
            for d in domains:
                assert set(saved[source][d]) == set(GROUPS), (v, source, d)
                assert all(set(saved[source][d][g]) == expected for g in GROUPS), (v, source, d)
    labels = {folder.parent.name for folder in folders.values()}
    mine = results[results["variant"].isin(labels) & (results["source"] != "validation")]
    assert mine["value"].dropna().between(0, 1).all()
    assert mine.loc[mine["group"] == "all", "value"].notna().all()
    assert set(mine["dataset_sha256"]) == {data_hash} and set(mine["max_epochs"]) == {max_epochs}
    print(f"{len(folders)} runs complete, on this dataset, with the asked configuration; metrics in [0, 1]")


def growth_exponent(sizes: Iterable[float], values: Iterable[float | None]) -> float | None:
    """The exponent b of value ~ a * size^b, fitted by least squares in log-log over the points with a positive
    value; None with fewer than two such points (the scaling appendix and `bench/scale.py`)."""
    points = [(float(n), float(v)) for n, v in zip(sizes, values, strict=True) if v is not None and v > 0]
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def largest_within(sizes: Iterable[float], values: Iterable[float | None], budget: float) -> float | None:
    """The size at which the straight line value = a + b * size fitted to the points reaches `budget` (e.g. the
    interactions whose peak memory would fill one GPU); None when the fit does not grow or has under two points."""
    points = [(float(n), float(v)) for n, v in zip(sizes, values, strict=True) if v is not None]
    if len(points) < 2:
        return None
    slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
    return float((budget - intercept) / slope) if slope > 0 else None
