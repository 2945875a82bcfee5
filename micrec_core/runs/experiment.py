"""One training run end to end: load, train to early stop, evaluate inductively, write metrics.json + model.

A run whose loss diverges (`train.TrainingDiverged`) writes OUT/failed.json (its config, provenance, the reason and
its history) instead of metrics.json, so a sweep can show the configurations that cannot be trained.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from micrec_core.config import Config
from micrec_core.data.atomic import atomic_path, write_json
from micrec_core.data.dataset import code_version, dataset_sha256, load_pair
from micrec_core.evaluation.inference import evaluate_test, most_popular
from micrec_core.models.registry import model_class
from micrec_core.models.setup import Setup, setup
from micrec_core.training.batched import train_together
from micrec_core.training.provenance import code_sha256, device_name
from micrec_core.training.train import (
    CHECKPOINT,
    TrainingDiverged,
    TrainState,
    domain_alphas,
    read_checkpoint,
    stop_reason,
    train,
    written_by_other_code,
)

MODEL_FILE = "model.pt"
FAILED_FILE = "failed.json"
RUN_FILES = ("metrics.json", FAILED_FILE, "config.json", MODEL_FILE, CHECKPOINT)


def same_config(saved: dict[str, Any], config: Config, ignore: Iterable[str] = ()) -> bool:
    """Whether a saved config is `config`, up to where it ran (device, dataset path) and the fields in `ignore`;
    a saved config predating a field counts with that field's legacy value (`Config.from_dict`)."""
    return not config_differences(saved, config, ignore)


def config_differences(saved: dict[str, Any], config: Config, ignore: Iterable[str] = ()) -> list[str]:
    """The fields in which a saved config differs from `config`, not counting device, dataset path and `ignore`."""
    skip = {"device", "dataset", *ignore}
    old = Config.from_dict(saved).to_dict()
    return sorted(k for k, v in config.to_dict().items() if k not in skip and old[k] != v)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file the project wrote; an unreadable one is a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable ({err}); remove it (or its run folder) to retrain that run") from err


def portable(config: Config) -> dict[str, Any]:
    """The config as a run folder records it: the dataset by its folder name (its identity is the sha256 in the
    provenance), so that no file of a run carries a path of the machine that trained it."""
    return config.to_dict() | {"dataset": Path(config.dataset).name}


def _recorded(out: Path, checkpoint: dict[str, Any] | None) -> tuple[dict[str, Any], str | None, str] | None:
    """The config a run folder holds, the data sha256 it was trained on (when recorded) and the file saying so;
    `checkpoint`: the folder's checkpoint payload, if it has one."""
    for name in ("metrics.json", FAILED_FILE):
        if (out / name).is_file():
            record = read_json(out / name)
            return record["config"], record["provenance"]["dataset_sha256"], name
    if checkpoint is not None:
        return checkpoint["config"], checkpoint["origin"]["dataset_sha256"], CHECKPOINT
    if (out / "config.json").is_file():
        return read_json(out / "config.json"), None, "config.json"
    return None


def check_folder(out: Path, config: Config, data_hash: str, resume: bool, force: bool = False,
                 across_code: bool = False) -> None:
    """Refuse, before anything is written, to train `config` into a run folder where that would lose or relabel a
    run; with `force`, empty the folder's run files instead.

    Refused: a folder holding a run of another configuration or data (the differing fields are named); without
    `resume`, any run of this configuration (continue it with resume, or force a fresh start); with `resume`, a
    checkpoint beyond `max_epochs`, one written by other code (unless `across_code`: `train._load_checkpoint`), or
    a finished run with another max_epochs and no checkpoint to continue from.
    """
    out = Path(out)
    present = [name for name in RUN_FILES if (out / name).is_file()]
    if not present:
        return
    if force:
        for name in present:
            (out / name).unlink()
        return
    payload = read_checkpoint(out / CHECKPOINT) if (out / CHECKPOINT).is_file() else None
    recorded = _recorded(out, payload)
    if recorded is None:
        return
    saved, trained_on, source = recorded
    hint = "pass --force to replace it, or train into another folder"
    differing = config_differences(saved, config, ignore=["max_epochs"])
    if trained_on is not None and trained_on != data_hash:
        differing.append(f"dataset sha256 ({trained_on[:12]} there, {data_hash[:12]} here)")
    if differing:
        raise ValueError(f"{out} holds a run of another configuration ({source} differs in {', '.join(differing)}); "
                         f"{hint}")
    if not resume:
        raise ValueError(f"{out} already holds a run of this configuration ({', '.join(present)}); resume it "
                         "(--resume) or start over (--force)")
    if payload is not None:
        written_by_other_code(out, payload, across_code)
        epoch = payload["state"]["epoch"]
        if epoch > config.max_epochs:
            raise ValueError(f"{out}: its checkpoint is at epoch {epoch}, beyond max_epochs {config.max_epochs}: "
                             f"the run cannot be cut back; {hint}")
    elif source == "metrics.json" and saved["max_epochs"] != config.max_epochs:
        raise ValueError(f"{out} holds a finished run with max_epochs {saved['max_epochs']} and no checkpoint to "
                         f"continue from; retraining it with max_epochs {config.max_epochs} would replace it: {hint}")




def provenance(dataset: Path, device: torch.device, commit: str | None) -> dict[str, Any]:
    """Where a result came from: code commit (read when training started), data hash, device, library versions."""
    return {
        "git_commit": commit,
        "code_sha256": code_sha256(),
        "dataset_sha256": dataset_sha256(dataset),
        "device": device_name(device),
        "torch": torch.__version__,
    }


def run_experiment(
    config: Config, out: Path, resume: bool = False, progress: bool = True, deadline: float | None = None,
    force: bool = False, across_code: bool = False,
) -> dict[str, Any]:
    """Train `config` on its dataset, evaluate on E_test, and write OUT/metrics.json and OUT/model.pt.

    Nothing is written to OUT before the data, features, options and OUT itself are checked (`check_folder`).
    deadline: a `time.time()` after which training stops at the next epoch's end (metrics.json says so).
    across_code: resume a checkpoint written by other code (`train._load_checkpoint`).
    """
    out = Path(out)
    pair = load_pair(Path(config.dataset))
    s = setup(pair, config)
    check_folder(out, config, dataset_sha256(pair.path), resume, force, across_code)
    write_json(out / "config.json", portable(config))
    bar = tqdm(total=config.max_epochs, desc=_label(config), disable=not progress)

    def on_epoch(record: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix({k.split("/")[-1][:8]: round(v, 4) for k, v in record.items() if k.startswith("val_")})

    commit = code_version()["git_commit"]  # the code that trains, even if a commit lands while it runs
    try:
        state = train(s, out, resume=resume, on_epoch=on_epoch, deadline=deadline, across_code=across_code)
    except TrainingDiverged as err:
        _write_failure(s, out, commit, str(err))
        raise
    finally:
        bar.close()
    return _write_results(s, state, out, commit, together=1)


def run_together(
    configs: list[Config], outs: list[Path], resume: bool = False, progress: bool = True,
    checkpoint_every: float = 60.0, deadline: float | None = None, graph: bool = False, across_code: bool = False,
) -> None:
    """`run_experiment` for runs trained as one union graph (`micrec_core.training.batched`: one pair, equal union
    keys).

    Each run's metrics.json is written as soon as that run stops; checkpoints at most every `checkpoint_every` s.
    """
    pair = load_pair(Path(configs[0].dataset))
    setups = [setup(pair, config) for config in configs]
    data_hash = dataset_sha256(pair.path)
    for config, out in zip(configs, outs, strict=True):
        check_folder(Path(out), config, data_hash, resume, across_code=across_code)
    for config, out in zip(configs, outs, strict=True):
        write_json(Path(out) / "config.json", portable(config))
    bar = tqdm(desc=f"{len(configs)} runs together", unit="run-epoch", disable=not progress)
    commit = code_version()["git_commit"]

    def done(k: int, state: TrainState) -> None:
        _write_results(setups[k], state, Path(outs[k]), commit, together=len(configs), graph=graph)

    def failed(k: int, reason: str) -> None:
        _write_failure(setups[k], Path(outs[k]), commit, reason)

    train_together(setups, outs, resume=resume, on_epoch=lambda k, record: bar.update(1), on_done=done,
                   checkpoint_every=checkpoint_every, deadline=deadline, graph=graph, on_failed=failed,
                   across_code=across_code)
    bar.close()


def _write_failure(s: Setup, out: Path, commit: str | None, reason: str) -> None:
    """Record a diverged run in OUT/failed.json (no metrics.json, no model: there is no trained model to score)."""
    record = {"config": portable(s.config), "provenance": provenance(s.pair.path, s.device, commit), "error": reason}
    write_json(out / FAILED_FILE, record)


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
        "config": portable(config),
        "provenance": provenance(s.pair.path, s.device, commit)
        | {"trained_together": together, "cuda_graphs": graph, "code_history": state.code_history},
        "best_epoch": max(state.best_epoch),
        "best_epochs": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped": stop_reason(state.epoch, state.best_epoch, config.max_epochs, config.patience),
        "train_seconds": state.train_seconds,
        "alphas": alphas,
        "history": state.history,
        "test": evaluate_test(s, alphas),
        "most_popular": {d.name: most_popular(d, config.eval_ns) for d in s.pair.domains},
        "model_notes": s.model.notes(),
    }
    with atomic_path(out / MODEL_FILE) as tmp:
        torch.save({"config": portable(config), "model": s.model.state_dict(), "alphas": alphas}, tmp)
    write_json(out / "metrics.json", metrics)
    return metrics


def training_twin(config: Config, trained: dict[str, Any]) -> list[str] | None:
    """The parameters in which `config` differs from a finished run's config (`trained`, its metrics.json) when it
    differs only in parameters its model reads at inference alone (`Recommender.inference_only`), so that the run's
    trained model is `config`'s too; None when anything else differs, or nothing does."""
    if config_differences(trained["config"], config) != ["params"]:
        return None
    saved = Config.from_dict(trained["config"]).params
    changed = sorted(k for k, v in config.params.items() if saved.get(k) != v)
    return changed if set(changed) <= model_class(config.model).inference_only else None


def reevaluate(base: Path, config: Config, out: Path) -> dict[str, Any]:
    """The run of `config` from the finished run in `base`, which differs from it only in inference-only parameters
    (`training_twin`): training never reads those, so base's trained model is this run's; it is loaded, evaluated on
    E_test under `config`, and written to OUT (model.pt, and metrics.json with base's training record, this config
    and test, and `provenance.training_of` naming base and the code that trained it)."""
    base, out = Path(base), Path(out)
    trained = read_json(base / "metrics.json")
    changed = training_twin(config, trained)
    if changed is None:
        raise ValueError(f"{base} is not {out}'s training twin: their configs differ beyond inference-only parameters")
    pair = load_pair(Path(config.dataset))
    data_hash = dataset_sha256(pair.path)
    if trained["provenance"]["dataset_sha256"] != data_hash:
        raise ValueError(f"{base}: trained on data with sha256 {trained['provenance']['dataset_sha256'][:12]}, not "
                         f"{data_hash[:12]}")
    check_folder(out, config, data_hash, resume=False)
    payload = torch.load(base / MODEL_FILE, map_location="cpu", weights_only=True)
    s = setup(pair, config)
    s.model.load_state_dict(payload["model"])
    write_json(out / "config.json", portable(config))
    origin = {"run": f"{base.parent.name}/{base.name}", "changed": changed, "provenance": trained["provenance"]}
    metrics = trained | {
        "config": portable(config),
        "provenance": provenance(pair.path, s.device, code_version()["git_commit"]) | {"training_of": origin},
        "test": evaluate_test(s, payload["alphas"]),
        "model_notes": s.model.notes(),
    }
    with atomic_path(out / MODEL_FILE) as tmp:
        torch.save({"config": portable(config), "model": payload["model"], "alphas": payload["alphas"]}, tmp)
    write_json(out / "metrics.json", metrics)
    return metrics


def load_run(run: Path, dataset: Path) -> tuple[Setup, list[float]]:
    """A trained model ready for inference: rebuilt from the run's config (templates are a function of E_tr).

    dataset: where this machine holds the run's data (a run records its dataset by name only); it must be the same
    build, by the sha256 in the run's metrics.json.
    """
    payload = torch.load(Path(run) / MODEL_FILE, map_location="cpu", weights_only=True)
    config = Config.from_dict(payload["config"])
    trained_on = read_json(Path(run) / "metrics.json")["provenance"]["dataset_sha256"]
    if dataset_sha256(Path(dataset)) != trained_on:
        raise ValueError(f"{run}: trained on data with sha256 {trained_on[:12]}, not the build in {dataset}")
    config.dataset = str(dataset)
    config.device = "cpu"
    s = setup(load_pair(Path(config.dataset)), config)
    s.model.load_state_dict(payload["model"])
    return s, payload["alphas"]
