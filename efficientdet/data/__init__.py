"""Datasets: readers for COCO JSON / Pascal VOC / YOLO, image loading, augmentation and batching."""
