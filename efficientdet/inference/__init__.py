"""Prediction: the :class:`Detector` and :class:`Segmenter` (the only code that runs a model on images; evaluation,
``bench`` and export checks call them), the sources they read (files, folders, video, cameras, streams), tiling."""

from .detector import Detector
from .segmenter import Segmenter

__all__ = ["Detector", "Segmenter"]
