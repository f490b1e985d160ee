"""Prediction: the :class:`Detector`, the sources it reads (files, folders, video, cameras, streams), tiling."""

from .detector import Detector

__all__ = ["Detector"]
