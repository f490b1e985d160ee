"""EfficientDet (Tan, Pang, Le, CVPR 2020) in plain PyTorch: the D0-D7x and Lite0-4 family."""

from . import compat  # noqa: F401  (first: installs the finder that keeps old module paths importable)
from .models.config import ModelConfig, get_config, list_models
from .models.detector import EfficientDet
from .models.factory import create_model, load_checkpoint, load_pretrained_backbone, save_model
from .models.weights import CheckpointError
from .ops.anchors import anchors_for_config, generate_anchors

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "EfficientDet",
    "ModelConfig",
    "anchors_for_config",
    "create_model",
    "generate_anchors",
    "get_config",
    "list_models",
    "load_checkpoint",
    "load_pretrained_backbone",
    "save_model",
]
