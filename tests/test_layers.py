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


def upward(path: Path, name: str) -> list[str]:
    """The imports of module `name` (source `path`) that point to a higher layer than its own."""
    own, found = layer(name), []
    for target in imports(path):
        rank = layer(target)
        if name == "micrec_core.config":
            if target != "micrec_core.models.registry":
                found.append(f"{name} -> {target} (config may read the registry only)")
        elif own is not None and rank is not None and rank > own:
            found.append(f"{name} -> {target}")
        elif own == 0 and target == "micrec_core.config":
            found.append(f"{name} -> {target} (the data layer does not depend on the run configuration)")
    return found


def test_every_module_sits_in_a_layer_and_imports_only_downwards() -> None:
    modules = [path for path in sorted(PACKAGE.rglob("*.py")) if path.name != "__init__.py"]
    assert len(modules) > 40
    names = ["micrec_core." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts) for path in modules]
    assert [found for path, name in zip(modules, names, strict=True) for found in upward(path, name)] == []


def test_the_check_sees_upward_imports_anywhere_in_a_module(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from micrec_core.models import idcf\n\n\ndef f():\n"
                      "    from micrec_core.training.train import train\n")
    assert upward(source, "micrec_core.models.m") == ["micrec_core.models.m -> micrec_core.training.train"]
    assert upward(source, "micrec_core.runs.m") == []
    source.write_text("from micrec_core.config import Config\n")
    assert upward(source, "micrec_core.data.m") == [
        "micrec_core.data.m -> micrec_core.config (the data layer does not depend on the run configuration)"]
