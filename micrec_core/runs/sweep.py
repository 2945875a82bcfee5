"""Sensitivity sweeps: settings from the command line, their grid of run configurations, and the choice of one by
validation (never test) performance.

`micrec grid --set gamma_cl=1,0.1 --set loss_reduction=mean,sum` asks for the product of the listed values; each
point is a dict of `Config` overrides and gets its own run folders (`grid.variant_label`). `select` picks the
point whose runs score best on the stopping criterion (validation NDCG@20 at the kept epoch, mean over seeds and
domains); only then does a chapter look at that point's test metrics.
"""

from __future__ import annotations

import itertools
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

import pandas as pd

from micrec_core.config import Config
from micrec_core.models.registry import model_class

# Fields a sweep may not set: they name the run or the machine, not a setting of the method (a model's own
# hyperparameters, Config.params, are set one by one: `param_types`).
NOT_SWEPT = {"model", "ablation", "dataset", "seed", "device", "eval_ns", "params"}


def field_types() -> dict[str, str]:
    """Each sweepable Config field's type, as written in its annotation ("float", "float | None", ...)."""
    hints = typing.get_type_hints(Config)
    return {f.name: _type_name(hints[f.name]) for f in fields(Config) if f.name not in NOT_SWEPT}


def param_types(model: str) -> dict[str, str]:
    """Each of a model's own hyperparameters (its module's `Params`) with its type, as `field_types` gives them."""
    params = model_class(model).Params
    if params is None:
        return {}
    hints = typing.get_type_hints(params)
    return {f.name: _type_name(hints[f.name]) for f in fields(params)}


def _type_name(hint: Any) -> str:
    """'int', 'float', 'bool', 'str', with ' | None' when None is allowed."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    optional = type(None) in typing.get_args(hint)
    return args[0].__name__ + (" | None" if optional else "")


def parse_value(name: str, text: str, types: dict[str, str] | None = None) -> Any:
    """One value of field `name` from its command-line text, typed as in `types` (default: the sweepable Config
    fields); an error names the field and the value."""
    types = field_types() if types is None else types
    if name not in types:
        raise ValueError(f"--set: {name!r} is not a setting that can be swept; choose from {', '.join(sorted(types))}")
    kind = types[name]
    if kind.endswith("| None") and text.lower() == "none":
        return None
    base = kind.split(" ")[0]
    try:
        if base == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError("expected true or false")
            return text.lower() == "true"
        return {"int": int, "float": float, "str": str}[base](text)
    except ValueError as err:
        raise ValueError(f"--set {name}={text}: not a valid {base} ({err})") from err


def parse_setting(spec: str) -> tuple[str, list[Any]]:
    """'key=v1,v2' -> (key, [v1, v2]) with each value typed like the Config field."""
    name, sep, values = spec.partition("=")
    if not sep or not values:
        raise ValueError(f"--set expects key=value[,value...], got {spec!r}")
    parsed = [parse_value(name.strip(), v.strip()) for v in values.split(",")]
    if len(set(map(repr, parsed))) != len(parsed):
        raise ValueError(f"--set {spec}: a value is listed twice")
    return name.strip(), parsed


def expand(specs: Iterable[str]) -> list[dict[str, Any]]:
    """The product of the `--set` specs as a list of override dicts (one empty dict when there is none)."""
    axes = [parse_setting(spec) for spec in specs]
    names = [name for name, _ in axes]
    if len(set(names)) != len(names):
        raise ValueError(f"--set names a setting twice: {', '.join(names)}")
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(v for _, v in axes))]


CHAPTER_SWEEP = "gamma_cl=1,0.01 loss_reduction=mean,sum"  # chapters 6 and 11 when their `sweep` is None


def sweep_points(text: str | None) -> list[dict[str, Any]]:
    """The points of a chapter's `sweep` parameter: groups separated by ';', each a product of space-separated
    `key=v1,v2` settings; the union of the groups' points, each configuration once (a setting a point leaves out
    has `Config`'s default, so `gamma_cl=1 loss_reduction=sum` and `gamma_cl=1 cl_loss=paper` are one point), in
    order. None: `CHAPTER_SWEEP`, the synthetic book's small sweep (a papermill parameters cell cannot hold a default
    with '=' in it)."""
    points = [p for group in (CHAPTER_SWEEP if text is None else str(text)).split(";") if group.strip()
              for p in expand(group.split())]
    filled = configurations(points, sorted({key for p in points for key in p}))
    return [p for k, p in enumerate(points) if filled[k] not in filled[:k]]


def configurations(points: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Each point as the configuration it runs on `keys`: a setting the point leaves out has `Config`'s default."""
    defaults = Config()
    return [{key: p.get(key, getattr(defaults, key)) for key in keys} for p in points]


def narrowing(sweep: str | None, full: str) -> str:
    """A sentence on what a chapter's `sweep` leaves out of a fuller grid (both in `sweep_points` syntax): how many
    of the full grid's points it runs, and each setting value that no point it runs has. Points are compared as
    configurations: a setting a point leaves out has `Config`'s default."""
    asked, fuller = sweep_points(sweep), sweep_points(full)
    keys = sorted({key for p in [*asked, *fuller] for key in p})
    ran, wide = configurations(asked, keys), configurations(fuller, keys)
    missing = [p for p in wide if p not in ran]
    if not missing:
        return f"This sweep runs every point of `{full}` ({len(wide)} points)."
    values: dict[str, list[Any]] = {}
    for point in fuller:
        for key, value in point.items():
            if value not in values.setdefault(key, []):
                values[key].append(value)
    dropped = {key: [v for v in vs if not any(p.get(key) == v for p in ran)] for key, vs in values.items()}
    left = "; ".join(f"{key} = {', '.join(map(str, vs))}" for key, vs in dropped.items() if vs)
    return (f"This sweep runs {len(wide) - len(missing)} of the {len(wide)} points of `{full}`; "
            f"{len(missing)} are left out" + (f", among them every point with {left}." if left else "."))


def validation_table(results: pd.DataFrame, labels: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per sweep point (run label -> its settings): validation NDCG per domain and their mean, averaged over the
    seeds present, with the number of seeds; rows in the order of `labels`, missing points dropped."""
    val = results[(results["source"] == "validation") & results["variant"].isin(list(labels))]
    table = val.groupby(["variant", "domain"])["value"].mean().unstack("domain")
    table["mean"] = table.mean(axis=1)
    table["seeds"] = val.drop_duplicates(["variant", "seed"]).groupby("variant").size()
    table = table.reindex([label for label in labels if label in table.index])
    settings = pd.DataFrame([dict(labels[label]) for label in table.index], index=table.index)
    return pd.concat([settings, table], axis=1)


def select(table: pd.DataFrame) -> str:
    """The run label with the highest mean validation score (ties: the first listed)."""
    if table.empty:
        raise ValueError("no finished run in the sweep: nothing to select")
    return str(table["mean"].idxmax())
