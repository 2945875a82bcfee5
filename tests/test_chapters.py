"""The helpers the results chapters share: the grid with its reuse report and the paper-shaped tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from micrec_core.evaluation.compare import mean_std
from micrec_core.models.registry import REGISTRY, TABLE2, table2_models
from micrec_core.runs.chapters import (
    caption,
    data_label,
    growth_exponent,
    largest_within,
    sweep_selection,
    train_grid,
    wide,
)
from micrec_core.runs.grid import collect, run_grid
from micrec_core.runs.sweep import sweep_points


def test_train_grid_says_what_it_reused(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    folders = train_grid(tiny_dataset, ["inmo"], [0, 1], tmp_path, **small)
    assert all((f / "metrics.json").is_file() for f in folders.values()) and set(folders) == {("inmo", 0), ("inmo", 1)}
    assert capsys.readouterr().out.count("trained now") == 2
    train_grid(tiny_dataset, ["inmo"], [0, 1], tmp_path, **small)
    out = capsys.readouterr().out
    assert out.count("reused") == 2 and "trained now" not in out
    train_grid(tiny_dataset, ["sgl"], [0], tmp_path, **small)
    capsys.readouterr()
    train_grid(tiny_dataset, ["sgl+unseen_init=random"], [0], tmp_path, **small)
    assert "evaluated now (its training twin's model)" in capsys.readouterr().out


def test_wide_is_the_paper_s_layout(tiny_dataset: Path, tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    train_grid(tiny_dataset, ["inmo", "lightgcn"], [0, 1], tmp_path, **small)
    results = collect(tmp_path, tiny_dataset)
    model = results[(results["source"] == "model") & (results["group"] == "all")]
    agg = mean_std(model, ["variant", "domain", "metric"])
    metrics = {"Rec": "recall@20", "NDCG": "ndcg@20"}
    table = wide(agg["mean"], ["inmo", "lightgcn", "ngcf"], ["A", "B"], metrics, {"inmo": "INMO"})
    assert list(table.index) == ["INMO", "lightgcn", "ngcf"] and table.loc["ngcf"].isna().all()
    assert list(table.columns) == [("A", "Rec"), ("A", "NDCG"), ("B", "Rec"), ("B", "NDCG")]
    by_hand = 100 * model[(model["variant"] == "inmo") & (model["domain"] == "B")
                          & (model["metric"] == "ndcg@20")]["value"].mean()
    assert np.isclose(table.loc["INMO", ("B", "NDCG")], by_hand)
    assert caption("T", "p", "s") == "T\n  p\n  s"


def test_table2_rows_follow_the_paper_and_the_registry() -> None:
    assert list(TABLE2)[-2:] == ["inmo", "micrec"] and len(TABLE2) == 13
    assert table2_models() == [name for name in TABLE2 if name in REGISTRY]
    assert set(REGISTRY) <= set(TABLE2)


def test_the_protocol_note_is_true_for_the_parameters_it_is_given() -> None:
    from micrec_core.runs.chapters import protocol_note

    capped = protocol_note("SYNTHETIC data", 60, 1)
    assert "`max_epochs = 60`, not the paper's protocol" in capped and "1 training seed," in capped
    full = protocol_note("Amazon 2014 data", 1000, 5)
    assert "the paper's protocol" in full and "not the paper's" not in full and "5 training seeds" in full


def test_the_data_label_names_a_filter_other_than_the_paper_s_and_only_then() -> None:
    assert data_label(None, "2014", 10).startswith("SYNTHETIC data")
    assert data_label("../raw", "2014", 10) == "Amazon 2014 data from ../raw"
    assert data_label("../raw", "2018", 10, source=False) == "Amazon 2018 data"
    food = data_label("../raw", "2014", 5, source=False)
    assert food.startswith("Amazon 2014 data, ") and "--min-count 5" in food and "filter: 10" in food


def test_growth_exponent_and_the_size_that_fills_a_budget() -> None:
    sizes = [1e5, 1e6, 1e7]
    assert growth_exponent(sizes, [3 * n**1.5 for n in sizes]) == pytest.approx(1.5)
    assert growth_exponent(sizes, [None, 0.0, 5.0]) is None  # one usable point
    assert largest_within(sizes, [100 + 2 * n for n in sizes], budget=1100) == pytest.approx(500)
    assert largest_within(sizes, [5.0, 5.0, 5.0], budget=10) is None  # a flat line never reaches it


def test_a_twin_s_run_is_shown_once_per_row_and_counted_once(text_only_dataset: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from micrec_core.runs.chapters import provenance
    from micrec_core.runs.grid import with_twins

    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    variants = ["micrec", "no-vis"]
    folders = train_grid(text_only_dataset, variants, [0], tmp_path, **small)
    assert folders[("no-vis", 0)] == folders[("micrec", 0)]
    assert "no-vis is micrec's run on this data" in capsys.readouterr().out
    results = with_twins(collect(tmp_path, text_only_dataset), text_only_dataset, variants)
    run_info = results.drop_duplicates(["variant", "seed"]).set_index(["variant", "seed"])
    _, stopped = provenance(run_info, "test data", [0], 5, 1)
    assert stopped.startswith("1 of 1 runs stopped NOT at early stop")  # one run, shown in two rows
    assert "same_as" in capsys.readouterr().out


def test_sweep_selection_waits_for_every_point_then_picks_the_best_validation_score(
        text_only_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from micrec_core.cli import main

    small = {"dim": 8, "max_epochs": 2, "batches_per_epoch": 2, "device": "cpu"}
    sweep = "gamma_cl=1,0.01; gamma_cl=1 cl_loss=paper,infonce"
    points = sweep_points(sweep)
    run_grid(text_only_dataset, ["micrec"], [0], tmp_path, settings=points[:2], **small)
    with pytest.raises(ValueError, match="1 of the sweep's 3 runs are not finished"):  # micrec-infonce: no run yet
        sweep_selection(text_only_dataset, tmp_path, points, [0])
    run_grid(text_only_dataset, ["micrec"], [0], tmp_path, settings=points[2:], deadline=time.time(), **small)
    with pytest.raises(ValueError, match="not finished"):  # stopped by a time budget: it would change
        sweep_selection(text_only_dataset, tmp_path, points, [0])
    run_grid(text_only_dataset, ["micrec"], [0], tmp_path, settings=points[2:], **small)
    table, diverged, chosen = sweep_selection(text_only_dataset, tmp_path, points, [0])
    assert list(table.index) == ["micrec", "micrec+gamma_cl=0.01", "micrec-infonce"] and not diverged
    assert table.loc[chosen, "mean"] == table["mean"].max()
    capsys.readouterr()
    assert main(["select", "--dataset", str(text_only_dataset), "--runs", str(tmp_path), "--sweep", sweep]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == chosen
