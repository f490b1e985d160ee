"""Module paths from before the package was split into layers keep importing, as the very same modules.

``import efficientdet.postprocess`` gives ``efficientdet.ops.postprocess`` itself (not a copy), so old imports, pickled
references and ``monkeypatch.setattr("efficientdet.hub.x", ...)`` in users' code keep working. New code imports the
new paths; ``docs/ARCHITECTURE.md`` says what lives where.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

MOVED = {
    "efficientdet.anchors": "efficientdet.ops.anchors",
    "efficientdet.argtypes": "efficientdet.cli.argtypes",
    "efficientdet.atomic": "efficientdet.utils.atomic",
    "efficientdet.bench": "efficientdet.tools.bench",
    "efficientdet.class_filter": "efficientdet.inference.class_filter",
    "efficientdet.config": "efficientdet.models.config",
    "efficientdet.confusion": "efficientdet.evaluation.confusion",
    "efficientdet.data_check": "efficientdet.evaluation.data_check",
    "efficientdet.demo": "efficientdet.tools.demo",
    "efficientdet.distributed": "efficientdet.utils.distributed",
    "efficientdet.draw": "efficientdet.viz.draw",
    "efficientdet.eval_plots": "efficientdet.evaluation.plots",
    "efficientdet.evaluate": "efficientdet.evaluation.coco",
    "efficientdet.export_graph": "efficientdet.export.graph",
    "efficientdet.export_verify": "efficientdet.export.verify",
    "efficientdet.factory": "efficientdet.models.factory",
    "efficientdet.fields": "efficientdet.utils.fields",
    "efficientdet.finetune": "efficientdet.models.finetune",
    "efficientdet.flops": "efficientdet.models.flops",
    "efficientdet.fuse": "efficientdet.models.fuse",
    "efficientdet.hub": "efficientdet.models.hub",
    "efficientdet.labeler": "efficientdet.ops.labeler",
    "efficientdet.labels": "efficientdet.data.labels",
    "efficientdet.losses": "efficientdet.ops.losses",
    "efficientdet.nn": "efficientdet.models",
    "efficientdet.nn.bifpn": "efficientdet.models.bifpn",
    "efficientdet.nn.checkpoint": "efficientdet.layers.checkpoint",
    "efficientdet.nn.detector": "efficientdet.models.detector",
    "efficientdet.nn.efficientnet": "efficientdet.models.efficientnet",
    "efficientdet.nn.head": "efficientdet.models.head",
    "efficientdet.nn.layers": "efficientdet.layers.blocks",
    "efficientdet.openvino_export": "efficientdet.export.openvino",
    "efficientdet.plot": "efficientdet.viz.plot",
    "efficientdet.postprocess": "efficientdet.ops.postprocess",
    "efficientdet.predict": "efficientdet.inference.predict",
    "efficientdet.predict_files": "efficientdet.inference.files",
    "efficientdet.pretrained": "efficientdet.models.pretrained",
    "efficientdet.progress": "efficientdet.utils.progress",
    "efficientdet.quantize": "efficientdet.export.quantize",
    "efficientdet.registry": "efficientdet.models.registry",
    "efficientdet.runtimes": "efficientdet.export.runtimes",
    "efficientdet.segmentation.data": "efficientdet.data.segmentation",
    "efficientdet.segmentation.evaluate": "efficientdet.evaluation.segmentation",
    "efficientdet.segmentation.metrics": "efficientdet.evaluation.segmentation_metrics",
    "efficientdet.segmentation.model": "efficientdet.models.segmenter",
    "efficientdet.segmentation.predict": "efficientdet.inference.segmentation",
    "efficientdet.segmentation.train": "efficientdet.engine.train_segmentation",
    "efficientdet.synthetic": "efficientdet.data.synthetic",
    "efficientdet.tensorboard_log": "efficientdet.engine.tensorboard_log",
    "efficientdet.tiling": "efficientdet.inference.tiling",
    "efficientdet.train": "efficientdet.engine.train",
    "efficientdet.validate": "efficientdet.evaluation.validate",
    "efficientdet.video": "efficientdet.inference.video",
    "efficientdet.weights": "efficientdet.models.weights",
    "efficientdet.weights_options": "efficientdet.cli.weights_options",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers the old names in :data:`MOVED` with the module at the new name (imported on first use)."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname == "efficientdet.nn")

    def __init__(self) -> None:
        self.own_specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self.own_specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system has stamped the old name's spec on the module: give it back its own
        module.__spec__ = self.own_specs[module.__name__]


def install() -> None:
    """Put the finder first, before the path finder could load a moved file a second time under its old name."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())


install()
