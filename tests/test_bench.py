"""The benchmark scripts run end to end (their figures are printed, not asserted: speed targets live in bench/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run bench/<name> with the project on the path, one torch thread."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / name), *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_bench_prints_every_figure(tiny_dataset: Path) -> None:
    done = script("bench.py", "--dataset", str(tiny_dataset), "--models", "inmo", "--epochs", "1", "--together", "2",
                  "--profile")
    assert done.returncode == 0, done.stderr
    line = done.stdout.splitlines()[-1]
    for figure in ("steps_per_s=", "epoch_s=", "validate_s=", "inference_graph_s=", "inference_eval_s=", "peak_mb=",
                   "aten_ops_per_run_step="):
        assert figure in line
    done = script("bench.py", "--dataset", str(tiny_dataset), "--models", "lightgcn", "--early-stop",
                  "--max-epochs", "2")
    assert done.returncode == 0, done.stderr
    assert "epochs_run=2.000" in done.stdout.splitlines()[-1]


def test_fast_path_check_passes_on_cpu(tiny_dataset: Path) -> None:
    done = script("check_fast_path.py", "--dataset", str(tiny_dataset), "--device", "cpu", "--variants", "no-mm,inmo",
                  "--epochs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: the fast path computes the plain path's function" in done.stdout


def test_bench_times_the_grids_union_and_refuses_graphs_off_a_gpu(tiny_dataset: Path) -> None:
    done = script("bench.py", "--dataset", str(tiny_dataset), "--models", "no-mm,inmo", "--epochs", "1",
                  "--together", "2", "--union")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("no-mm+inmo") and "steps_per_s=" in done.stdout
    done = script("bench.py", "--dataset", str(tiny_dataset), "--models", "inmo", "--epochs", "1", "--together", "1",
                  "--graph")
    assert done.returncode != 0 and "CUDA graphs need a CUDA device" in done.stderr


def test_validation_profile_prints_warm_timings(tiny_dataset: Path) -> None:
    done = script("profile_validation.py", "--dataset", str(tiny_dataset), "--variant", "inmo", "--repeat", "2")
    assert done.returncode == 0, done.stderr
    assert "warm median" in done.stdout and "aten::topk" in done.stdout


def test_pack_finished_carries_results_and_leaves_runs_a_budget_stopped(tiny_dataset: Path, tmp_path: Path) -> None:
    import tarfile
    import time

    from micrec_core.runs.grid import run_grid

    small = {"dim": 8, "max_epochs": 2, "batches_per_epoch": 2, "device": "cpu"}
    run_grid(tiny_dataset, ["inmo"], [0], tmp_path / "runs", **small)
    run_grid(tiny_dataset, ["lightgcn"], [0], tmp_path / "runs", deadline=time.time(), **small)
    done = script("pack_finished.py", str(tmp_path / "runs"), str(tmp_path / "runs.tar.gz"))
    assert done.returncode == 0, done.stderr
    with tarfile.open(tmp_path / "runs.tar.gz") as tar:
        names = sorted(tar.getnames())
    assert names == ["built/inmo/seed0/config.json", "built/inmo/seed0/metrics.json"]
    listed = script("pack_finished.py", "--list", str(tmp_path / "runs"))
    assert listed.stdout.split() == [(tmp_path / "runs" / "built" / "inmo" / "seed0").as_posix()]
    unpacked = tmp_path / "device_runs"
    with tarfile.open(tmp_path / "runs.tar.gz") as tar:
        tar.extractall(unpacked, filter="data")
    stamp = (unpacked / "built" / "inmo" / "seed0" / "metrics.json").stat().st_mtime_ns
    run_grid(tiny_dataset, ["inmo"], [0], unpacked, **small)  # reused there, not trained again
    assert (unpacked / "built" / "inmo" / "seed0" / "metrics.json").stat().st_mtime_ns == stamp


def test_idcf_diagnosis_leaves_the_edge_out_of_the_summaries_and_prints_every_figure(tiny_dataset: Path,
                                                                                      tmp_path: Path) -> None:
    import importlib.util

    import torch

    from micrec_core.models.idcf import build_phase
    from micrec_core.runs.experiment import load_run
    from micrec_core.runs.grid import run_grid

    folder = run_grid(tiny_dataset, ["idcf"], [0], tmp_path / "runs", dim=8, max_epochs=2, batches_per_epoch=2,
                      device="cpu")[0]
    spec = importlib.util.spec_from_file_location("idcf_diagnosis", ROOT / "bench" / "idcf_diagnosis.py")
    diagnosis = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnosis)
    s, _ = load_run(folder, tiny_dataset)
    data, domain = s.model.pair.domains[0], s.model.domains[0]
    train = data.edges["train"]
    for e in (0, train.shape[1] // 2, train.shape[1] - 1):
        without = build_phase(torch.cat([train[:, :e], train[:, e + 1:]], 1), data.n_users, data.n_items,
                              domain.user_key, domain.item_key, torch.device("cpu"))
        u, i = train[:, e : e + 1]
        for side, rows, neighbours in (("user", u, i), ("item", i, u)):
            m = domain.summaries(s.model.train_phases[0], side)
            expected = domain.summaries(without, side)[rows]
            got = diagnosis.left_out(domain, train, m, rows, neighbours, side)
            assert torch.allclose(got, expected, atol=1e-6), (side, e)
            is_key = bool(domain._side("item" if side == "user" else "user")[0][neighbours] >= 0)
            assert torch.allclose(got, m[rows], atol=1e-6) != is_key, (side, e)  # a key's edge was in the summary
    done = script("idcf_diagnosis.py", "--run", str(folder), "--dataset", str(tiny_dataset))
    assert done.returncode == 0, done.stderr
    for figure in ("stage-1 factorisation alone", "E_tr fit", "user attention over", "item attention over",
                   "left out of both"):
        assert done.stdout.count(figure) == 2, figure
