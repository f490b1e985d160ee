"""Scoring: COCO metrics (pycocotools), per-class tables, PR curves and confusion matrices, segmentation mIoU."""
