"""The `micrec` command line: `data download`, `data build`, `data synth`, `features`, `train`, `grid`, `select`
and `reproduce` (each with --help)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from micrec_core.config import ABLATIONS, BEST_EPOCHS, CL_LOSSES, REDUCTIONS, SE_WEIGHTS, Config
from micrec_core.data.amazon import RELEASES
from micrec_core.models.registry import REGISTRY


def _pair(text: str) -> tuple[str, str]:
    """Parse --pair A,B."""
    parts = tuple(p.strip() for p in text.split(","))
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"--pair expects two domains like Beauty,Electronics, got {text!r}")
    return parts[0], parts[1]


def _print(obj: object) -> None:
    """Print a JSON report."""
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def cmd_download(args: argparse.Namespace) -> None:
    """micrec data download."""
    from micrec_core.data.download import download_category

    _print(
        download_category(
            args.release, args.category, Path(args.out), images=args.images, base_url=args.base_url,
            concurrency=args.concurrency, retries=args.retries,
        )
    )


def cmd_build(args: argparse.Namespace) -> None:
    """micrec data build."""
    from micrec_core.data.dataset import SplitParams, build_dataset

    params = SplitParams(seed=args.seed, min_count=args.min_count, min_rating=args.min_rating)
    _print(build_dataset(Path(args.raw), args.pair, Path(args.out), args.release, params, args.skip_bad_lines))


def cmd_synth(args: argparse.Namespace) -> None:
    """micrec data synth."""
    from micrec_core.data.synth import synthesize

    _print(synthesize(Path(args.out), seed=args.seed, size=args.size))


def cmd_features(args: argparse.Namespace) -> None:
    """micrec features."""
    from micrec_core.data.features import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL, encode_features

    _print(
        encode_features(
            Path(args.dataset),
            text_model=args.text_model or DEFAULT_TEXT_MODEL,
            image_model=args.image_model or DEFAULT_IMAGE_MODEL,
            device=args.device,
            batch_size=args.batch_size,
        )
    )


# The Config fields every training command exposes: (field, type or choices, help). The help names the paper's
# value; the default shown is Config's.
CONFIG_FLAGS: list[tuple[str, Any, str]] = [
    ("max_epochs", int, "epoch cap (paper: 1000, with early stopping)"),
    ("gamma_cl", float, "weight gamma of L_CL in the joint loss (paper: 1)"),
    ("tau", float, "contrastive temperature (default: the paper's, 0.2 for Food&Kitchen, else 0.1)"),
    ("cl_loss", CL_LOSSES, "contrastive denominator: the paper's (u' != u) or InfoNCE's (all u')"),
    ("loss_reduction", REDUCTIONS, "sum: BPR and SE summed over a batch's triples, L_CL a mean over its users "
     "(the paper as printed); mean: BPR and SE averaged too (weighs L_CL ~batch-size times more)"),
    ("cl_normalize", bool, "L2-normalise the projector outputs (without it the paper's L_CL is unbounded below)"),
    ("cl_users", int, "overlapping users sampled per step for L_CL (paper: 64)"),
    ("beta_se", float, "weight beta of the SE loss (paper: 0.01)"),
    ("k_neighbours", int, "K most similar users/items aggregated (paper: 3)"),
    ("w_text", float, "weight w of text against images in the similarity (paper: 0.9)"),
    ("dropout", float, "edge dropout on template connections (INMO's code)"),
    ("lr", float, "Adam learning rate"),
    ("se_weight", SE_WEIGHTS, "SE loss W: full d x d (paper) or diagonal (INMO's code; INMO's default)"),
    ("best_epoch", BEST_EPOCHS, "model selection: one epoch for both domains, or each domain its own (default: "
     "joint when L_CL couples the domains or they share parameters)"),
]


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """--max-epochs, --gamma-cl, ...: each a Config field, None when not given (Config's default applies); and
    --param for the model's own hyperparameters (its module's Params)."""
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a hyperparameter of the model's own (its module's Params), repeatable; a list as JSON")
    defaults = Config()
    for name, kind, text in CONFIG_FLAGS:
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name) if name not in ("tau", "best_epoch") else "see above"
        help_text = f"{text} [Config default: {default}]"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(kind, tuple):
            parser.add_argument(flag, choices=kind, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=help_text)


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Config fields given on the command line, and the model's own parameters (--param KEY=VALUE)."""
    given = {name: getattr(args, name) for name, _, _ in CONFIG_FLAGS if getattr(args, name) is not None}
    params = dict(_key_value(spec, "--param") for spec in args.param)
    return given | ({"params": params} if params else {})


def _key_value(spec: str, option: str) -> tuple[str, Any]:
    """KEY=VALUE with the value read as JSON where it is JSON (numbers, lists, true/false/null), else as text."""
    key, sep, value = spec.partition("=")
    if not sep or not key:
        raise ValueError(f"{option} expects KEY=VALUE, got {spec!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def cmd_train(args: argparse.Namespace) -> None:
    """micrec train."""
    import torch

    from micrec_core.runs.experiment import run_experiment
    from micrec_core.runs.grid import twin

    config = Config(
        model=args.model, ablation=args.ablation, dataset=str(Path(args.dataset).resolve()), seed=args.seed,
        device=args.device, **_config_overrides(args),
    )
    if config.ablation is not None and (found := twin(config.ablation, Path(args.dataset))) is not None:
        logging.getLogger("micrec.train").warning(
            "--ablation %s trains %s's run again on this data: %s (`micrec grid` trains it once)", config.ablation,
            found[0], found[1])
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    metrics = run_experiment(config, Path(args.out), resume=args.resume or args.resume_across_code,
                             progress=not args.quiet, force=args.force, across_code=args.resume_across_code)
    test = metrics["test"]
    summary = {d: {k: v for k, v in groups["all"].items() if k.endswith("@20")} for d, groups in test.items()}
    _print({"best_epoch": metrics["best_epoch"], "train_seconds": round(metrics["train_seconds"], 1), "test": summary})


def cmd_grid(args: argparse.Namespace) -> None:
    """micrec grid."""
    from micrec_core.runs.grid import failures, plan_grid, run_grid
    from micrec_core.runs.sweep import expand

    if args.plan:
        plan = plan_grid(Path(args.dataset), args.variants.split(","), range(args.seeds), Path(args.runs),
                         settings=expand(args.set), force=args.force, across_code=args.resume_across_code,
                         device=args.device, **_config_overrides(args))
        print(plan.to_string(index=False))
        counts = plan.drop_duplicates(["run", "seed"])["state"].value_counts()  # a twin's run counts once
        print("runs:", ", ".join(f"{n} {state}" for state, n in counts.items()) or "none")
        return
    choice = {"auto": None, "yes": True, "no": False}
    together, graph = choice[args.together], choice[args.graph]
    folders = run_grid(
        Path(args.dataset), args.variants.split(","), range(args.seeds), Path(args.runs), progress=not args.quiet,
        jobs=args.jobs, threads=args.threads, together=together, graph=graph, device=args.device,
        deadline=None if args.stop_after is None else time.time() + args.stop_after, settings=expand(args.set),
        force=args.force, executor=args.executor, ray_address=args.ray_address,
        across_code=args.resume_across_code, **_config_overrides(args),
    )
    _print([str(f) for f in folders])
    diverged = failures(folders)
    if diverged:
        raise RuntimeError("runs that diverged (failed.json, no result):\n" + "\n".join(
            f"- {folder}: {reason}" for folder, reason in diverged.items()))


def cmd_select(args: argparse.Namespace) -> None:
    """micrec select."""
    from micrec_core.runs.chapters import sweep_selection
    from micrec_core.runs.sweep import sweep_points

    table, diverged, chosen = sweep_selection(Path(args.dataset), Path(args.runs), sweep_points(args.sweep),
                                              list(range(args.seeds)))
    print(table.to_string())
    for label, reason in diverged.items():
        print(f"diverged, not selectable: {label}: {reason}")
    print(chosen)


def cmd_reproduce(args: argparse.Namespace) -> None:
    """micrec reproduce."""
    from micrec_core.runs.reproduce import (
        chapter_numbers,
        like_arguments,
        like_chapter_params,
        reproduce,
        summary_lines,
    )

    only = None if args.only is None else chapter_numbers(args.only)
    given = {"raw": args.raw, "release": args.release, "pair": args.pair, "seeds": args.seeds, "device": args.device,
             "out": args.out, "data": args.data, "max_epochs": args.max_epochs}
    extra = dict(_key_value(spec, "--chapter") for spec in args.chapter)
    if args.like is not None:
        clash = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if clash:
            raise ValueError(f"--like takes every parameter from {args.like}'s records; drop {', '.join(clash)}")
        arguments = like_arguments(Path(args.like))
        arguments["chapter_params"] = like_chapter_params(Path(args.like), arguments["chapter_params"], extra, only)
    else:
        arguments = {k: v for k, v in given.items() if v is not None}
        arguments["chapter_params"] = extra
        for key in ("raw", "out", "data"):
            if key in arguments:
                arguments[key] = Path(arguments[key])
    started = time.perf_counter()
    done = reproduce(**arguments, only=only)
    folder = done[0].parent
    print(f"\n{len(done)} chapters in {folder} ({time.perf_counter() - started:.0f} s)", *summary_lines(done),
          f"open them: .venv/bin/jupyter lab {folder}",
          f"their book: .venv/bin/jupyter-book build --all . --toc {folder / '_toc.yml'} (into _build/html)",
          sep="\n")


DEVICE_HELP = "auto: a GPU when torch sees one"
ACROSS_CODE_HELP = ("resume checkpoints written by another version of micrec_core (refused otherwise): the new "
                    "code must reproduce the checkpoint's last validation NDCG, and metrics.json's "
                    "provenance.code_history records both versions; implies --resume")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows every option's default (none for flags and options without one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        unset = action.default is None or action.default is False or action.default == [] \
            or action.default == argparse.SUPPRESS
        if unset or "default" in (action.help or "").lower():
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="micrec", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(group: Any, name: str, text: str) -> argparse.ArgumentParser:
        return group.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)

    data = command(commands, "data", "data download, data build or data synth: fetch, build or synthesise datasets")
    data = data.add_subparsers(dest="data_command", required=True)
    download = command(data, "download", "fetch a category of a public Amazon Reviews release")
    download.add_argument("--release", choices=RELEASES, default="2014", help="release layout")
    download.add_argument("--category", required=True, help="category as the release names it, e.g. Beauty")
    download.add_argument("--out", default="data/raw", help="raw folder; the category's files go to OUT/<category>/")
    download.add_argument("--images", action="store_true", help="also fetch item images from the metadata URLs")
    download.add_argument("--base-url", default=None, help="mirror to fetch the files from instead")
    download.add_argument("--concurrency", type=int, default=8, help="image downloads at once")
    download.add_argument("--retries", type=int, default=3, help="attempts per file before giving up")
    download.set_defaults(func=cmd_download)

    build = command(data, "build", "filter and split a pair of domains (paper §3, §5.1)")
    build.add_argument("--raw", required=True, help="folder with one subfolder (or the files) per category")
    build.add_argument("--pair", required=True, type=_pair, help="two domains, e.g. Beauty,Electronics")
    build.add_argument("--out", required=True, help="dataset folder to build (atomically) into")
    build.add_argument("--release", choices=RELEASES, default="2014", help="layout of the raw files")
    build.add_argument("--seed", type=int, default=0, help="seeds the split")
    build.add_argument("--min-count", type=int, default=10, help="keep users/items with MORE than this many")
    build.add_argument("--min-rating", type=float, default=4.0, help="keep interactions rated at least this "
                       "(rows without a rating are kept and counted)")
    build.add_argument("--skip-bad-lines", action="store_true", help="count and skip malformed lines")
    build.set_defaults(func=cmd_build)

    synth = command(data, "synth", "write the synthetic multimodal cross-domain dataset (2014 layout)")
    synth.add_argument("--out", required=True, help="raw folder to write (one subfolder per domain)")
    synth.add_argument("--seed", type=int, default=0, help="seeds the generative story")
    synth.add_argument("--size", choices=("small", "medium"), default="small", help="number of users and items")
    synth.set_defaults(func=cmd_synth)

    features = command(commands, "features", "encode item text and images (paper §4.2)")
    features.add_argument("--dataset", required=True, help="built dataset folder")
    features.add_argument("--text-model", default=None, help="sentence-transformers id or path")
    features.add_argument("--image-model", default=None, help="'efficientnet-lite0' or a transformers id or path")
    features.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=DEVICE_HELP)
    features.add_argument("--batch-size", type=int, default=64, help="items encoded per batch")
    features.set_defaults(func=cmd_features)

    train = command(commands, "train", "train a model to early stop and evaluate it inductively (paper §4, §5)")
    train.add_argument("--dataset", required=True, help="built dataset folder (with features for MICRec)")
    train.add_argument("--model", choices=list(REGISTRY), default="micrec", help="a registered model")
    train.add_argument("--ablation", choices=ABLATIONS, default=None, help="a MICRec ablation (paper §5.3)")
    train.add_argument("--seed", type=int, default=0, help="seeds initialisation and sampling")
    _add_config_flags(train)
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=DEVICE_HELP)
    train.add_argument("--out", required=True, help="run folder: metrics.json, model.pt, checkpoint.pt")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--force", action="store_true", help="replace a run of another configuration in OUT")
    train.add_argument("--resume-across-code", action="store_true", help=ACROSS_CODE_HELP)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is often fastest on a busy box)")
    train.set_defaults(func=cmd_train)

    grid = command(commands, "grid", "train every variant x seed on a dataset, reusing finished runs")
    grid.add_argument("--dataset", required=True, help="built dataset folder")
    grid.add_argument("--variants", default="micrec,no-mm,no-cd,no-vis,no-txt,inmo,lightgcn",
                      help="comma-separated registered models and MICRec ablations, each optionally with settings "
                      "of its own as its run folder names them (inmo+se_weight=full)")
    grid.add_argument("--seeds", type=int, default=5, help="train seeds 0..N-1")
    grid.add_argument("--runs", default="runs", help="run folders: RUNS/<dataset>/<variant>/seed<k>/")
    grid.add_argument("--jobs", type=int, default=1, help="cells (unions or single runs) trained at once, one "
                      "process each (with --executor ray: cells sharing each GPU)")
    grid.add_argument("--executor", choices=("local", "ray"), default="local",
                      help="local: processes of this machine; ray: one Ray task per cell (pip install -e '.[ray]'), "
                      "RUNS on a filesystem every Ray node sees at the same path")
    grid.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                      help="with --executor ray: the Ray cluster to run on (default: a local Ray of JOBS x THREADS "
                      "CPUs for this call)")
    grid.add_argument("--together", default="auto", choices=("auto", "yes", "no"),
                      help="train runs that can share a union graph as one model (auto: on a GPU)")
    grid.add_argument("--graph", default="auto", choices=("auto", "yes", "no"),
                      help="replay each epoch's union steps from a CUDA graph (auto: with --together on a GPU)")
    grid.add_argument("--threads", type=int, default=None, help="torch CPU threads per run")
    grid.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=DEVICE_HELP)
    _add_config_flags(grid)
    grid.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                      help="sweep a setting over these values (repeatable: the product of all --set); each point "
                      "trains into RUNS/<dataset>/<variant>+KEY=V.../seed<k>/")
    grid.add_argument("--force", action="store_true", help="replace run folders that hold another configuration")
    grid.add_argument("--resume-across-code", action="store_true", help=ACROSS_CODE_HELP)
    grid.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                      help="stop runs still training after this much wall time, at their best epoch so far "
                           "(metrics.json: stopped = 'time budget')")
    grid.add_argument("--quiet", action="store_true", help="no progress bars")
    grid.add_argument("--plan", action="store_true", help="train nothing: list each asked run, the folder that "
                      "stands for it and its state (finished, diverged, resume, new, refused)")
    grid.set_defaults(func=cmd_grid)

    choose = command(commands, "select", "chapter 6's choice among a sweep's finished runs: the point with the "
                     "best mean validation NDCG (test data unread); prints the validation table, then the chosen run "
                     "label alone on the last line (a grid variant: micrec grid --variants LABEL)")
    choose.add_argument("--dataset", required=True, help="built dataset folder")
    choose.add_argument("--runs", default="runs", help="run folders: RUNS/<dataset>/<variant>/seed<k>/")
    choose.add_argument("--sweep", required=True, help="chapter 6's sweep: ';'-separated groups, each of "
                        "space-separated KEY=V1,V2 settings (its points' runs must all be finished)")
    choose.add_argument("--seeds", type=int, default=1, help="sweep seeds 0..N-1, averaged per point")
    choose.set_defaults(func=cmd_select)

    rerun = command(commands, "reproduce", "execute the book's notebooks for one pair with papermill")
    rerun.add_argument("--raw", default=None, help="raw release folder (default: the synthetic dataset)")
    rerun.add_argument("--release", choices=RELEASES, default=None, help="layout of the raw files (default: 2014)")
    rerun.add_argument("--pair", type=_pair, default=None, help="two domains, e.g. Beauty,Electronics (with --raw)")
    rerun.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 of every trained model (default: 1)")
    rerun.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help=f"{DEVICE_HELP} (default: cpu)")
    rerun.add_argument("--max-epochs", type=int, default=None, help="training epoch cap (default: the notebook's)")
    rerun.add_argument("--out", default=None, help="executed notebooks go to OUT/<pair>/ (default: runs)")
    rerun.add_argument("--data", default=None, help="where built datasets and caches go (default: data)")
    rerun.add_argument("--like", default=None, metavar="FOLDER",
                       help="every parameter as the chapters in FOLDER (e.g. runs/Beauty_Electronics) were executed "
                            "with, read from their .params.json records: rerun a pair's book after a code change "
                            "without retyping its options (with --only: some of its chapters; --chapter adds a "
                            "parameter no record has, or changes one if every chapter recording it is executed)")
    rerun.add_argument("--chapter", action="append", default=[], metavar="KEY=VALUE",
                       help="a parameter some chapters declare (e.g. min_count=5, sweep=..., jobs=2), repeatable")
    rerun.add_argument("--only", default=None, metavar="CHAPTERS",
                       help="execute only these chapters, e.g. 1-6,8-11 (one whose runs are not all trained yet is "
                            "left out; its earlier copy stays listed only if it ran with the same parameters)")
    rerun.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `micrec` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"micrec: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
