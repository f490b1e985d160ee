"""The package's layers (docs/ARCHITECTURE.md): imports point down, prediction never loads training code, and the
module paths from before the layout keep importing as the same modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "efficientdet"
# Highest first: a module may import from its own package and from packages further down this list, never up.
LAYERS = ["cli", "tools", "engine", "evaluation", "export", "inference", "ops", "models", "layers", "data", "viz",
          "utils"]  # fmt: skip
OUTSIDE_THE_LAYERS = {"compat", "segmentation", "__init__", "__main__"}  # the public façades and the alias table


def _imported_packages(path: Path) -> list[tuple[str, int]]:
    """(top-level package of efficientdet, line) for every relative import in ``path``, lazy ones included."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    package = list(rel[:-1])  # __init__ files: the folder is the package, as for any other module in it
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if target:
                found.append((target[0], node.lineno))
    return found


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own in OUTSIDE_THE_LAYERS:
            continue
        assert own in LAYERS, f"{path}: a package that is in no layer; add it to LAYERS and docs/ARCHITECTURE.md"
        for target, line in _imported_packages(path):
            if target != own and target in LAYERS and LAYERS.index(target) < LAYERS.index(own):
                wrong.append(f"{path.relative_to(REPO)}:{line} ({own} imports {target})")
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    "module",
    ["efficientdet.inference.predict", "efficientdet.inference.video", "efficientdet.inference.tiling",
     "efficientdet.export.exporter", "efficientdet.export.quantize", "efficientdet.evaluation.validate",
     "efficientdet.segmentation"],
)  # fmt: skip
def test_prediction_never_loads_training_code(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('efficientdet.engine')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_old_module_paths_are_the_same_modules():
    """Users' imports from before the layout (efficientdet.postprocess, efficientdet.nn.detector ...) keep working,
    and give the very module objects of the new paths, so monkeypatching either patches both."""
    import importlib

    import efficientdet
    from efficientdet.compat import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from efficientdet.nn.detector import EfficientDet  # a submodule of a package that moved
    from efficientdet.train import TrainConfig, train  # noqa: F401

    assert EfficientDet is efficientdet.EfficientDet
    assert importlib.import_module("efficientdet.ops.postprocess").__spec__.name == "efficientdet.ops.postprocess"
