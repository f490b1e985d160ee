"""Exported models: ONNX and torch.export files, OpenVINO IR, int8 quantisation, and their verification."""

from .exporter import (
    DEFAULT_OPSET,
    EXPORT_TOPK,
    FORMATS,
    DetectionOutputs,
    RawOutputs,
    TopKWarning,
    export_module,
    export_onnx,
    export_torch,
    load_torch,
    read_metadata,
    run_onnx,
    run_pt2,
    verify_export,
    verify_exported,
)

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_TOPK",
    "FORMATS",
    "DetectionOutputs",
    "RawOutputs",
    "TopKWarning",
    "export_module",
    "export_onnx",
    "export_torch",
    "load_torch",
    "read_metadata",
    "run_onnx",
    "run_pt2",
    "verify_export",
    "verify_exported",
]
