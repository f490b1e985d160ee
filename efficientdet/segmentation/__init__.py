"""The paper's semantic segmentation variant (section 6, SPEC 9): model, data, metrics, training, prediction."""

from .metrics import ConfusionMatrix, metrics_from_confusion
from .model import (
    EfficientDetSegmentation,
    SegmentationConfig,
    create_segmentation_model,
    get_segmentation_config,
    is_segmentation_model,
    list_segmentation_models,
    segmentation_stats,
)
from .predict import predict_segmentation

__all__ = [
    "ConfusionMatrix",
    "EfficientDetSegmentation",
    "SegmentationConfig",
    "create_segmentation_model",
    "get_segmentation_config",
    "is_segmentation_model",
    "list_segmentation_models",
    "metrics_from_confusion",
    "predict_segmentation",
    "segmentation_stats",
]
