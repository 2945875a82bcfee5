"""One training run end to end: load, train to early stop, evaluate inductively, write metrics.json + model."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from micrec_core.atomic import atomic_path, write_json
from micrec_core.batched import train_together
from micrec_core.config import Config
from micrec_core.dataset import code_version, dataset_sha256, load_pair
from micrec_core.inference import evaluate_test, most_popular
from micrec_core.train import Setup, TrainState, domain_alphas, setup, stop_reason, train

MODEL_FILE = "model.pt"


def provenance(dataset: Path, device: torch.device, commit: str | None) -> dict[str, Any]:
    """Where a result came from: code commit (read when training started), data hash, device, library versions."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.machine()}, {torch.get_num_threads()} threads"
    return {
        "git_commit": commit,
        "dataset_sha256": dataset_sha256(dataset),
        "device": f"{device.type}: {name}",
        "torch": torch.__version__,
    }


def run_experiment(
    config: Config, out: Path, resume: bool = False, progress: bool = True, deadline: float | None = None
) -> dict[str, Any]:
    """Train `config` on its dataset, evaluate on E_test, and write OUT/metrics.json and OUT/model.pt.

    deadline: a `time.time()` after which training stops at the next epoch's end (metrics.json says so).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pair = load_pair(Path(config.dataset))
    s = setup(pair, config)
    write_json(out / "config.json", config.to_dict())
    bar = tqdm(total=config.max_epochs, desc=_label(config), disable=not progress)

    def on_epoch(record: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix({k.split("/")[-1][:8]: round(v, 4) for k, v in record.items() if k.startswith("val_")})

    commit = code_version()["git_commit"]  # the code that trains, even if a commit lands while it runs
    state = train(s, out, resume=resume, on_epoch=on_epoch, deadline=deadline)
    bar.close()
    return _write_results(s, state, out, commit, together=1)


def run_together(
    configs: list[Config], outs: list[Path], resume: bool = False, progress: bool = True,
    checkpoint_every: float = 60.0, deadline: float | None = None, graph: bool = False,
) -> None:
    """`run_experiment` for runs trained as one union graph (`micrec_core.batched`: one pair, equal union keys).

    Each run's metrics.json is written as soon as that run stops; checkpoints at most every `checkpoint_every` s.
    """
    pair = load_pair(Path(configs[0].dataset))
    setups = [setup(pair, config) for config in configs]
    for config, out in zip(configs, outs, strict=True):
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / "config.json", config.to_dict())
    bar = tqdm(desc=f"{len(configs)} runs together", unit="run-epoch", disable=not progress)
    commit = code_version()["git_commit"]

    def done(k: int, state: TrainState) -> None:
        _write_results(setups[k], state, Path(outs[k]), commit, together=len(configs), graph=graph)

    train_together(setups, outs, resume=resume, on_epoch=lambda k, record: bar.update(1), on_done=done,
                   checkpoint_every=checkpoint_every, deadline=deadline, graph=graph)
    bar.close()


def _label(config: Config) -> str:
    """model or model/ablation."""
    return f"{config.model}{'/' + config.ablation if config.ablation else ''}"


def _write_results(
    s: Setup, state: TrainState, out: Path, commit: str | None, together: int, graph: bool = False
) -> dict[str, Any]:
    """Evaluate a trained run on E_test and write OUT/metrics.json and OUT/model.pt."""
    config = s.config
    alphas = domain_alphas(s, state)
    metrics = {
        "config": config.to_dict(),
        "provenance": provenance(s.pair.path, s.device, commit) | {"trained_together": together, "cuda_graphs": graph},
        "best_epoch": max(state.best_epoch),
        "best_epochs": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped": stop_reason(state.epoch, state.best_epoch, config.max_epochs, config.patience),
        "train_seconds": state.train_seconds,
        "alphas": alphas,
        "history": state.history,
        "test": evaluate_test(s, alphas),
        "most_popular": {d.name: most_popular(d, config.eval_ns) for d in s.pair.domains},
    }
    with atomic_path(out / MODEL_FILE) as tmp:
        torch.save({"config": config.to_dict(), "model": s.model.state_dict(), "alphas": alphas}, tmp)
    write_json(out / "metrics.json", metrics)
    return metrics


def load_run(run: Path, dataset: Path | None = None) -> tuple[Setup, list[float]]:
    """A trained model ready for inference: rebuilt from the run's config (templates are a function of E_tr).

    dataset: where this machine holds the run's data (a run trained elsewhere names another path); it must be
    the same build, by the sha256 in the run's metrics.json.
    """
    payload = torch.load(Path(run) / MODEL_FILE, map_location="cpu", weights_only=False)
    config = Config.from_dict(payload["config"])
    if dataset is not None:
        trained_on = json.loads((Path(run) / "metrics.json").read_text())["provenance"]["dataset_sha256"]
        if dataset_sha256(Path(dataset)) != trained_on:
            raise ValueError(f"{run}: trained on data with sha256 {trained_on[:12]}, not the build in {dataset}")
        config.dataset = str(dataset)
    config.device = "cpu"
    s = setup(load_pair(Path(config.dataset)), config)
    s.model.load_state_dict(payload["model"])
    return s, payload["alphas"]
