"""The grid runner: trains what is missing, reuses finished runs, and collects one long table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

import micrec_core.runs.experiment as experiment
from micrec_core.runs.experiment import load_run, run_experiment
from micrec_core.runs.grid import (
    GridError,
    collect,
    plan_grid,
    run_dir,
    run_grid,
    stopping_statement,
    trained_by,
    trained_on,
    twin,
    twin_of,
    variant_config,
    with_twins,
)
from micrec_core.training.batched import RANKING_ATOL
from micrec_core.training.train import stop_reason


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
    assert set(table["source"]) == {"model", "most_popular", "validation"}
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
    code = (f"from micrec_core.runs.grid import run_grid; run_grid({str(tiny_dataset)!r}, ['inmo', 'lightgcn'], [0], "
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


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_finished_run_is_never_overwritten_by_another_configuration(tiny_dataset: Path, tmp_path: Path) -> None:
    from micrec_core.cli import main

    out = tmp_path / "run"
    base = ["train", "--dataset", str(tiny_dataset), "--model", "inmo", "--max-epochs", "1", "--device", "cpu",
            "--quiet", "--out", str(out)]
    assert main(base) == 0
    before = _files(out)
    assert main([*base, "--lr", "0.01", "--resume"]) == 2  # another configuration: refused, nothing touched
    assert main(base) == 2  # the same configuration without --resume: refused too
    assert main([*base[:6], "2", *base[7:], "--resume"]) == 0  # a longer run of it continues from its checkpoint
    longer = json.loads((out / "metrics.json").read_text())
    assert longer["epochs_run"] == 2 and longer["config"]["max_epochs"] == 2
    assert main([*base, "--resume"]) == 2  # its checkpoint (epoch 2) is beyond max_epochs 1: refused
    assert json.loads((out / "metrics.json").read_text()) == longer
    assert main([*base, "--lr", "0.01", "--force"]) == 0  # asked: replaced
    assert json.loads((out / "metrics.json").read_text())["config"]["lr"] == 0.01
    assert _files(out) != before


def test_a_refused_run_names_the_folder_and_the_fields_and_leaves_it_as_it_was(tiny_dataset: Path,
                                                                              tmp_path: Path) -> None:
    from micrec_core.runs.experiment import run_experiment

    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    folder = run_grid(tiny_dataset, ["inmo"], [0], tmp_path, **small)[0]
    before = _files(folder)
    with pytest.raises(ValueError, match=r"holds a run of another configuration \(metrics.json differs in dim, lr\)"):
        run_experiment(variant_config("inmo", tiny_dataset, 0, **(small | {"dim": 4, "lr": 0.1})), folder,
                       resume=True, progress=False)
    (folder / "checkpoint.pt").unlink()  # as in a clone: a finished run without its checkpoint
    before.pop("checkpoint.pt")
    with pytest.raises(GridError, match="max_epochs 1 and no checkpoint"):
        run_grid(tiny_dataset, ["inmo"], [0], tmp_path, **(small | {"max_epochs": 3}))
    assert _files(folder) == before


def test_an_unreadable_run_file_names_itself_and_the_rest_of_the_grid_trains(tiny_dataset: Path,
                                                                           tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    broken = run_dir(tmp_path, tiny_dataset, "inmo", 0)
    broken.mkdir(parents=True)
    (broken / "metrics.json").write_text('{"config": {"model": "inmo", ')
    with pytest.raises(GridError, match=r"inmo/seed0/metrics.json: unreadable"):
        run_grid(tiny_dataset, ["inmo"], [0, 1], tmp_path, **small)
    assert (run_dir(tmp_path, tiny_dataset, "inmo", 1) / "metrics.json").is_file()


def test_sweep_points_train_into_their_own_folders_and_are_reused(tiny_dataset: Path, tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    points = [{}, {"se_weight": "full"}, {"lr": 0.01, "se_weight": "full"}]
    folders = run_grid(tiny_dataset, ["inmo"], [0], tmp_path, settings=points, **small)
    assert [f.parent.name for f in folders] == ["inmo", "inmo+se_weight=full", "inmo+lr=0.01+se_weight=full"]
    configs = [json.loads((f / "metrics.json").read_text())["config"] for f in folders]
    assert [(c["se_weight"], c["lr"]) for c in configs] == [("diagonal", 0.001), ("full", 0.001), ("full", 0.01)]
    stamps = [(f / "metrics.json").stat().st_mtime_ns for f in folders]
    run_grid(tiny_dataset, ["inmo"], [0], tmp_path, settings=points[1:], **small)
    assert [(f / "metrics.json").stat().st_mtime_ns for f in folders] == stamps
    table = collect(tmp_path, tiny_dataset)
    assert set(table["variant"]) == {"inmo", "inmo+se_weight=full", "inmo+lr=0.01+se_weight=full"}


def test_a_legacy_run_is_reused_as_the_run_of_its_recorded_settings(tiny_dataset: Path, tmp_path: Path) -> None:
    from micrec_core.config import LEGACY

    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    mean = {"loss_reduction": "mean"}
    folder = run_grid(tiny_dataset, ["inmo"], [0], tmp_path, settings=[mean], **small)[0]
    metrics = json.loads((folder / "metrics.json").read_text())
    for name in LEGACY:  # as written before these fields existed
        del metrics["config"][name]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    stamp = (folder / "metrics.json").stat().st_mtime_ns
    run_grid(tiny_dataset, ["inmo"], [0], tmp_path, settings=[mean], **small)
    assert (folder / "metrics.json").stat().st_mtime_ns == stamp


def test_a_diverged_run_is_recorded_and_the_grid_goes_on(tiny_dataset: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from micrec_core.cli import main
    from micrec_core.runs.grid import failures

    bad = {"dim": 16, "cl_normalize": False, "lr": 0.05, "gamma_cl": 10.0, "cl_users": 64, "batches_per_epoch": 20,
           "max_epochs": 10, "patience": 100, "device": "cpu"}
    folders = run_grid(tiny_dataset, ["no-mm", "inmo"], [0], tmp_path, **bad)
    assert list(failures(folders)) == [folders[0]] and (folders[1] / "metrics.json").is_file()
    argv = ["grid", "--dataset", str(tiny_dataset), "--variants", "no-mm", "--seeds", "1", "--runs", str(tmp_path),
            "--device", "cpu", "--quiet", "--no-cl-normalize", "--lr", "0.05", "--gamma-cl", "10", "--cl-users", "64",
            "--max-epochs", "10", "--set", "dim=16", "--set", "batches_per_epoch=20", "--set", "patience=100"]
    assert main(argv) == 2
    assert "diverged" in capsys.readouterr().err


def test_no_run_file_carries_a_path_of_the_machine(tiny_dataset: Path, tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 1, "batches_per_epoch": 2, "device": "cpu"}
    folder = run_grid(tiny_dataset, ["inmo"], [0], tmp_path, **small)[0]
    machine = str(tiny_dataset.parent)
    for name in ("metrics.json", "config.json"):
        assert machine not in (folder / name).read_text(), name
    assert json.loads((folder / "metrics.json").read_text())["config"]["dataset"] == tiny_dataset.name
    assert machine not in str(torch.load(folder / "model.pt", weights_only=True)["config"])


def test_a_budget_stopped_run_of_older_code_resumes_only_when_asked_and_says_so(tiny_dataset: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    small = {"dim": 8, "max_epochs": 3, "batches_per_epoch": 2, "device": "cpu"}
    run_grid(tiny_dataset, ["lightgcn"], [0], tmp_path / "whole", **small)
    (folder,) = run_grid(tiny_dataset, ["lightgcn"], [0], tmp_path / "split", deadline=time.time(), **small)
    payload = torch.load(folder / "checkpoint.pt", weights_only=True)
    del payload["state"]["code_history"]  # a checkpoint written before runs kept their code history
    torch.save(payload, folder / "checkpoint.pt")
    first = json.loads((folder / "metrics.json").read_text())["provenance"]
    for module in ("micrec_core.training.train", "micrec_core.runs.experiment"):
        monkeypatch.setattr(f"{module}.code_sha256", lambda: "f" * 64)
    with pytest.raises(GridError, match=r"lightgcn/seed0: its checkpoint \(epoch 1\) was written by other code"):
        run_grid(tiny_dataset, ["lightgcn"], [0], tmp_path / "split", **small)
    assert json.loads((folder / "metrics.json").read_text())["stopped"] == "time budget"
    run_grid(tiny_dataset, ["lightgcn"], [0], tmp_path / "split", across_code=True, **small)
    resumed = json.loads((folder / "metrics.json").read_text())
    whole = json.loads((tmp_path / "whole" / folder.relative_to(tmp_path / "split") / "metrics.json").read_text())
    assert resumed["stopped"] == "max_epochs" and resumed["test"] == whole["test"]
    assert [(c["from_epoch"], c["code_sha256"], c["git_commit"]) for c in resumed["provenance"]["code_history"]] == [
        (0, first["code_sha256"], first["git_commit"]), (1, "f" * 64, first["git_commit"])]
    commits = collect(tmp_path / "split", tiny_dataset)["git_commit"]
    commit = first["git_commit"] or "unknown"
    assert set(commits) == {f"{commit}+{commit}"}


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_cell_that_raises_while_training_is_named_and_the_others_train(tiny_dataset: Path, tmp_path: Path,
                                                                         jobs: int) -> None:
    small = {"dim": 8, "max_epochs": 2, "batches_per_epoch": 2, "device": "cpu"}
    broken, other = run_grid(tiny_dataset, ["inmo"], [0, 1], tmp_path, deadline=time.time(), **small)
    payload = torch.load(broken / "checkpoint.pt", weights_only=True)
    payload["model"].pop(next(iter(payload["model"])))  # passes the folder check, fails loading in the worker
    torch.save(payload, broken / "checkpoint.pt")
    (run_dir(tmp_path, tiny_dataset, "lightgcn", 0)).mkdir(parents=True)
    (run_dir(tmp_path, tiny_dataset, "lightgcn", 0) / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(GridError) as refused:
        run_grid(tiny_dataset, ["inmo", "lightgcn"], [0, 1], tmp_path, jobs=jobs, threads=1, **small)
    message = str(refused.value)
    assert f"{broken}: RuntimeError: Error(s) in loading state_dict" in message
    assert "lightgcn/seed0/checkpoint.pt: not a checkpoint this version can read" in message
    for folder in (other, run_dir(tmp_path, tiny_dataset, "lightgcn", 1)):
        assert json.loads((folder / "metrics.json").read_text())["stopped"] == "max_epochs"
    assert json.loads((broken / "metrics.json").read_text())["stopped"] == "time budget"


def test_a_modality_ablation_is_its_twins_run_only_where_the_modality_is_missing() -> None:
    assert twin_of("no-vis", [(True, False), (False, False)])[0] == "micrec"  # Beauty x Electronics: no image
    assert twin_of("no-txt", [(True, False), (False, False)])[0] == "no-mm"  # ... and text in one domain only
    assert twin_of("no-txt", [(False, True), (False, True)])[0] == "micrec"
    assert twin_of("no-vis", [(False, True), (False, False)])[0] == "no-mm"
    assert twin_of("no-vis", [(True, True), (False, False)]) is None  # images in one domain: a real ablation
    assert twin_of("no-txt", [(True, True), (True, False)]) is None  # images left in one domain
    for variant in ("micrec", "micrec-infonce", "no-mm", "no-cd", "inmo", "lightgcn"):
        assert twin_of(variant, [(False, False), (False, False)]) is None


def test_a_grid_trains_a_twin_once_and_its_rows_stand_for_the_variant(text_only_dataset: Path,
                                                                       tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 2, "batches_per_epoch": 2, "device": "cpu"}
    ds = text_only_dataset
    assert twin("no-vis", ds)[0] == "micrec" and twin("no-txt", ds)[0] == "no-mm" and twin("no-cd", ds) is None
    folders = run_grid(ds, ["micrec", "no-vis", "no-txt", "no-mm"], [0], tmp_path, **small)
    assert [f.parent.name for f in folders] == ["micrec", "micrec", "no-mm", "no-mm"]
    assert sorted(p.name for p in (tmp_path / ds.name).iterdir()) == ["micrec", "no-mm"]
    tested = {f.parent.name: json.loads((f / "metrics.json").read_text())["test"] for f in folders}
    assert tested["micrec"] != tested["no-mm"]  # the text of domain A matters, so the two twins differ
    for variant, same in (("no-vis", "micrec"), ("no-txt", "no-mm")):  # what twin_of claims, trained apart
        own = run_experiment(variant_config(variant, ds, 0, **small), tmp_path / "own" / variant, progress=False)
        assert own["test"] == tested[same] and own["config"]["ablation"] == variant, variant
    (tmp_path / ds.name / "no-vis").mkdir()  # a run of its own (older code trained twins) is not read beside it
    (tmp_path / "own" / "no-vis").rename(tmp_path / ds.name / "no-vis" / "seed0")
    table = with_twins(collect(tmp_path, ds), ds, ["micrec", "no-vis", "no-txt", "no-mm"])
    assert len(table[table["variant"] == "no-vis"]) == len(table[table["variant"] == "micrec"])
    for variant, same in (("no-vis", "micrec"), ("no-txt", "no-mm")):
        rows = table[table["variant"] == variant]
        assert set(rows["same_as"]) == {same}
        assert rows["value"].tolist() == table.loc[table["variant"] == same, "value"].tolist()
    assert table.loc[table["variant"].isin(["micrec", "no-mm"]), "same_as"].isna().all()


def test_training_a_twin_alone_says_whose_run_it_is(text_only_dataset: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from micrec_core.cli import main

    argv = ["train", "--dataset", str(text_only_dataset), "--model", "micrec", "--max-epochs", "1", "--device",
            "cpu", "--quiet", "--out"]
    with caplog.at_level("WARNING", logger="micrec.train"):
        assert main([*argv, str(tmp_path / "vis"), "--ablation", "no-vis"]) == 0
        assert main([*argv, str(tmp_path / "cd"), "--ablation", "no-cd"]) == 0
    assert caplog.text.count("trains micrec's run again on this data") == 1 and "no-cd" not in caplog.text


def test_a_plan_says_what_a_grid_call_would_do_and_trains_nothing(text_only_dataset: Path, tmp_path: Path) -> None:
    small = {"dim": 8, "max_epochs": 3, "batches_per_epoch": 2, "device": "cpu"}
    asked = ["micrec", "no-vis", "inmo+se_weight=full"]

    def states() -> list[tuple[str, int, str, str]]:
        plan = plan_grid(text_only_dataset, asked, [0, 1], tmp_path, **small)
        return list(plan.itertuples(index=False, name=None))

    assert states() == [("micrec", 0, "micrec", "new"), ("micrec", 1, "micrec", "new"),
                        ("no-vis", 0, "micrec", "new"), ("no-vis", 1, "micrec", "new"),
                        ("inmo+se_weight=full", 0, "inmo+se_weight=full", "new"),
                        ("inmo+se_weight=full", 1, "inmo+se_weight=full", "new")]
    assert not (tmp_path / text_only_dataset.name).exists()
    run_grid(text_only_dataset, ["micrec"], [0], tmp_path, **small)
    run_grid(text_only_dataset, ["inmo+se_weight=full"], [1], tmp_path, deadline=time.time(), **small)
    assert [state for *_, state in states()] == ["finished", "new", "finished", "new", "new", "resume"]
    run_grid(text_only_dataset, ["micrec"], [1], tmp_path, **(small | {"lr": 0.01}))  # another configuration's run
    assert [state for *_, state in states()][:2] == ["finished", "refused"]


def test_trained_by_and_on_name_each_code_version_and_device_once() -> None:
    def segment(epoch: int, code: str, commit: str | None, device: str | None = None) -> dict[str, Any]:
        return {"from_epoch": epoch, "code_sha256": code, "git_commit": commit} | ({"device": device} if device else {})

    alone = {"git_commit": "c1", "device": "cpu: A", "code_history": [segment(0, "s1", "c1", "cpu: A")]}
    assert (trained_by(alone), trained_on(alone)) == ("c1", "cpu: A")
    moved = alone | {"device": "cpu: B",
                     "code_history": [segment(0, "s1", "c1", "cpu: A"), segment(5, "s1", "c1", "cpu: B")]}
    assert (trained_by(moved), trained_on(moved)) == ("c1", "cpu: A + cpu: B")  # one code version, two machines
    legacy = {"git_commit": "c2", "device": "cpu: B",
              "code_history": [segment(0, "s1", None), segment(3, "s2", "c2"), segment(7, "s2", "c2", "cpu: B")]}
    assert (trained_by(legacy), trained_on(legacy)) == ("unknown+c2", "cpu: B")  # unnamed devices left out
    back = alone | {"code_history": [segment(0, "s1", "c1", "cpu: A"), segment(2, "s2", "c1", "cpu: B"),
                                     segment(4, "s2", "c1", "cpu: A")]}
    assert (trained_by(back), trained_on(back)) == ("c1+c1", "cpu: A + cpu: B + cpu: A")  # code changed, same commit
