"""Label spaces: COCO's 90 category slots and matching class names between a model and a dataset.

The published COCO detectors (the official TF EfficientDet and effdet's port of its weights) predict 90 classes:
output slot ``i`` is COCO category id ``i + 1``. The COCO paper (Lin et al., 2014) lists 91 categories but the
released annotations use 80 of them, so 10 of the ids 1..90 never have a box and their slots were never trained;
they keep a name here (``"unused-12"``) so that slot ``i`` is still category ``i + 1``.

Class names are compared without case and through a small synonym table for Pascal VOC, whose names for the 20
classes it shares with COCO differ in spelling ("aeroplane" / "airplane", "tvmonitor" / "tv").
"""

from __future__ import annotations

from collections.abc import Sequence

# COCO 2017 instances annotations, "categories": id -> name (80 classes; ids 1..90 with gaps).
COCO_CATEGORIES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra",
    25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee",
    35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass", 47: "cup", 48: "fork",
    49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple", 54: "sandwich", 55: "orange", 56: "broccoli",
    57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut", 61: "cake", 62: "chair", 63: "couch",
    64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse",
    75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear", 89: "hair drier",
    90: "toothbrush",
}  # fmt: skip
COCO_NUM_SLOTS = 90  # the official EfficientDet's COCO class count (hparams_config.py: num_classes=90)
COCO_UNUSED_IDS = tuple(i for i in range(1, COCO_NUM_SLOTS + 1) if i not in COCO_CATEGORIES)
UNUSED_PREFIX = "unused-"

# Pascal VOC name -> the COCO name of the same class (the other 14 VOC classes are spelt as in COCO).
VOC_TO_COCO: dict[str, str] = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorcycle",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
}


def coco_slot_names() -> list[str]:
    """The class name of each of the 90 slots (slot i = COCO id i + 1; ids COCO leaves unused: ``"unused-<id>"``)."""
    return [COCO_CATEGORIES.get(i, f"{UNUSED_PREFIX}{i}") for i in range(1, COCO_NUM_SLOTS + 1)]


def coco_slot_ids() -> list[int]:
    """The COCO category id of each of the 90 slots: ``i + 1``."""
    return list(range(1, COCO_NUM_SLOTS + 1))


def canonical_name(name: str) -> str:
    """The form two class names are compared in: lower case, single spaces, VOC spellings mapped to COCO's."""
    key = " ".join(str(name).lower().replace("_", " ").split())
    return VOC_TO_COCO.get(key.replace(" ", ""), VOC_TO_COCO.get(key, key))


def match_class_names(known: Sequence[str], wanted: Sequence[str]) -> dict[int, int]:
    """For each class of ``wanted`` that ``known`` also has (see :func:`canonical_name`): wanted index -> known index.

    Exact names are matched first, so a list that holds both "TV" and "tv" still pairs each with itself. Names
    marked unused (``"unused-12"``) never match: those slots were never trained.
    """
    exact = {n: i for i, n in enumerate(known) if not str(n).startswith(UNUSED_PREFIX)}
    loose: dict[str, int] = {}
    for i, n in enumerate(known):
        if not str(n).startswith(UNUSED_PREFIX):
            loose.setdefault(canonical_name(n), i)
    mapping: dict[int, int] = {}
    taken: set[int] = set()
    for j, n in enumerate(wanted):
        if n in exact and exact[n] not in taken:
            mapping[j] = exact[n]
            taken.add(exact[n])
    for j, n in enumerate(wanted):
        i = loose.get(canonical_name(n))
        if j not in mapping and i is not None and i not in taken:
            mapping[j] = i
            taken.add(i)
    return mapping
