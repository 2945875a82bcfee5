"""The grid runner: trains what is missing, reuses finished runs, and collects one long table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import micrec_core.experiment as experiment
from micrec_core.batched import RANKING_ATOL
from micrec_core.experiment import load_run
from micrec_core.grid import collect, run_grid, stopping_statement, variant_config
from micrec_core.train import stop_reason


def test_grid_reuses_finished_runs_and_collects(tiny_dataset: Path, tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    folders = run_grid(tiny_dataset, ["inmo", "lightgcn"], [0, 1], tmp_path, **small)
    assert [f.relative_to(tmp_path).as_posix() for f in folders] == [
        "built/inmo/seed0", "built/inmo/seed1", "built/lightgcn/seed0", "built/lightgcn/seed1"
    ]
    stamps = {f: (f / "metrics.json").stat().st_mtime_ns for f in folders}
    run_grid(tiny_dataset, ["inmo", "lightgcn"], [0, 1], tmp_path, **small)
    assert stamps == {f: (f / "metrics.json").stat().st_mtime_ns for f in folders}
    moved = folders[1] / "metrics.json"  # as if trained on another machine: other paths, other device
    saved = json.loads(moved.read_text())
    saved["config"] |= {"dataset": "/elsewhere/built", "device": "cuda"}
    moved.write_text(json.dumps(saved))
    stamp = moved.stat().st_mtime_ns
    run_grid(tiny_dataset, ["inmo"], [1], tmp_path, **small)
    assert moved.stat().st_mtime_ns == stamp
    run_grid(tiny_dataset, ["inmo"], [0], tmp_path, **(small | {"max_epochs": 2}))
    assert (folders[0] / "metrics.json").stat().st_mtime_ns != stamps[folders[0]]  # a changed config retrains
    table = collect(tmp_path, tiny_dataset)
    assert set(table["variant"]) == {"inmo", "lightgcn"} and set(table["seed"]) == {0, 1}
    assert set(table["source"]) == {"model", "most_popular"}
    assert {"all", "unseen_users", "low_degree_items"} <= set(table["group"])
    assert table["value"].dropna().between(0, 1).all()


def test_parallel_jobs_match_sequential(tiny_dataset: Path, tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    run_grid(tiny_dataset, ["inmo", "lightgcn"], [0], tmp_path / "seq", **small)
    run_grid(tiny_dataset, ["inmo", "lightgcn"], [0], tmp_path / "par", jobs=2, threads=1, **small)
    seq, par = collect(tmp_path / "seq", tiny_dataset), collect(tmp_path / "par", tiny_dataset)
    keys = ["variant", "seed", "source", "domain", "group", "metric"]
    merged = seq.merge(par, on=keys, suffixes=("_seq", "_par"))
    assert len(merged) == len(seq) == len(par) > 0
    assert (merged["value_seq"].fillna(-1) == merged["value_par"].fillna(-1)).all()
    with pytest.raises(ValueError, match="jobs"):
        run_grid(tiny_dataset, ["inmo"], [0], tmp_path, jobs=0)


def test_seeds_together_match_seeds_alone(tiny_dataset: Path, tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 2, "batches_per_epoch": 2, "device": "cpu"}
    run_grid(tiny_dataset, ["no-mm", "lightgcn"], [0, 1], tmp_path / "alone", together=False, **small)
    folders = run_grid(tiny_dataset, ["no-mm", "lightgcn"], [0, 1], tmp_path / "together", together=True, **small)
    assert {json.loads((f / "metrics.json").read_text())["provenance"]["trained_together"] for f in folders} == {2}
    alone, together = collect(tmp_path / "alone", tiny_dataset), collect(tmp_path / "together", tiny_dataset)
    keys = ["variant", "seed", "source", "domain", "group", "metric"]
    merged = alone.merge(together, on=keys, suffixes=("_alone", "_together")).dropna(subset=["value_alone"])
    assert len(merged) > 0 and (merged["best_epoch_alone"] == merged["best_epoch_together"]).all()
    together_values, alone_values = merged["value_together"].to_numpy(), merged["value_alone"].to_numpy()
    assert together_values == pytest.approx(alone_values, abs=RANKING_ATOL)


def test_variant_settings() -> None:
    assert variant_config("micrec-infonce", Path("."), 0).cl_loss == "infonce"
    assert variant_config("micrec", Path("."), 0).cl_loss == "paper"
    assert variant_config("no-vis", Path("."), 3, max_epochs=5).to_dict() | {"dataset": ""} == {
        **variant_config("micrec", Path("."), 3, max_epochs=5).to_dict(), "ablation": "no-vis", "dataset": ""
    }


def test_unknown_variant_is_named() -> None:
    with pytest.raises(ValueError, match="variant must be one of"):
        variant_config("bpr", Path("."), 0)


def test_a_time_budget_stops_runs_at_their_best_epoch_so_far(tiny_dataset: Path, tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 50, "batches_per_epoch": 2, "device": "cpu"}
    deadline = time.time() + 3600
    run_grid(tiny_dataset, ["inmo", "lightgcn"], [0, 1], tmp_path / "in_time", together=True, deadline=deadline,
             **(small | {"max_epochs": 2}))
    run_grid(tiny_dataset, ["inmo", "lightgcn"], [0], tmp_path / "late", deadline=time.time(), **small)
    run_grid(tiny_dataset, ["inmo", "no-mm"], [0, 1], tmp_path / "late_together", together=True,
             deadline=time.time(), **small)
    in_time = collect(tmp_path / "in_time", tiny_dataset).drop_duplicates(["variant", "seed"])
    assert set(in_time["stopped"]) == {"max_epochs"} and set(in_time["epochs_run"]) == {2}
    for folder in ("late", "late_together"):
        runs = collect(tmp_path / folder, tiny_dataset).drop_duplicates(["variant", "seed"])
        assert len(runs) > 1 and set(runs["stopped"]) == {"time budget"} and set(runs["epochs_run"]) == {1}
        for path in (tmp_path / folder).glob("*/*/seed*/metrics.json"):
            metrics = json.loads(path.read_text())
            assert metrics["stopped"] == "time budget" and metrics["best_epoch"] == 0
            assert (path.parent / "model.pt").is_file()


def test_a_run_stopped_by_a_time_budget_resumes_to_the_uninterrupted_result(tiny_dataset: Path,
                                                                          tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 3, "batches_per_epoch": 2, "device": "cpu"}
    cells = [(["inmo", "no-mm"], True), (["lightgcn"], False)]
    for variants, together in cells:
        run_grid(tiny_dataset, variants, [0, 1], tmp_path / "whole", together=together, **small)
        run_grid(tiny_dataset, variants, [0, 1], tmp_path / "split", together=together, deadline=time.time(),
                 **small)
    assert set(collect(tmp_path / "split", tiny_dataset)["stopped"]) == {"time budget"}
    for variants, together in cells:
        run_grid(tiny_dataset, variants, [0, 1], tmp_path / "split", together=together, **small)
    whole, split = collect(tmp_path / "whole", tiny_dataset), collect(tmp_path / "split", tiny_dataset)
    keys = ["variant", "seed", "source", "domain", "group", "metric"]
    merged = whole.merge(split, on=keys, suffixes=("_whole", "_split"))
    assert len(merged) == len(whole) == len(split) > 0
    assert set(merged["stopped_split"]) == {"max_epochs"} and set(merged["epochs_run_split"]) == {3}
    assert (merged["best_epoch_whole"] == merged["best_epoch_split"]).all()
    assert merged["value_split"].fillna(-1).to_numpy() == pytest.approx(merged["value_whole"].fillna(-1).to_numpy())
    for path in (tmp_path / "whole").glob("*/*/seed*/metrics.json"):
        resumed = json.loads((tmp_path / "split" / path.relative_to(tmp_path / "whole")).read_text())
        assert [r["loss"] for r in resumed["history"]] == pytest.approx([r["loss"] for r in json.loads(
            path.read_text())["history"]])
    late = tmp_path / "late"  # without its checkpoint (a clone carries metrics only) a stopped run is final
    run_grid(tiny_dataset, ["inmo"], [0], late, deadline=time.time(), **small)
    (folder,) = late.glob("*/inmo/seed0")
    (folder / "checkpoint.pt").unlink()
    stamp = (folder / "metrics.json").stat().st_mtime_ns
    run_grid(tiny_dataset, ["inmo"], [0], late, **small)
    assert (folder / "metrics.json").stat().st_mtime_ns == stamp


def test_stop_reason() -> None:
    assert stop_reason(60, [9], max_epochs=60, patience=50) == "early stop"
    assert stop_reason(60, [9, 10], max_epochs=60, patience=50) == "max_epochs"
    assert stop_reason(60, [9, 10], max_epochs=1000, patience=50) == "time budget"
    assert stop_reason(1000, [999], max_epochs=1000, patience=50) == "max_epochs"


def test_stopping_statement_says_when_runs_were_not_trained_to_early_stop() -> None:
    assert stopping_statement(["early stop"] * 3, 1000).startswith("All 3 runs stopped by early stopping")
    mixed = stopping_statement(["early stop", "time budget", "time budget", "max_epochs"], 60)
    assert "3 of 4 runs stopped NOT at early stop" in mixed
    assert "1 at the max_epochs = 60 cap" in mixed and "2 at the training session's time budget" in mixed


def test_a_run_trained_elsewhere_loads_against_the_same_data_only(tiny_dataset: Path, tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    folder = run_grid(tiny_dataset, ["inmo"], [0], tmp_path, **small)[0]
    metrics = json.loads((folder / "metrics.json").read_text())
    s, alphas = load_run(folder, tiny_dataset)
    assert s.pair.path == tiny_dataset and alphas == metrics["alphas"]
    metrics["provenance"]["dataset_sha256"] = "0" * 64  # as if trained on another build of the data
    (folder / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="trained on data with sha256 000000000000"):
        load_run(folder, tiny_dataset)


def test_cuda_graphs_are_refused_on_a_cpu(tiny_dataset: Path, tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        run_grid(tiny_dataset, ["inmo"], [0, 1], tmp_path, together=True, graph=True, **small)


def test_a_run_records_the_commit_it_started_with(tiny_dataset: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    head = {"git_commit": "started-with"}
    real_train = experiment.train

    def train_while_a_commit_lands(*args: object, **kwargs: object) -> object:
        state = real_train(*args, **kwargs)
        head["git_commit"] = "landed-later"
        return state

    monkeypatch.setattr(experiment, "code_version", lambda: dict(head))
    monkeypatch.setattr(experiment, "train", train_while_a_commit_lands)
    small = {"dim": 8, "max_epochs": 2, "batches_per_epoch": 2, "device": "cpu"}
    folder = run_grid(tiny_dataset, ["inmo"], [0], tmp_path, **small)[0]
    assert head["git_commit"] == "landed-later"
    assert json.loads((folder / "metrics.json").read_text())["provenance"]["git_commit"] == "started-with"


def test_callers_that_load_a_model_get_its_run_retrained_when_only_metrics_came(tiny_dataset: Path,
                                                                                tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    folder = run_grid(tiny_dataset, ["inmo"], [0], tmp_path, **small)[0]
    (folder / "model.pt").unlink()  # as in a clone: metrics are committed, weights are not
    (folder / "checkpoint.pt").unlink()
    stamp = (folder / "metrics.json").stat().st_mtime_ns
    run_grid(tiny_dataset, ["inmo"], [0], tmp_path, **small)
    assert (folder / "metrics.json").stat().st_mtime_ns == stamp and not (folder / "model.pt").exists()
    run_grid(tiny_dataset, ["inmo"], [0], tmp_path, need_model=True, **small)
    assert (folder / "model.pt").is_file()
    load_run(folder, tiny_dataset)


def test_grid_workers_end_when_the_grid_process_is_killed(tiny_dataset: Path, tmp_path: Path) -> None:
    code = (f"from micrec_core.grid import run_grid; run_grid({str(tiny_dataset)!r}, ['inmo', 'lightgcn'], [0], "
            f"{str(tmp_path)!r}, jobs=2, threads=1, dim=8, max_epochs=1000, patience=1000, batches_per_epoch=2, "
            "device='cpu')")
    grid = subprocess.Popen([sys.executable, "-c", code], env=os.environ | {"OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while not list(tmp_path.glob("*/*/seed0/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.5)  # the workers are training
    children = psutil.Process(grid.pid).children(recursive=True)
    assert children, "the grid started no worker"
    grid.kill()
    grid.wait()
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
