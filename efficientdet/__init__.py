"""EfficientDet (Tan, Pang, Le, CVPR 2020) in plain PyTorch: the D0-D7x and Lite0-4 family."""

from .anchors import anchors_for_config, generate_anchors
from .config import ModelConfig, get_config, list_models
from .factory import create_model, load_checkpoint, load_pretrained_backbone, save_model
from .nn.detector import EfficientDet
from .weights import CheckpointError

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
