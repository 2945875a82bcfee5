"""micrec_core's layers: each module imports only from its own layer and the layers below it (README)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "micrec_core"
LAYERS = ["data", "models", "evaluation", "training", "runs", "cli"]


def layer(module: str) -> int | None:
    """The rank of a dotted micrec_core module in LAYERS; None for the package root and config."""
    parts = module.split(".")[1:]
    if not parts or parts[0] == "config":
        return None
    return LAYERS.index(parts[0])


def imports(path: Path) -> set[str]:
    """The micrec_core modules a file imports (anywhere in it, function bodies and TYPE_CHECKING blocks included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("micrec_core"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("micrec_core")}
    return found


def test_every_module_sits_in_a_layer_and_imports_only_downwards() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 40
    upward = []
    for path in modules:
        name = "micrec_core." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if name.endswith("__init__"):
            continue
        own = layer(name)
        for target in imports(path):
            rank = layer(target)
            if name == "micrec_core.config":
                if target != "micrec_core.models.registry":
                    upward.append(f"{name} -> {target} (config may read the registry only)")
            elif own is not None and rank is not None and rank > own:
                upward.append(f"{name} -> {target}")
            elif own == 0 and target == "micrec_core.config":
                upward.append(f"{name} -> {target} (the data layer does not depend on the run configuration)")
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from micrec_core.training.train import train\n"
                      "    from micrec_core.models import idcf\n")
    assert imports(source) == {"micrec_core.training.train", "micrec_core.models"}
    assert layer("micrec_core.training.train") > layer("micrec_core.models")
