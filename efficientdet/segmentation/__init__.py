"""The paper's semantic segmentation variant (paper, section 5.2): model, data, metrics, training, prediction."""

from ..evaluation.segmentation_metrics import ConfusionMatrix, metrics_from_confusion
from ..inference.segmentation import predict_segmentation
from ..inference.segmenter import Segmenter
from ..models.segmenter import (
    EfficientDetSegmentation,
    SegmentationConfig,
    create_segmentation_model,
    get_segmentation_config,
    is_segmentation_model,
    list_segmentation_models,
    segmentation_stats,
)

__all__ = [
    "ConfusionMatrix",
    "EfficientDetSegmentation",
    "SegmentationConfig",
    "Segmenter",
    "create_segmentation_model",
    "get_segmentation_config",
    "is_segmentation_model",
    "list_segmentation_models",
    "metrics_from_confusion",
    "predict_segmentation",
    "segmentation_stats",
]
