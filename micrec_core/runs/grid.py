"""The reproduction grid: every variant x setting x seed on one built pair, resumable, and its results as one table.

Run folders are RUNS/<dataset folder name>/<label>/seed<k>/ (metrics.json, model.pt, checkpoint.pt), where the
label is the variant, followed by `+key=value` for each setting the run was asked with beyond the variant's own
(`variant_label`: e.g. `micrec+gamma_cl=0.1+loss_reduction=mean`), so a sweep's runs never share a folder. A run
whose metrics.json already holds the requested config on the same data is reused; a killed run, or one stopped by
a time budget, resumes from its checkpoint; a folder holding a run of another configuration is never overwritten
unless asked (`force`). A run that diverged (failed.json) is final too: the same config diverges again. A new run
that differs from a finished one only in parameters its model reads at inference alone (`sgl+unseen_init=random`
beside `sgl`: `Recommender.inference_only`) is not trained: the finished run's model is evaluated again
(`experiment.reevaluate`). Notebooks read results through `collect`, so the book never retrains what a GPU session
produced.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from micrec_core.config import Config
from micrec_core.data.dataset import dataset_sha256
from micrec_core.data.features import dataset_domains, load_features
from micrec_core.models.registry import REGISTRY, model_class
from micrec_core.models.setup import pick_device
from micrec_core.runs.experiment import (
    FAILED_FILE,
    MODEL_FILE,
    check_folder,
    read_json,
    reevaluate,
    run_experiment,
    run_together,
    same_config,
    training_twin,
)
from micrec_core.runs.sweep import field_types, param_types, parse_value
from micrec_core.training.batched import union_key
from micrec_core.training.train import CHECKPOINT, TrainingDiverged, stop_reason

log = logging.getLogger("micrec.grid")
EXECUTORS = ("local", "ray")
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


def variant_model(variant: str) -> tuple[str, str | None]:
    """(model, ablation) of a named variant: MICRec's ablations and variants, or any registered model."""
    if variant in VARIANTS:
        return VARIANTS[variant]
    if variant in REGISTRY:
        return variant, None
    raise ValueError(f"variant must be one of {', '.join([*VARIANTS, *sorted(set(REGISTRY) - set(VARIANTS))])}, "
                     f"got {variant!r}")


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """A variant as the grid is asked for it: a name, or a run label with settings (`variant_label`'s format, e.g.
    inmo+se_weight=full or sgl+unseen_init=random), each value typed like its Config field or, for a hyperparameter
    of the model's own (its module's `Params`), like that field, gathered under "params"."""
    name, *pairs = text.split("+")
    model, _ = variant_model(name)
    settings, params = field_types(), param_types(model)
    own: dict[str, Any] = {}
    given: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key in own or key in given:
            raise ValueError(f"variant {text!r}: expected name+key=value[+key=value...], each key once")
        if key in settings and key in params:
            raise ValueError(f"variant {text!r}: {key!r} is both a setting and a parameter of {model}'s own; set "
                             "the parameter with `micrec train --param`")
        if key in params:
            given[key] = parse_value(key, value, params)
        elif key in settings:
            own[key] = parse_value(key, value)
        else:
            raise ValueError(f"variant {text!r}: {key!r} is neither a setting ({', '.join(sorted(settings))}) nor a "
                             f"parameter of {model}'s own ({', '.join(sorted(params)) or 'it has none'})")
    try:
        model_class(model).resolve_params(given)  # a value outside its domain is refused here, naming it
    except ValueError as err:
        raise ValueError(f"variant {text!r}: {err}") from err
    return name, own | ({"params": given} if given else {})


def variant_config(variant: str, dataset: Path, seed: int, **overrides: Any) -> Config:
    """The Config of a named variant (a registered model, or one of MICRec's ablations and variants)."""
    model, ablation = variant_model(variant)
    settings = VARIANT_SETTINGS.get(variant, {}) | overrides
    return Config(model=model, ablation=ablation, dataset=str(Path(dataset).resolve()), seed=seed, **settings)


def variant_label(variant: str, settings: Mapping[str, Any] | None = None) -> str:
    """The folder name of a variant run with `settings`: the variant, then `+key=value` for each setting (and each
    model parameter under "params") that differs from the variant's own value, sorted (so a sweep point equal to the
    variant is the variant's run); a point whose configuration is exactly another named variant's (micrec with
    cl_loss=infonce) is that variant's."""
    settings = dict(settings or {})
    own = variant_config(variant, Path("."), 0).to_dict()
    params = settings.pop("params", {})
    changed = sorted([(k, v) for k, v in settings.items() if k not in own or own[k] != v]
                     + [(k, v) for k, v in params.items() if own["params"].get(k) != v])
    asked = own | settings | {"params": own["params"] | params}
    for name in VARIANT_SETTINGS:
        if changed and name != variant and variant_config(name, Path("."), 0).to_dict() == asked:
            return name
    return "".join([variant, *(f"+{k}={v}" for k, v in changed)])


def twin_of(variant: str, present: Sequence[tuple[bool, bool]]) -> tuple[str, str] | None:
    """The variant whose runs are this variant's by construction, and why, given which modalities some item of each
    domain has (text, image); None when the variant changes something.

    A modality ablation clears that modality's mask (`micrec.ablate`): where no item of either domain has it, the
    masks stay as MICRec's, so every draw and every number of its run is MICRec's; where it leaves no modality in
    either domain, the similarity finds no neighbour and Eq. 5 adds zero to every row, which is w/o MM's run.
    """
    config = variant_config(variant, Path("."), 0)
    if config.use_text and config.use_image:
        return None
    dropped = "an image" if not config.use_image else "a text"
    left = [(text and config.use_text, image and config.use_image) for text, image in present]
    if left == list(present):
        return "micrec", f"no item of either domain has {dropped}, so dropping it changes nothing: MICRec's run"
    if not any(text or image for text, image in left):
        return "no-mm", (f"dropping {dropped} leaves no item of either domain a modality, so the similarity finds no "
                         "neighbour and Eq. 5 adds nothing: w/o MM's run")
    return None


def modalities_present(dataset: Path) -> list[tuple[bool, bool]]:
    """Per domain of a dataset: whether some item has a text feature, and whether some item has an image feature."""
    return [(bool(f.text_mask.any()), bool(f.image_mask.any()))
            for f in (load_features(dataset, domain) for domain in dataset_domains(dataset))]


def twin(variant: str, dataset: Path) -> tuple[str, str] | None:
    """`twin_of` on a built dataset's features (read only for the variants that drop a modality)."""
    config = variant_config(variant, Path("."), 0)
    return None if config.use_text and config.use_image else twin_of(variant, modalities_present(dataset))


def with_twins(results: pd.DataFrame, dataset: Path, variants: Iterable[str]) -> pd.DataFrame:
    """`collect`'s table with each of `variants` that has a twin on this dataset (`twin`) given its twin's rows,
    relabelled, in place of any runs of its own; column `same_as` names the twin (None for a run of its own)."""
    results = results.assign(same_as=None)
    for variant in variants:
        found = twin(variant, dataset)
        if found is None:
            continue
        rows = results[results["variant"] == found[0]].assign(variant=variant, same_as=found[0])
        results = pd.concat([results[results["variant"] != variant], rows], ignore_index=True)
    return results


def run_dir(runs: Path, dataset: Path, variant: str, seed: int, settings: Mapping[str, Any] | None = None) -> Path:
    """Where a variant's run for one seed (with `settings`) lives."""
    return Path(runs) / Path(dataset).resolve().name / variant_label(variant, settings) / f"seed{seed}"


def _finished(folder: Path, config: Config, data_hash: str, need_model: bool = False) -> bool:
    """Whether `folder` holds a finished (or diverged) run of this config on this data, trained on any machine.

    The device and the dataset's path are not compared (a GPU machine has other paths); the data's identity is
    its sha256. need_model: its model.pt must be there too (a clone or a GPU session carries metrics only).
    A run stopped by a time budget is not finished while its checkpoint is there: the next grid call resumes it.
    """
    failed = folder / FAILED_FILE
    if failed.is_file():
        record = read_json(failed)
        return same_config(record["config"], config) and record["provenance"]["dataset_sha256"] == data_hash
    path = folder / "metrics.json"
    if not path.is_file() or (need_model and not (folder / MODEL_FILE).is_file()):
        return False
    metrics = read_json(path)
    if why_stopped(metrics) == "time budget" and (folder / CHECKPOINT).is_file():
        return False
    return same_config(metrics["config"], config) and metrics["provenance"]["dataset_sha256"] == data_hash


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end this worker once the grid process that started it is gone (killed or crashed)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _train_cell(
    configs: list[Config], folders: list[Path], threads: int | None, progress: bool = False,
    deadline: float | None = None, graph: bool = False, across_code: bool = False,
) -> list[Path]:
    """Worker: train one cell, as one union graph when it holds several runs (or asked for CUDA graphs); a run
    that diverges is recorded in its failed.json and does not stop the grid."""
    if threads is not None:
        torch.set_num_threads(threads)
    if len(configs) > 1 or graph:
        run_together(configs, folders, resume=True, progress=progress, deadline=deadline, graph=graph,
                     across_code=across_code)
    else:
        try:
            run_experiment(configs[0], folders[0], resume=True, progress=progress, deadline=deadline,
                           across_code=across_code)
        except TrainingDiverged as err:
            log.warning("%s: %s", folders[0], err)
    return folders


@dataclass
class _Plan:
    """What a grid call would do: every asked run's folder in order, the cells to train, the folders refused, and
    per asked (variant label, seed) the run that stands for it and its state."""

    folders: list[Path] = field(default_factory=list)
    cells: dict[Any, tuple[list[Config], list[Path]]] = field(default_factory=dict)
    evaluations: dict[Path, tuple[Config, Path]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def _plan(
    dataset: Path, variants: Iterable[str], seeds: Iterable[int], runs: Path,
    settings: Sequence[Mapping[str, Any]] | None, together: bool, need_model: bool, force: bool, across_code: bool,
    overrides: Mapping[str, Any],
) -> _Plan:
    """Resolve twins and labels, and sort each run into finished, to train (new or resumed) or refused."""
    data_hash = dataset_sha256(dataset)
    seeds = list(seeds)
    plan, states = _Plan(), {}
    for asked in variants:
        name, own = parse_variant(asked)
        variant = name
        if (found := twin(name, dataset)) is not None:
            log.warning("%s on %s is not trained: %s (micrec_core.runs.grid.twin_of)", name, Path(dataset).name,
                        found[1])
            variant = found[0]
        for point in settings or [{}]:
            if clash := sorted(set(own) & set(point)):
                raise ValueError(f"variant {asked!r} and a --set point both set {', '.join(clash)}")
            setting = own | dict(point)
            for seed in seeds:
                config = variant_config(variant, dataset, seed, **_merged(overrides, setting))
                folder = run_dir(runs, dataset, variant, seed, setting)
                plan.folders.append(folder)
                if folder not in states:
                    states[folder], problem = _state(folder, config, data_hash, need_model, force, across_code)
                    if problem is not None:
                        plan.problems.append(problem)
                    twin_folder = (_training_twin(runs, dataset, variant, seed, setting, config, data_hash)
                                   if states[folder] == "new" else None)
                    if twin_folder is not None:
                        states[folder] = f"evaluate ({twin_folder.parent.name}'s model)"
                        plan.evaluations[folder] = (config, twin_folder)
                    elif states[folder] in ("new", "resume"):
                        union = together and model_class(config.model).union
                        key = union_key(config) if union else (variant_label(variant, setting), seed)
                        plan.cells.setdefault(key, ([], []))
                        plan.cells[key][0].append(config)
                        plan.cells[key][1].append(folder)
                plan.rows.append({"asked": variant_label(name, setting), "seed": seed,
                                  "run": folder.parent.name, "state": states[folder]})
    return plan


def _training_twin(runs: Path, dataset: Path, variant: str, seed: int, setting: Mapping[str, Any], config: Config,
                   data_hash: str) -> Path | None:
    """The finished run (model.pt there) whose trained model is this new run's: the same variant and seed with the
    run's inference-only parameters back at their defaults (`experiment.training_twin` checks the configs)."""
    cls = model_class(config.model)
    defaults = cls.resolve_params({})
    own = setting.get("params", {})
    kept = {k: v for k, v in own.items() if k not in cls.inference_only or v == defaults[k]}
    if kept == own:
        return None
    base = run_dir(runs, dataset, variant, seed, {**setting, "params": kept})
    base_config = Config.from_dict(config.to_dict() | {"params": config.params | {
        k: defaults[k] for k in set(own) - set(kept)}})
    if (base / FAILED_FILE).is_file() or not _finished(base, base_config, data_hash, need_model=True):
        return None
    return base if training_twin(config, read_json(base / "metrics.json")) is not None else None


def _merged(overrides: Mapping[str, Any], setting: Mapping[str, Any]) -> dict[str, Any]:
    """The call's overrides under a run's own setting, model parameters merged key by key."""
    params = {**overrides.get("params", {}), **setting.get("params", {})}
    return {**overrides, **setting} | ({"params": params} if params else {})


def _state(folder: Path, config: Config, data_hash: str, need_model: bool, force: bool,
           across_code: bool) -> tuple[str, str | None]:
    """A run folder's state, 'finished', 'diverged', 'resume' (a checkpoint to continue), 'new' or 'refused', and
    why it is refused."""
    try:
        if _finished(folder, config, data_hash, need_model):
            return ("diverged" if (folder / FAILED_FILE).is_file() else "finished"), None
        check_folder(folder, config, data_hash, resume=True, force=force, across_code=across_code)
    except ValueError as err:
        return "refused", str(err)
    return ("resume" if (folder / CHECKPOINT).is_file() else "new"), None


def plan_grid(
    dataset: Path, variants: Iterable[str], seeds: Iterable[int], runs: Path,
    settings: Sequence[Mapping[str, Any]] | None = None, need_model: bool = False, force: bool = False,
    across_code: bool = False, **overrides: Any,
) -> pd.DataFrame:
    """What `run_grid` with these arguments would do, without training: per asked (variant label, seed) the run
    folder that stands for it (its twin's, for a twin) and its state: finished, diverged, resume (from its
    checkpoint), new, or refused (see `run_grid` for why a folder is refused)."""
    found = _plan(dataset, variants, seeds, runs, settings, False, need_model, force, across_code, overrides)
    return pd.DataFrame(found.rows, columns=["asked", "seed", "run", "state"])


class GridError(RuntimeError):
    """Runs of a grid that could not be trained or checked; every other run of the grid was trained."""


def run_grid(
    dataset: Path, variants: Iterable[str], seeds: Iterable[int], runs: Path, progress: bool = False,
    jobs: int = 1, threads: int | None = None, together: bool | None = None, deadline: float | None = None,
    graph: bool | None = None, need_model: bool = False, settings: Sequence[Mapping[str, Any]] | None = None,
    force: bool = False, executor: str = "local", ray_address: str | None = None, across_code: bool = False,
    **overrides: Any,
) -> list[Path]:
    """Train every (variant, setting, seed) not already finished; returns the run folders in that order.

    variants: names, or run labels with settings of their own (`parse_variant`: inmo+se_weight=full), which combine
    with every point of `settings` (a key set by both is refused). A variant whose run is another's by construction
    on this dataset (`twin`: a modality ablation on data without that modality) is not trained: its twin's run is,
    and its folder stands in the variant's place.

    settings: config overrides per sweep point (each its own run folder, `variant_label`); default one point
    with none. overrides: config fields every run gets (max_epochs, device, ...), not part of the folder name.
    together: every run that can share a union graph with others (`batched.union_key`: all seeds of MICRec, its
    ablations and INMO; LightGCN's seeds) trains in one (the same function as alone, tested); None = on a GPU
    only, where a step waits on kernel launches (on a CPU arithmetic bounds a step: bench/RESULTS.md).
    jobs: cells (unions, or single runs) trained at once, one process each; with the Ray executor, the cells
    sharing a GPU (each task declares 1/jobs of one).
    executor: "local" (processes of this machine) or "ray" (one Ray task per cell, `micrec_core.runs.ray_executor`:
    on the cluster at `ray_address`, else on a local Ray of jobs x threads CPUs started for this call); the run
    folders must then be on a filesystem every Ray worker sees at the same path.
    need_model: retrain a finished run whose model.pt is missing (for callers that load the model).
    A new run whose training twin is finished with its model.pt (same variant, seed and config but for inference-only
    parameters at their defaults: `_training_twin`) is that model evaluated again, before any cell trains.
    graph: replay each epoch's union steps from a CUDA graph (`batched.epoch_steps`, checked against the plain path
    by bench/check_fast_path.py --graph); None = wherever `together` is on and the device is CUDA.
    deadline: a `time.time()` after which every run still training stops at its epoch's end and is evaluated at
    its best epoch so far; its metrics.json says "stopped": "time budget". The next call resumes such a run from
    its checkpoint; where the checkpoint is gone (a clone carries metrics only) the run counts as finished.
    force: replace run folders that hold another configuration's run (else those runs are refused).
    across_code: resume checkpoints written by other code (`train._load_checkpoint`; else those runs are refused).
    A folder that cannot be read or would be overwritten, or a cell that raises while training (a checkpoint
    refused on loading, say), does not stop the other runs: they train, then `GridError` names every such folder
    and error (a raising cell's traceback goes to the log). Diverged runs (failed.json) are listed by `failures`.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    cuda = pick_device(overrides.get("device", "auto")).type == "cuda"
    together = cuda if together is None else together
    graph = together and cuda if graph is None else graph
    if graph and not cuda:
        raise ValueError(f"CUDA graphs need a CUDA device, got {overrides.get('device', 'auto')}")
    found = _plan(dataset, variants, seeds, runs, settings, together, need_model, force, across_code, overrides)
    folders, cells, problems = found.folders, found.cells, found.problems
    for folder, (config, base) in found.evaluations.items():
        try:
            reevaluate(base, config, folder)
            log.info("%s: %s's trained model, evaluated again", folder, base)
        except Exception as err:  # as for a cell that raises below
            problems.append(_cell_failure([folder], err))
    if executor == "ray":
        from micrec_core.runs.ray_executor import run_cells

        run_cells(_train_cell, list(cells.values()), threads, deadline, graph, gpus=1 / jobs if cuda else 0.0,
                  address=ray_address, cpus=jobs * (threads or 1), across_code=across_code)
    elif jobs == 1:
        for configs, cell_folders in cells.values():
            try:
                _train_cell(configs, cell_folders, threads, progress, deadline, graph, across_code)
            except Exception as err:  # recorded, named in the GridError, and the grid goes on
                problems.append(_cell_failure(cell_folders, err))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_exit_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            submitted = {pool.submit(_train_cell, c, f, threads, False, deadline, graph, across_code): f
                         for c, f in cells.values()}
            for done in as_completed(submitted):
                try:
                    log.info("finished %s", ", ".join(str(f) for f in done.result()))
                except Exception as err:  # as above
                    problems.append(_cell_failure(submitted[done], err))
    if problems:
        raise GridError("runs not trained (every other run of the grid was):\n- " + "\n- ".join(problems))
    return folders


def _cell_failure(folders: list[Path], err: Exception) -> str:
    """Log a cell that raised (with its traceback) and say which runs it left untrained and why."""
    log.error("cell %s raised", ", ".join(str(f) for f in folders), exc_info=err)
    return f"{', '.join(str(f) for f in folders)}: {type(err).__name__}: {err}"


def failures(folders: Iterable[Path]) -> dict[Path, str]:
    """The runs among `folders` that diverged, with the reason each failed.json gives."""
    return {f: read_json(f / FAILED_FILE)["error"] for f in folders if (f / FAILED_FILE).is_file()}


def validation_scores(metrics: dict[str, Any]) -> dict[str, float]:
    """Each domain's validation NDCG@val_n at the epoch whose weights it kept (the model selection criterion)."""
    config, history = metrics["config"], metrics["history"]
    best = metrics["best_epochs"]
    domains = list(metrics["test"])
    return {d: history[best[0] if len(best) == 1 else best[k]][f"val_ndcg@{config['val_n']}/{d}"]
            for k, d in enumerate(domains)}


def collect(runs: Path, dataset: Path) -> pd.DataFrame:
    """Every finished run of a dataset as a long table: variant (the run folder's label), seed, source (model,
    most_popular, or validation: the stopping criterion at the kept epoch, group "all" = seen users and items),
    domain, group, metric, value (+ provenance)."""
    rows = []
    root = Path(runs) / Path(dataset).resolve().name
    for path in sorted(root.glob("*/seed*/metrics.json")):
        metrics = read_json(path)
        base = {
            "variant": path.parent.parent.name,
            "seed": metrics["config"]["seed"],
            "best_epoch": metrics["best_epoch"],
            "epochs_run": metrics["epochs_run"],
            "max_epochs": metrics["config"]["max_epochs"],
            "stopped": why_stopped(metrics),
            "train_seconds": metrics["train_seconds"],
            "git_commit": trained_by(metrics["provenance"]),
            "dataset_sha256": metrics["provenance"]["dataset_sha256"],
            "device": trained_on(metrics["provenance"]),
        }
        validation = {d: {"all": {f"ndcg@{metrics['config']['val_n']}": v}}
                      for d, v in validation_scores(metrics).items()}
        sources = {"model": metrics["test"], "most_popular": metrics["most_popular"], "validation": validation}
        for source, results in sources.items():
            for domain, groups in results.items():
                for group, values in groups.items():
                    for metric, value in values.items():
                        if metric != "users":
                            rows.append(base | {"source": source, "domain": domain, "group": group,
                                                "metric": metric, "value": value})
    return pd.DataFrame(rows)


def _changes(segments: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The segments of a `code_history` that change `key` from the segment before (the first always)."""
    return [seg for k, seg in enumerate(segments) if k == 0 or seg.get(key) != segments[k - 1].get(key)]


def trained_by(provenance: dict[str, Any]) -> str | None:
    """The git commit that trained a run; a run resumed across code (`code_history`) lists each code version's
    commit, joined by "+" in training order (a segment without a known commit shows as "unknown"; one that changed
    only the device adds none)."""
    versions = _changes(provenance.get("code_history", []), "code_sha256")
    if len(versions) < 2:
        return provenance["git_commit"]
    return "+".join(segment["git_commit"] or "unknown" for segment in versions)


def trained_on(provenance: dict[str, Any]) -> str:
    """The device that trained a run; a run resumed on other devices lists each segment's, joined by " + " in
    training order (segments written before they named a device are left out)."""
    named = [segment for segment in provenance.get("code_history", []) if "device" in segment]
    devices = [segment["device"] for segment in _changes(named, "device")]
    return provenance["device"] if len(devices) < 2 else " + ".join(devices)


def settled(folder: Path) -> bool:
    """Whether a run folder holds a result that no later call changes: it diverged (failed.json), or its
    metrics.json says it stopped otherwise than by a time budget."""
    metrics = folder / "metrics.json"
    return (folder / FAILED_FILE).is_file() or (metrics.is_file() and why_stopped(read_json(metrics)) != "time budget")


def why_stopped(metrics: dict[str, Any]) -> str:
    """Why a run in metrics.json stopped: 'early stop', 'max_epochs' or 'time budget' (files of any version)."""
    config = metrics["config"]
    return stop_reason(metrics["epochs_run"], metrics["best_epochs"], config["max_epochs"], config["patience"])


def provenance_table(run_info: pd.DataFrame) -> pd.DataFrame:
    """Per run (rows of `collect`, one per run): commit, data hash, device, epochs, seconds and why it stopped; with
    `with_twins`' column where some row is a twin's, whose run each row is ("same_as", empty for its own)."""
    columns = ["git_commit", "dataset_sha256", "device", "max_epochs", "epochs_run", "best_epoch", "train_seconds",
               "stopped"]
    twins = "same_as" in run_info and run_info["same_as"].notna().any()
    table = run_info[(["same_as"] if twins else []) + columns].copy()
    if twins:
        table["same_as"] = table["same_as"].fillna("")
    table["git_commit"] = [
        "+".join(part[:10] for part in commit.split("+")) for commit in table["git_commit"].fillna("unknown")]
    table["dataset_sha256"] = table["dataset_sha256"].str[:12]
    table["train_seconds"] = table["train_seconds"].round(1)
    return table


def provenance_line(table: pd.DataFrame, data_label: str, seeds: list[int] | str, min_count: int) -> str:
    """The line above every result table: data, its hash, code commits, devices, seeds (a list, or a phrase where
    the models have different ones), max_epochs."""
    commits = ", ".join(sorted(set(table["git_commit"])))
    devices = ", ".join(sorted(set(table["device"])))
    hashes = ", ".join(sorted(set(table["dataset_sha256"])))
    max_epochs = ", ".join(str(m) for m in sorted(set(table["max_epochs"])))
    return (f"{data_label} | dataset sha256 {hashes} | code {commits} | device {devices} | min_count {min_count} | "
            f"training seeds {seeds} | max_epochs {max_epochs}")


def stopping_statement(stopped: Iterable[str], max_epochs: int, patience: int = Config.patience) -> str:
    """One sentence on why the runs stopped, saying plainly when they were not trained to early stop."""
    counts = pd.Series(list(stopped), dtype=str).value_counts()
    total, early = int(counts.sum()), int(counts.get("early stop", 0))
    if early == total:
        return f"All {total} runs stopped by early stopping (patience {patience} ran out) before max_epochs."
    parts = []
    if counts.get("max_epochs", 0):
        parts.append(f"{counts['max_epochs']} at the max_epochs = {max_epochs} cap")
    if counts.get("time budget", 0):
        parts.append(f"{counts['time budget']} at the training session's time budget (evaluated at their best "
                     "epoch so far)")
    return (f"{total - early} of {total} runs stopped NOT at early stop (patience {patience}) but "
            f"{' and '.join(parts)}; {early} early-stopped. Runs not early-stopped compare the models at a fixed "
            "training budget, not trained to convergence.")
