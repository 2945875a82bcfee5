"""The reproduction grid: every variant x seed on one built pair, resumable, and its results as one table.

Run folders are RUNS/<dataset folder name>/<variant>/seed<k>/ (metrics.json, model.pt, checkpoint.pt). A run whose
metrics.json already holds the requested config on the same data is reused; a killed run resumes from its
checkpoint. Notebooks read results through `collect`, so the book never retrains what a GPU session produced.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from micrec_core.config import Config
from micrec_core.dataset import dataset_sha256
from micrec_core.experiment import run_experiment

log = logging.getLogger("micrec.grid")
VARIANTS: dict[str, tuple[str, str | None]] = {
    "micrec": ("micrec", None),
    "no-mm": ("micrec", "no-mm"),
    "no-cd": ("micrec", "no-cd"),
    "no-vis": ("micrec", "no-vis"),
    "no-txt": ("micrec", "no-txt"),
    "inmo": ("inmo", None),
    "lightgcn": ("lightgcn", None),
    "micrec-infonce": ("micrec", None),
}
# Variants that are not in the paper: the settings they change (the paper's contrastive denominator
# excludes the positive pair; this variant uses standard InfoNCE instead).
VARIANT_SETTINGS: dict[str, dict[str, Any]] = {"micrec-infonce": {"cl_loss": "infonce"}}


def variant_config(variant: str, dataset: Path, seed: int, **overrides: Any) -> Config:
    """The Config of a named variant (micrec, an ablation, inmo, lightgcn)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    model, ablation = VARIANTS[variant]
    settings = VARIANT_SETTINGS.get(variant, {}) | overrides
    return Config(model=model, ablation=ablation, dataset=str(Path(dataset).resolve()), seed=seed, **settings)


def run_dir(runs: Path, dataset: Path, variant: str, seed: int) -> Path:
    """Where a variant's run for one seed lives."""
    return Path(runs) / Path(dataset).resolve().name / variant / f"seed{seed}"


def _finished(folder: Path, config: Config, data_hash: str) -> bool:
    """Whether `folder` holds a finished run of this config on this data, trained on any machine.

    The device and the dataset's path are not compared (a GPU machine has other paths); the data's identity is
    its sha256.
    """
    path = folder / "metrics.json"
    if not path.is_file():
        return False
    metrics = json.loads(path.read_text())
    machine = {"device", "dataset"}
    same = {k: v for k, v in metrics["config"].items() if k not in machine} == {
        k: v for k, v in config.to_dict().items() if k not in machine
    }
    return same and metrics["provenance"]["dataset_sha256"] == data_hash


def _train_one(config: Config, folder: Path, threads: int | None) -> Path:
    """Worker: train one run (in its own process when jobs > 1)."""
    if threads is not None:
        torch.set_num_threads(threads)
    run_experiment(config, folder, resume=True, progress=False)
    return folder


def run_grid(
    dataset: Path, variants: Iterable[str], seeds: Iterable[int], runs: Path, progress: bool = False,
    jobs: int = 1, threads: int | None = None, **overrides: Any,
) -> list[Path]:
    """Train every (variant, seed) not already finished, `jobs` processes at a time; returns the run folders.

    Several processes share one GPU well here: each run is small and bound by kernel launches, not arithmetic.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    data_hash = dataset_sha256(dataset)
    folders, todo = [], []
    for variant in variants:
        for seed in seeds:
            config = variant_config(variant, dataset, seed, **overrides)
            folder = run_dir(runs, dataset, variant, seed)
            if not _finished(folder, config, data_hash):
                todo.append((config, folder))
            folders.append(folder)
    if jobs == 1:
        if threads is not None:
            torch.set_num_threads(threads)
        for config, folder in todo:
            run_experiment(config, folder, resume=True, progress=progress)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            for done in as_completed([pool.submit(_train_one, c, f, threads) for c, f in todo]):
                log.info("finished %s", done.result())
    return folders


def collect(runs: Path, dataset: Path) -> pd.DataFrame:
    """Every finished run of a dataset as a long table: variant, seed, domain, group, metric, value (+ provenance)."""
    rows = []
    root = Path(runs) / Path(dataset).resolve().name
    for path in sorted(root.glob("*/seed*/metrics.json")):
        metrics = json.loads(path.read_text())
        base = {
            "variant": path.parent.parent.name,
            "seed": metrics["config"]["seed"],
            "best_epoch": metrics["best_epoch"],
            "epochs_run": metrics["epochs_run"],
            "max_epochs": metrics["config"]["max_epochs"],
            "train_seconds": metrics["train_seconds"],
            "git_commit": metrics["provenance"]["git_commit"],
            "dataset_sha256": metrics["provenance"]["dataset_sha256"],
            "device": metrics["provenance"]["device"],
        }
        sources = {"model": metrics["test"], "most_popular": metrics["most_popular"]}
        for source, results in sources.items():
            for domain, groups in results.items():
                for group, values in groups.items():
                    for metric, value in values.items():
                        if metric != "users":
                            rows.append(base | {"source": source, "domain": domain, "group": group,
                                                "metric": metric, "value": value})
    return pd.DataFrame(rows)
