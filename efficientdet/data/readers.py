"""Readers for the three dataset layouts people actually have: COCO JSON, Pascal VOC XML and YOLO text labels.

Each reader returns the same ``DetectionData`` (pixel x1y1x2y2 boxes, 0-based labels), so nothing downstream knows
the file format. Every box passes through one hygiene step (``_make_record``): boxes are clipped to the image and
boxes left with no area are dropped, with the counts kept in ``DetectionData.fixes`` so the trainer can report them
once instead of logging per box. Problems that would silently corrupt training (unknown classes, malformed lines,
missing annotation files) raise ``DatasetError`` naming the file, and the line or class where there is one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..utils.boxes import box_areas
from ..utils.text import counted, first_few
from .images import ImageReadError, image_size
from .records import DetectionData, ImageRecord

LOG = logging.getLogger(__name__)
_SAID: set[str] = set()  # warnings about a dataset's files, said once a process though each split reads them again


def _warn_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        LOG.warning(message)


# how far a YOLO coordinate may stray outside 0..1 and still be a box at the picture's edge (clipped while reading);
# beyond it the file holds pixels, not fractions
NORMALISED_SLACK = 0.1
MIN_POLYGON_POINTS = 3  # an object's outline, where a format gives one instead of a box (YOLO, COCO)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FORMATS = ("coco", "voc", "yolo")
_CLASS_FILES = ("classes.txt", "labels.txt")


class DatasetError(ValueError):
    """A dataset that cannot be read as it is; the message names the file (and the line or class at fault)."""


# --------------------------------------------------------------------------------------------------- shared hygiene


def _new_fixes() -> dict[str, int]:
    """All counters present from the start, so reports and tests see the same keys for every dataset."""
    return {"clipped_boxes": 0, "zero_area_boxes": 0, "unreadable_images": 0}


def _make_record(
    path: Path,
    image_id: int,
    size: tuple[int, int],
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    iscrowd: Sequence[bool],
    fixes: dict[str, int],
    areas: Sequence[float | None] | None = None,
) -> ImageRecord:
    """Build a record after the box hygiene every reader shares.

    Boxes are clipped to ``[0, width] x [0, height]``; a box that changed is counted in ``clipped_boxes``. Boxes left
    with width or height <= 0 are dropped and counted in ``zero_area_boxes`` only (not also as clipped), so each
    problem box is counted once. Matching and the loss assume every remaining box is inside the image and non-empty.
    ``areas`` (COCO's own ``area`` per annotation, None where one lacks it) are kept for the boxes kept; a missing
    entry becomes the box's area as annotated.
    """
    width, height = size
    box_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = box_array.copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0.0, float(width))
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0.0, float(height))
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = np.any(clipped != box_array, axis=1)
    fixes["clipped_boxes"] += int(np.count_nonzero(changed & keep))
    fixes["zero_area_boxes"] += int(np.count_nonzero(~keep))
    area_array = None
    if areas is not None:
        annotated = box_areas(box_array)
        area_array = np.array([annotated[i] if a is None else a for i, a in enumerate(areas)], np.float64)[keep]
    return ImageRecord(
        path=os.path.abspath(path),
        image_id=image_id,
        width=int(width),
        height=int(height),
        boxes=clipped[keep],
        labels=np.asarray(labels, dtype=np.int64).reshape(-1)[keep],
        iscrowd=np.asarray(iscrowd, dtype=bool).reshape(-1)[keep],
        areas=area_array,
    )


def _size_from_header(path: Path, fixes: dict[str, int]) -> tuple[int, int] | None:
    """The image's size read from its header, or None (counted in ``unreadable_images``) when it cannot be read.

    An unreadable image does not stop reading the dataset: its record keeps width = height = 0 and no boxes, and the
    training loop skips it with a warning.
    """
    try:
        return image_size(path)
    except ImageReadError:
        fixes["unreadable_images"] += 1
        return None


def _unreadable_record(path: Path, image_id: int) -> ImageRecord:
    """The placeholder kept for an image whose size could not be read (see ``_size_from_header``)."""
    return ImageRecord(path=os.path.abspath(path), image_id=image_id, width=0, height=0)


def _finite_number(text: Any, where: str) -> float:
    """A finite float from text or JSON, or a DatasetError naming ``where``: NaN boxes would poison the loss."""
    try:
        value = float(text)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: expected a number, got {text!r}") from exc
    if not math.isfinite(value):
        raise DatasetError(f"{where}: expected a finite number, got {text!r}")
    return value


def _read_class_file(path: Path) -> list[str]:
    """Class names one per line (blank lines ignored); a duplicate would make two labels mean the same class."""
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DatasetError(f"{path}: duplicate class names {duplicates}")
    if not names:
        raise DatasetError(f"{path}: no class names")
    return names


# ------------------------------------------------------------------------------------------------------------- VOC


def read_voc(root: str | os.PathLike, split: str) -> DetectionData:
    """Read a Pascal VOC split: ``Annotations/<id>.xml``, ``JPEGImages/<id>.<ext>``, ``ImageSets/Main/<split>.txt``.

    Coordinates: VOC pixels are 1-based and inclusive (a box covering the whole W-wide image is xmin=1, xmax=W), so
    x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax gives 0-based corners with x2 - x1 = the box's pixel width.

    ``difficult`` objects are kept as ordinary boxes: the record has no per-box difficult flag, they are real
    objects (dropping them would teach the model to call them background), and only the VOC-2007 metric sets them
    aside; this library evaluates with the COCO metric, which has no such notion.

    Class names come from ``classes.txt`` or ``labels.txt`` in ``root`` when present (an object of another class is
    then an error), else from the sorted names found in this split's annotations. Without a class file two splits
    can disagree on the label indices (a class missing from one split shifts the others), so ship a class file
    whenever splits are read separately.

    Two layouts without ``ImageSets/`` are read too (:func:`_voc_set`): Roboflow's Pascal VOC export, a folder per
    split (``valid/`` for ``val``) with each image beside its XML file, and one folder of images and XML files
    (labelImg's output; also ``Annotations/`` + ``JPEGImages/`` without ``ImageSets/``), which is one set whatever
    the split asked (:func:`single_set`). There the images without an XML file are left out with a warning.
    """
    root = Path(root)
    xml_folder, image_folder, ids = _voc_set(root, split)
    image_paths = _images_by_stem(image_folder)
    annotations = every_or_all_problems(ids, lambda image_id: _parse_voc_xml(xml_folder / f"{image_id}.xml"))
    class_file = next((root / name for name in _CLASS_FILES if (root / name).is_file()), None)
    if class_file is not None:
        class_names = _read_class_file(class_file)
    else:
        class_names = sorted({obj[0] for ann in annotations for obj in ann["objects"]})
        _warn_case_variants(root, class_names)
    class_index = {name: index for index, name in enumerate(class_names)}
    fixes = _new_fixes()
    records = []
    for index, (stem, ann) in enumerate(zip(ids, annotations)):
        if stem not in image_paths:
            raise DatasetError(f"{image_folder}: no image for id {stem!r} (looked for {IMAGE_EXTENSIONS})")
        records.append(_voc_record(index, image_paths[stem], ann, class_index, fixes))
    return DetectionData(records=records, class_names=class_names, format="voc", fixes=fixes)


def _warn_case_variants(root: Path, class_names: list[str]) -> None:
    """A warning for names found in the annotations that differ only in case ("Raccoon" and "raccoon"): most likely
    one class typed two ways, which would train as two. Kept as written: the data says two names."""
    by_folded: dict[str, list[str]] = {}
    for name in class_names:
        by_folded.setdefault(name.casefold(), []).append(name)
    variants = [name for names in by_folded.values() if len(names) > 1 for name in names]
    if variants:
        _warn_once(f"{root}: class names that differ only in case: {', '.join(map(repr, variants))} (one class "
                   "written two ways? they train as separate classes; correct the XML files, or list the classes in "
                   "classes.txt)")  # fmt: skip


_PER_CLASS_SPLIT = re.compile(r".+_(train|val|trainval|test)")


VOC_SPLIT_FILES, VOC_ONE_SET, VOC_SPLIT_FOLDERS = "split files", "one set", "split folders"


def _voc_layout(root: Path) -> str:
    """Which VOC layout ``root`` holds: VOC_SPLIT_FILES (``Annotations/`` with ``ImageSets/Main/<split>.txt``),
    VOC_ONE_SET (``Annotations/`` without ``ImageSets/``, or XML files in ``root`` itself: every XML file, whatever
    the split) or VOC_SPLIT_FOLDERS (a folder of images and XML files per split, Roboflow's export). The one rule
    that reading, :func:`single_set` and :func:`has_split` follow."""
    if (root / "Annotations").is_dir():
        return VOC_SPLIT_FILES if (root / "ImageSets").is_dir() else VOC_ONE_SET
    return VOC_ONE_SET if _holds_xml(root) else VOC_SPLIT_FOLDERS


def _voc_set(root: Path, split: str) -> tuple[Path, Path, list[str]]:
    """Where a VOC split's XML files and images are, and its image ids (the XML files' stems), by
    :func:`_voc_layout`."""
    layout = _voc_layout(root)
    if layout == VOC_SPLIT_FILES:
        ids = _read_voc_split(root / "ImageSets" / "Main" / f"{split}.txt")
        return root / "Annotations", root / "JPEGImages", ids
    if layout == VOC_ONE_SET:
        if (root / "Annotations").is_dir():
            return root / "Annotations", root / "JPEGImages", _xml_stems(root / "Annotations", root / "JPEGImages")
        return root, root, _xml_stems(root, root)
    folder = next((root / name for name in split_folder_names(split) if _holds_xml(root / name)), None)
    if folder is None:
        there = sorted(child.name for child in root.iterdir() if _holds_xml(child)) if root.is_dir() else []
        hint = f"the splits here: {', '.join(there)}" if there else "no folder here holds XML files"
        raise DatasetError(f"{root}: no folder '{split}/' of images and XML files ({hint})")
    return folder, folder, _xml_stems(folder, folder)


def _holds_xml(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.xml"))


def _xml_stems(xml_folder: Path, image_folder: Path) -> list[str]:
    """The sorted stems of the XML files in ``xml_folder``; a warning names the images of ``image_folder`` that have
    none (left out: an image nobody labelled is not known to hold no objects)."""
    stems = sorted(path.stem for path in xml_folder.glob("*.xml"))
    labelled = set(stems)
    unlabelled = sorted(p.name for p in image_folder.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                        and p.stem not in labelled) if image_folder.is_dir() else []  # fmt: skip
    if unlabelled:
        _warn_once(f"{image_folder}: {counted(len(unlabelled), 'image')} without an XML file left out "
                   f"({first_few(unlabelled)})")  # fmt: skip
    return stems


def single_set(path: str | os.PathLike, format: str | None) -> bool:
    """Whether the dataset at ``path`` is one set with no named splits: a COCO JSON file, a VOC folder without
    ``ImageSets/`` (one folder of images and XML files, or ``Annotations/`` + ``JPEGImages/``), a YOLO folder without
    ``data.yaml``. Any split name reads all of it, so validation must be held out of it."""
    path = Path(path)
    try:
        fmt = format.lower() if format else _detect_format(path, "train")
    except DatasetError:
        return False
    if fmt == "coco":
        return path.is_file()
    if fmt == "voc":
        return _voc_layout(path) == VOC_ONE_SET
    if fmt == "yolo":
        return path.is_dir() and not (path / "data.yaml").is_file() and _yolo_class_file(path) is not None
    return False


def _read_voc_split(path: Path) -> list[str]:
    """Image ids of a split file: the first word of each non-blank line (VOC's ``<id>  1`` class lists included)."""
    if not path.is_file():
        # VOC's own ImageSets/Main also holds a <class>_<split>.txt per class and split: not splits to offer
        there = sorted(p.stem for p in path.parent.glob("*.txt") if not _PER_CLASS_SPLIT.fullmatch(p.stem))
        hint = f"the splits here: {', '.join(there)}" if there else f"no split files in {path.parent}"
        raise DatasetError(f"{path}: split file not found ({hint})")
    return [line.split()[0] for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def _images_by_stem(folder: Path) -> dict[str, Path]:
    """Map file stem -> image path; when a stem has several extensions the earliest in IMAGE_EXTENSIONS wins."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder not found")
    found: dict[str, Path] = {}
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    for entry in sorted(folder.iterdir()):
        suffix = entry.suffix.lower()
        if suffix not in rank or not entry.is_file():
            continue
        current = found.get(entry.stem)
        if current is None or rank[suffix] < rank[current.suffix.lower()]:
            found[entry.stem] = entry
    return found


MAX_NAMED_PROBLEMS = 10  # label files named in one error; the rest are counted


def every_or_all_problems(items: Iterable[Any], read: Callable[[Any], Any]) -> list[Any]:
    """``read`` of each item, or one DatasetError naming every item that failed (the first ``MAX_NAMED_PROBLEMS``,
    then a count): a dataset with many bad label files is then fixed in one pass of ``check-data`` or ``train``
    instead of one file per run. A single problem keeps its own message."""
    results, problems = [], []
    for item in items:
        try:
            results.append(read(item))
        except DatasetError as e:
            problems.append(str(e))
    if len(problems) == 1:
        raise DatasetError(problems[0])
    if problems:
        more = f"; and {len(problems) - MAX_NAMED_PROBLEMS} more" if len(problems) > MAX_NAMED_PROBLEMS else ""
        named = "; ".join(problems[:MAX_NAMED_PROBLEMS])
        raise DatasetError(f"{len(problems)} label files have problems: {named}{more}")
    return results


def _parse_voc_xml(path: Path) -> dict[str, Any]:
    """Size and ``(name, [xmin, ymin, xmax, ymax])`` objects of one VOC annotation, raw VOC coordinates."""
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(f"{path}: malformed XML ({exc})") from exc
    objects = [_parse_voc_object(path, number, obj) for number, obj in enumerate(root.findall("object"), start=1)]
    return {"path": path, "size": _voc_size(path, root), "objects": objects}


def _voc_size(path: Path, root: ET.Element) -> tuple[int, int] | None:
    """``(width, height)`` from ``<size>``, or None when it is absent or zero (some exporters write 0)."""
    width_text, height_text = root.findtext("size/width"), root.findtext("size/height")
    if width_text is None or height_text is None:
        return None
    width = int(_finite_number(width_text, f"{path}: <size><width>"))
    height = int(_finite_number(height_text, f"{path}: <size><height>"))
    return (width, height) if width > 0 and height > 0 else None


def _parse_voc_object(path: Path, number: int, obj: ET.Element) -> tuple[str, list[float]]:
    """One ``<object>``: its class name and raw bndbox, or a DatasetError naming the file and the object."""
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise DatasetError(f"{path}: object {number} has no <name>")
    corners = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = obj.findtext(f"bndbox/{tag}")
        if text is None:
            raise DatasetError(f"{path}: object {number} ({name}) has no <bndbox><{tag}>")
        corners.append(_finite_number(text.strip(), f"{path}: object {number} ({name}) <{tag}>"))
    return name, corners


def _voc_record(
    index: int, image_path: Path, ann: dict[str, Any], class_index: dict[str, int], fixes: dict[str, int]
) -> ImageRecord:
    """Convert one parsed VOC annotation (1-based inclusive corners) into a record (0-based, exclusive x2/y2)."""
    size = ann["size"] or _size_from_header(image_path, fixes)
    if size is None:
        return _unreadable_record(image_path, index)
    boxes, labels = [], []
    for name, (xmin, ymin, xmax, ymax) in ann["objects"]:
        if name not in class_index:
            raise DatasetError(f"{ann['path']}: class {name!r} is not in the class list {list(class_index)}")
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
        labels.append(class_index[name])
    return _make_record(image_path, index, size, boxes, labels, [False] * len(labels), fixes)


# ------------------------------------------------------------------------------------------------------------ COCO


def read_coco(annotation_json: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> DetectionData:
    """Read a COCO ``instances`` JSON: images (kept with their COCO ids), categories and annotations.

    ``class_names`` are ordered by category id and ``category_ids`` holds the id of each class, so label ``i`` is
    COCO category ``category_ids[i]`` (COCO ids have gaps: 1..90 for 80 classes). Boxes ``[x, y, w, h]`` become
    ``[x, y, x + w, y + h]``; ``iscrowd`` defaults to 0. Images without annotations are kept as negatives. A category
    that other categories name as their ``supercategory`` and that no box uses is not a class (Roboflow's exports
    list the project so, as category 0), unless it is the only kind of category there is.

    ``image_dir`` defaults to the first of these folders that holds the first image's ``file_name``: ``images/``
    beside the JSON; for the COCO layout ``<root>/annotations/instances_<split>.json``, ``<root>/<split>``,
    ``<root>/images/<split>`` and ``<root>/images``; the JSON's own folder (Roboflow exports). When none holds it,
    the first of them that exists (else the JSON's folder) is used and missing files surface when loaded. A
    ``file_name`` with a folder in it (``images/a.jpg``) that is not in that folder is looked for from the JSON's
    folder. Images without ``width`` / ``height`` (or with zero) take the file's size. An annotation without ``bbox``
    takes the box of its polygon ``segmentation``; annotations of image ids not in ``images`` are left out with a
    warning.
    """
    json_path = Path(annotation_json)
    content = _load_json(json_path)
    categories = _coco_categories(json_path, content)
    parents = _unused_parent_categories(json_path, content)
    for cat_id in parents if len(parents) < len(categories) else ():
        LOG.info("%s: category %s %r is the supercategory of the others and has no boxes (as Roboflow exports "
                 "write the project's name): not a class", json_path, cat_id, categories.pop(cat_id))  # fmt: skip
    category_ids = sorted(categories)
    label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}
    images = _coco_images(json_path, content)
    folder = Path(image_dir) if image_dir is not None else _default_coco_image_dir(json_path, images)
    boxes_of = _coco_annotations(json_path, content, images, label_of)
    fixes = _new_fixes()
    records = [_coco_record(_coco_image_path(folder, json_path.parent, image), image, boxes_of[image["id"]], fixes)
               for image in images]  # fmt: skip
    boxes = sum(len(objects) for objects in boxes_of.values())
    if boxes >= 10 and fixes["clipped_boxes"] * 2 > boxes:
        _warn_once(f"{json_path}: {fixes['clipped_boxes']} of {boxes} boxes run off their image and were clipped: is "
                   "bbox written as [x1, y1, x2, y2]? COCO's is [x, y, width, height]")  # fmt: skip
    return DetectionData(
        records=records,
        class_names=[categories[cat_id] for cat_id in category_ids],
        format="coco",
        fixes=fixes,
        category_ids=category_ids,
    )


def _load_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or a DatasetError naming it."""
    try:
        content = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read annotation file ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: malformed JSON ({exc})") from exc
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'images' and 'categories'")
    return content


def _require(path: Path, entry: Any, keys: Iterable[str], what: str) -> None:
    """Fail with the file and the missing key rather than a KeyError deep in the reader."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: {what} is not a JSON object: {entry!r}")
    for key in keys:
        if key not in entry:
            raise DatasetError(f"{path}: {_entry_name(entry, what)} is missing the key {key!r}")


def _entry_name(entry: dict[str, Any], what: str) -> str:
    """``what`` ("an annotation") named by the entry's id and image where it has them: "annotation 5 (image 7)"."""
    name = f"{what.split(' ', 1)[1]} {entry['id']}" if "id" in entry else what
    return f"{name} (image {entry['image_id']})" if "image_id" in entry else name


def _coco_list(path: Path, content: dict[str, Any], key: str, required: bool = True) -> list[Any]:
    """A top-level list of the COCO JSON (``annotations`` may be absent, as in test-dev image-info files)."""
    if key not in content:
        if required:
            raise DatasetError(f"{path}: missing the top-level key {key!r}")
        return []
    value = content[key]
    if not isinstance(value, list):
        raise DatasetError(f"{path}: {key!r} must be a list")
    return value


def _coco_categories(path: Path, content: dict[str, Any]) -> dict[int, str]:
    """Category id -> name, with duplicate ids rejected (they would make labels ambiguous)."""
    categories: dict[int, str] = {}
    for category in _coco_list(path, content, "categories"):
        _require(path, category, ("id", "name"), "a category")
        if category["id"] in categories:
            raise DatasetError(f"{path}: category id {category['id']} appears twice")
        categories[category["id"]] = str(category["name"])
    if not categories:
        raise DatasetError(f"{path}: no categories")
    return categories


def _unused_parent_categories(path: Path, content: dict[str, Any]) -> list[int]:
    """Ids of categories that another category names as its ``supercategory`` and that no annotation uses."""
    entries = [c for c in _coco_list(path, content, "categories") if isinstance(c, dict)]
    annotations = _coco_list(path, content, "annotations", required=False)
    used = {a.get("category_id") for a in annotations if isinstance(a, dict)}
    named_as_parent = {c.get("supercategory") for c in entries if c.get("supercategory") != c["name"]}
    return [c["id"] for c in entries if c["name"] in named_as_parent and c["id"] not in used]


def _coco_images(path: Path, content: dict[str, Any]) -> list[dict[str, Any]]:
    """The image entries in file order, each with id and file_name (width and height, where given, are numbers;
    where not, the file's header says them, :func:`_coco_record`); duplicate ids rejected."""
    images = _coco_list(path, content, "images")
    seen: set[Any] = set()
    for image in images:
        _require(path, image, ("id", "file_name"), "an image")
        if image["id"] in seen:
            raise DatasetError(f"{path}: image id {image['id']} appears twice")
        seen.add(image["id"])
        for key in ("width", "height"):
            if key in image:
                _finite_number(image[key], f"{path}: image {image['id']} {key}")
    return images


_CocoObject = tuple[list[float], int, bool, float | None]


def _coco_annotations(
    path: Path, content: dict[str, Any], images: list[dict[str, Any]], label_of: dict[int, int]
) -> dict[Any, list[_CocoObject]]:
    """Per image id, its ``(x1y1x2y2 box, label, iscrowd, area)`` list; every image id present, possibly empty.

    ``area`` is the annotation's own (None when absent): COCO's small / medium / large split is defined on it.
    """
    boxes_of: dict[Any, list[_CocoObject]] = {image["id"]: [] for image in images}
    orphans: dict[Any, int] = {}  # image id not in 'images' -> its annotation count
    for ann in _coco_list(path, content, "annotations", required=False):
        _require(path, ann, ("image_id", "category_id"), "an annotation")
        where = f"{path}: annotation {ann.get('id', '?')}"
        if ann["category_id"] not in label_of:
            raise DatasetError(f"{where} has category id {ann['category_id']}, which is not in 'categories'")
        x1, y1, x2, y2 = _coco_box(path, ann)
        if ann["image_id"] not in boxes_of:
            orphans[ann["image_id"]] = orphans.get(ann["image_id"], 0) + 1
            continue
        crowd = bool(ann.get("iscrowd", 0))
        area = _finite_number(ann["area"], f"{where} area") if ann.get("area") is not None else None
        boxes_of[ann["image_id"]].append(([x1, y1, x2, y2], label_of[ann["category_id"]], crowd, area))
    corners = [box for objects in boxes_of.values() for box, _, _, _ in objects]
    if corners and max(max(box) for box in corners) <= 1 and any(image.get("width", 0) > 2 for image in images):
        raise DatasetError(f"{path}: every bbox lies within 0..1 (fractions of the image?); COCO's bbox is [x, y, "
                           "width, height] in pixels")  # fmt: skip
    if orphans:
        ids = list(orphans)
        shown = first_few([str(image_id) for image_id in ids])
        count = sum(orphans.values())
        LOG.warning("%s: left out %d annotation%s whose image is not in 'images' (image id%s %s)", path, count,
                    "s" if count > 1 else "", "s" if len(ids) > 1 else "", shown)  # fmt: skip
    return boxes_of


def _coco_box(path: Path, ann: dict[str, Any]) -> tuple[float, float, float, float]:
    """An annotation's ``x1, y1, x2, y2``: its ``bbox``, or, where a converter left ``bbox`` out, the box around all
    of its ``segmentation`` polygons (COCO defines ``bbox`` as that box). A run-length-encoded outline without a
    ``bbox`` is an error (its box would need the mask decoded)."""
    where = f"{path}: annotation {ann.get('id', '?')}"
    if "bbox" in ann:
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DatasetError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
        x, y, w, h = (_finite_number(value, f"{where} bbox") for value in bbox)
        return x, y, x + w, y + h
    polygons = ann.get("segmentation")
    if not isinstance(polygons, list) or not polygons or not all(isinstance(p, list) for p in polygons):
        raise DatasetError(f"{path}: {_entry_name(ann, 'an annotation')} has no 'bbox' and no polygon 'segmentation' "
                           "to take one from")  # fmt: skip
    points: list[float] = []
    for polygon in polygons:
        if len(polygon) < 2 * MIN_POLYGON_POINTS or len(polygon) % 2:
            raise DatasetError(f"{where}: segmentation polygon must be x y pairs, three or more, got {polygon!r}")
        points += [_finite_number(value, f"{where} segmentation") for value in polygon]
    return _outline_box(points)


def _outline_box(points: Sequence[float]) -> tuple[float, float, float, float]:
    """``x1, y1, x2, y2`` around an outline given as ``x y`` pairs (one polygon or several, one after the other)."""
    xs, ys = points[0::2], points[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def _default_coco_image_dir(json_path: Path, images: list[dict[str, Any]]) -> Path:
    """Guess the image folder of a COCO JSON (the order is documented on ``read_coco``)."""
    here = json_path.parent
    candidates = [here / "images"]
    if here.name == "annotations":
        split = json_path.stem.removeprefix("instances_")
        candidates += [here.parent / split, here.parent / "images" / split, here.parent / "images"]
    candidates.append(here)
    if images:
        first = str(images[0]["file_name"])
        for folder in candidates:
            if (folder / first).is_file():
                return folder
    return next((folder for folder in candidates if folder.is_dir()), here)


def _coco_image_path(folder: Path, json_folder: Path, image: dict[str, Any]) -> Path:
    """Where an image's ``file_name`` is: in the image folder, or, for a name with a folder in it that is not
    there, relative to the JSON's folder where it is there (exporters that write ``images/a.jpg``); a name written
    on Windows (``sub\\a.jpg``) is looked for with its backslashes as folder separators too."""
    name = str(image["file_name"])
    for candidate in dict.fromkeys((name, _slashed(name))):
        if (folder / candidate).is_file():
            return folder / candidate
        if ("/" in candidate or "\\" in candidate) and (json_folder / candidate).is_file():
            return json_folder / candidate
    return folder / name


def _listed_path(folder: Path, line: str) -> Path:
    """An image path of a list, relative to the list's ``folder``; one written on Windows is read with its
    backslashes as separators where the name as written is not there."""
    path = folder / line
    return path if path.exists() else folder / _slashed(line)


def _slashed(name: str) -> str:
    """A path written on Windows with forward slashes, which every system reads as folder separators."""
    return name.replace("\\", "/")


def _coco_record(path: Path, image: dict[str, Any], objects: list[_CocoObject], fixes: dict[str, int]) -> ImageRecord:
    """One COCO image (its file at ``path``); a width/height that the JSON leaves out or gives as zero comes from the
    file's header."""
    size = (int(image.get("width", 0)), int(image.get("height", 0)))
    if size[0] <= 0 or size[1] <= 0:
        size = _size_from_header(path, fixes)
        if size is None:
            return _unreadable_record(path, image["id"])
    boxes = [box for box, _, _, _ in objects]
    labels = [label for _, label, _, _ in objects]
    crowd = [is_crowd for _, _, is_crowd, _ in objects]
    areas = [area for _, _, _, area in objects]
    return _make_record(path, image["id"], size, boxes, labels, crowd, fixes, areas)


# ------------------------------------------------------------------------------------------------------------ YOLO


def read_yolo(root: str | os.PathLike, split: str) -> DetectionData:
    """Read a YOLO split described by ``root/data.yaml`` (``root`` may also be the yaml file itself).

    The split entry (``train: images/train``) is a folder of images (searched recursively), a ``.txt`` file listing
    image paths (relative ones are taken relative to the list's folder), or a list of those; relative entries are
    resolved against the yaml's ``path:`` key when given (itself relative to the yaml's folder), else the yaml's
    folder. The label file of ``.../images/<sub>/<stem>.<ext>`` is ``.../labels/<sub>/<stem>.txt`` (the last
    ``images`` path component replaced); with no ``images`` component it is ``<stem>.txt`` beside the image. A
    missing or empty label file makes the image a negative. Lines are ``class cx cy w h``, normalised to 0..1, with an
    optional sixth column (a detection's score, ignored).

    A folder without ``data.yaml`` that holds ``classes.txt`` or ``obj.names`` (labelImg's YOLO output, Darknet and
    CVAT's YOLO export) is one set whatever the split (:func:`single_set`): its images, searched as a split folder.
    """
    yaml_path = Path(root)
    if yaml_path.is_dir():
        class_file = _yolo_class_file(yaml_path)
        if class_file is not None and not (yaml_path / "data.yaml").is_file():
            return _read_yolo_folder(yaml_path, class_file)
        yaml_path = yaml_path / "data.yaml"
    config = _load_yolo_yaml(yaml_path)
    class_names = _yolo_names(yaml_path, config)
    image_paths = _yolo_split_images(yaml_path, config, split)
    fixes = _new_fixes()
    records = every_or_all_problems(
        enumerate(image_paths), lambda item: _yolo_record(item[0], item[1], len(class_names), fixes)
    )
    # a split without one box may have its label files elsewhere: looked for only then, not for every split read
    no_boxes = not any(len(record.boxes) for record in records)
    if image_paths and no_boxes and all(_yolo_label_file(path) is None for path in image_paths):
        example = yolo_label_path(image_paths[0])
        try:
            shown = os.path.relpath(example, yaml_path.parent)
        except ValueError:  # another drive (Windows)
            shown = str(example)
        _warn_once(f"{yaml_path}: split {split!r} has {counted(len(image_paths), 'image')} and no label file (looked "
                   f"for {shown}, and {example.name} beside the image): every image trains as a negative")  # fmt: skip
    return DetectionData(records=records, class_names=class_names, format="yolo", fixes=fixes)


YOLO_CLASS_FILES = ("classes.txt", "obj.names")  # the class list of a YOLO folder without data.yaml


def _yolo_class_file(folder: Path) -> Path | None:
    return next((folder / name for name in YOLO_CLASS_FILES if (folder / name).is_file()), None)


def _read_yolo_folder(folder: Path, class_file: Path) -> DetectionData:
    """A YOLO set without ``data.yaml``: the class names of ``class_file``, every image under ``folder``."""
    class_names = _read_class_file(class_file)
    fixes = _new_fixes()
    records = every_or_all_problems(
        enumerate(_yolo_entry_images(class_file, folder)),
        lambda item: _yolo_record(item[0], item[1], len(class_names), fixes),
    )
    return DetectionData(records=records, class_names=class_names, format="yolo", fixes=fixes)


def _load_yolo_yaml(path: Path) -> dict[str, Any]:
    """The yaml as a dict (``yaml.safe_load``: plain data only, never objects or code)."""
    if not path.is_file():
        raise DatasetError(f"{path}: dataset yaml not found")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: malformed YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise DatasetError(f"{path}: expected a mapping with 'names' and split entries")
    return config


def _yolo_names(path: Path, config: dict[str, Any]) -> list[str]:
    """Class names from ``names`` (a list, or a mapping index -> name covering 0..n-1), checked against ``nc``."""
    names = config.get("names")
    count = config.get("nc")
    if names is None and isinstance(count, int) and not isinstance(count, bool) and count > 0:
        names = [f"class_{index}" for index in range(count)]  # ultralytics' names for a yaml that gives none
        _warn_once(f"{path}: no 'names': the {count} classes are called class_0 ... class_{count - 1}")
    if isinstance(names, dict):
        try:
            by_index = {int(key): str(value) for key, value in names.items()}
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: 'names' keys must be class indices ({exc})") from exc
        if sorted(by_index) != list(range(len(by_index))):
            raise DatasetError(f"{path}: 'names' indices must be 0..{len(by_index) - 1}, got {sorted(by_index)}")
        names = [by_index[index] for index in range(len(by_index))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{path}: 'names' must be a non-empty list or mapping of class names")
    names = [str(name) for name in names]
    if config.get("nc") is not None and config["nc"] != len(names):
        raise DatasetError(f"{path}: nc is {config['nc']} but 'names' has {len(names)} entries")
    return names


def _yolo_split_images(path: Path, config: dict[str, Any], split: str) -> list[Path]:
    """All image paths of a split entry, in a stable (sorted per folder) order."""
    if config.get(split) in (None, ""):
        splits = [key for key, value in config.items()
                  if key not in ("path", "names", "download") and isinstance(value, (str, list))]  # fmt: skip
        raise DatasetError(f"{path}: no entry for split {split!r} (entries: {splits})")
    base = path.parent
    entries = config[split] if isinstance(config[split], list) else [config[split]]
    if config.get("path"):
        given = base / str(config["path"])
        beside = [_yolo_entry_path(base, str(entry)) for entry in entries]
        if given.exists() or not all(entry.exists() for entry in beside):
            base = given
        else:  # a yaml written on another machine (Colab's /content/..., ultralytics' ../datasets/<name>)
            _warn_once(f"{path}: path: {config['path']} does not exist; reading the split entries beside the yaml "
                       f"({path.parent})")  # fmt: skip
    images: list[Path] = []
    for entry in entries:
        images += _yolo_entry_images(path, _yolo_entry_path(base, str(entry)))
    return images


def _yolo_entry_path(base: Path, entry: str) -> Path:
    """Resolve a split entry; Roboflow exports write ``../train/images`` for a folder that sits beside the yaml, and
    a yaml written on Windows may say ``images\\train``."""
    resolved = base / entry
    if not resolved.exists() and (base / _slashed(entry)).exists():
        entry = _slashed(entry)
        resolved = base / entry
    if not resolved.exists() and entry.startswith("../") and (base / entry[3:]).exists():
        return base / entry[3:]
    return resolved


def _yolo_entry_images(yaml_path: Path, entry: Path) -> list[Path]:
    """Images of one split entry: a folder (recursive) or a ``.txt`` list of image paths."""
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if entry.is_file() and entry.suffix.lower() == ".txt":
        lines = [line.strip() for line in entry.read_text(encoding="utf-8-sig").splitlines()]
        return [_listed_path(entry.parent, line) for line in lines if line]
    raise DatasetError(f"{yaml_path}: split entry {entry} is neither a folder nor a .txt list of images")


def yolo_label_path(image_path: str | os.PathLike) -> Path:
    """The label file of an image: the last ``images`` component of its path becomes ``labels``, suffix ``.txt``."""
    parts = list(Path(image_path).with_suffix(".txt").parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts)


def _yolo_label_file(image_path: Path) -> Path | None:
    """The label file of an image: at :func:`yolo_label_path`, or ``<stem>.txt`` beside the image (labels left in
    the images folder); None when neither exists."""
    for path in (yolo_label_path(image_path), image_path.with_suffix(".txt")):
        if path.is_file():
            return path
    return None


def _yolo_record(index: int, image_path: Path, num_classes: int, fixes: dict[str, int]) -> ImageRecord:
    """One YOLO image: labels are validated first, so a bad label file fails even if its image is unreadable."""
    label_path = _yolo_label_file(image_path)
    rows = _read_yolo_labels(label_path, num_classes) if label_path is not None else []
    size = _size_from_header(image_path, fixes)
    if size is None:
        return _unreadable_record(image_path, index)
    width, height = size
    boxes = [
        [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        for _, cx, cy, w, h in rows
    ]
    labels = [row[0] for row in rows]
    return _make_record(image_path, index, size, boxes, labels, [False] * len(labels), fixes)


def _read_yolo_labels(path: Path, num_classes: int) -> list[tuple[int, float, float, float, float]]:
    """``(class, cx, cy, w, h)`` rows of a label file; blank lines are skipped, anything else must be valid.

    A sixth column is a confidence (``efficientdet predict --save-txt --save-conf`` writes one, as YOLOv5's
    ``detect.py --save-conf`` does): it must be a number and is ignored, so auto-labelled files train as they are.
    A line of three or more points (``class x1 y1 x2 y2 x3 y3 ...``, a YOLO segmentation label) is an object's
    outline: its bounding box is the row, as ultralytics' detection trainer reads such files.
    """
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}: line {number}"
        is_polygon = len(fields) >= 1 + 2 * MIN_POLYGON_POINTS and len(fields) % 2 == 1
        if len(fields) not in (5, 6) and not is_polygon:
            raise DatasetError(f"{where}: expected 'class cx cy w h' (and an optional score) or a polygon 'class x1 "
                               f"y1 x2 y2 x3 y3 ...', got {line.strip()!r}")  # fmt: skip
        if is_polygon:
            x1, y1, x2, y2 = _outline_box([_finite_number(field, where) for field in fields[1:]])
            fields = [fields[0], *map(repr, ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))]
        if len(fields) == 6:
            _finite_number(fields[5], f"{where} score")
            fields = fields[:5]
        class_value = _finite_number(fields[0], f"{where} class")
        if class_value != int(class_value):
            raise DatasetError(f"{where}: class index must be an integer, got {fields[0]!r}")
        class_index = int(class_value)
        if not 0 <= class_index < num_classes:
            raise DatasetError(f"{where}: class index {class_index} is out of range (the dataset has {num_classes})")
        cx, cy, w, h = (_finite_number(field, where) for field in fields[1:])
        outside = [value for value in (cx, cy, w, h) if not -NORMALISED_SLACK <= value <= 1 + NORMALISED_SLACK]
        if outside:
            raise DatasetError(f"{where}: coordinates must be normalised to 0..1 (got {outside[0]:g}: pixels? divide "
                               "by the image's width and height)")  # fmt: skip
        rows.append((class_index, cx, cy, w, h))
    return rows


def read_dataset(path: str | os.PathLike, format: str | None = None, split: str = "train") -> DetectionData:
    """Read any supported dataset, detecting the format when ``format`` is None.

    Detection: a ``.json`` file is COCO; a ``.yaml``/``.yml`` file or a folder with ``data.yaml`` is YOLO; a folder
    with ``Annotations/`` is VOC; a folder with ``annotations/instances_<split>.json``, ``annotations/<split>.json``,
    ``<split>.json`` or ``<split>/_annotations.coco.json`` (Roboflow; ``valid/`` for ``val``) is COCO; a folder with
    XML files in it or in a folder of its own is VOC (labelImg's output, Roboflow's VOC export); a folder with
    ``classes.txt`` or ``obj.names`` is YOLO without a yaml.
    """
    path = Path(path)
    fmt = format.lower() if format else _detect_format(path, split)
    if fmt == "coco":
        return read_coco(_coco_json_for(path, split))
    if fmt == "voc":
        return read_voc(path, split)
    if fmt == "yolo":
        return read_yolo(path, split)
    raise DatasetError(f"{path}: unknown dataset format {format!r} (expected one of {FORMATS})")


def has_split(path: str | os.PathLike, format: str | None, split: str) -> bool:
    """Whether the dataset at ``path`` names a split ``split`` (without reading it): a VOC split file, a YOLO
    ``data.yaml`` entry, a COCO JSON for the split in a folder. A single COCO JSON file has no named splits."""
    path = Path(path)
    try:
        fmt = format.lower() if format else _detect_format(path, split)
    except DatasetError:
        return False
    if fmt == "voc":
        layout = _voc_layout(path)
        if layout == VOC_SPLIT_FOLDERS:
            return any(_holds_xml(path / name) for name in split_folder_names(split))
        return layout == VOC_SPLIT_FILES and (path / "ImageSets" / "Main" / f"{split}.txt").is_file()
    if fmt == "coco":
        return path.is_dir() and any(candidate.is_file() for candidate in _coco_json_candidates(path, split))
    if fmt == "yolo":
        yaml_path = path if path.is_file() else path / "data.yaml"
        try:
            return _load_yolo_yaml(yaml_path).get(split) not in (None, "")
        except DatasetError:
            return False
    return False


ROBOFLOW_COCO_JSON = "_annotations.coco.json"  # Roboflow's COCO export: <split>/_annotations.coco.json + images


def split_folder_names(split: str) -> tuple[str, ...]:
    """The folder names of a split in exports with a folder per split: Roboflow names the validation one ``valid``."""
    return (split, "valid") if split == "val" else (split,)


def _coco_json_candidates(folder: Path, split: str) -> list[Path]:
    """Where a COCO JSON for ``split`` is looked for inside a dataset folder: the COCO layout, a JSON per split, and
    Roboflow's export (a folder per split, the validation one named ``valid``)."""
    annotations = folder / "annotations"
    roboflow = [folder / name / ROBOFLOW_COCO_JSON for name in split_folder_names(split)]
    return [annotations / f"instances_{split}.json", annotations / f"{split}.json", folder / f"{split}.json", *roboflow]


def _coco_json_for(path: Path, split: str) -> Path:
    """``path`` itself when it is a file, else the first COCO JSON candidate for ``split`` inside it."""
    if path.is_file():
        return path
    candidates = _coco_json_candidates(path, split)
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        looked = ", ".join(str(candidate.relative_to(path)) for candidate in candidates)
        here = _coco_splits_here(path)
        there = f"the splits here: {', '.join(here)}; " if here else ""
        raise DatasetError(f"{path}: no COCO annotation file for split {split!r} ({there}looked for {looked})")
    return found


def coco_folder_splits(path: str | os.PathLike, format: str | None) -> list[str]:
    """The split names of a COCO dataset folder, as its files name them (``train2017``, CVAT's ``default``); empty for
    a dataset of another kind or a single file, whose splits are looked up by the names asked."""
    path = Path(path)
    if not path.is_dir() or (format or "coco").lower() != "coco":
        return []
    try:
        if format is None and _detect_format(path, "train") != "coco":
            return []
    except DatasetError:
        return []
    return _coco_splits_here(path)


_OTHER_COCO_TASKS = ("person_keypoints_", "captions_", "panoptic_", "image_info_", "stuff_")  # not detection files


def _coco_splits_here(folder: Path) -> list[str]:
    """The split names a COCO dataset folder holds files for: ``annotations/instances_<split>.json`` (CVAT's export
    names its one split ``default``), ``annotations/<split>.json`` and Roboflow's ``<split>/_annotations.coco.json``."""
    names = []
    annotations = folder / "annotations"
    if annotations.is_dir():
        for path in sorted(annotations.glob("*.json")):
            if not path.stem.startswith(_OTHER_COCO_TASKS):
                names.append(path.stem.removeprefix("instances_"))
    if folder.is_dir():
        names += sorted(child.name for child in folder.iterdir() if (child / ROBOFLOW_COCO_JSON).is_file())
    return list(dict.fromkeys(names))


def _detect_format(path: Path, split: str) -> str:
    """The format of ``path`` from its name and contents (the rules are listed on ``read_dataset``)."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "coco"
        if suffix in (".yaml", ".yml"):
            return "yolo"
        raise DatasetError(f"{path}: cannot tell the dataset format of a {suffix or 'suffix-less'} file")
    if not path.is_dir():
        raise DatasetError(f"{path}: dataset not found")
    if (path / "data.yaml").is_file():
        return "yolo"
    if (path / "Annotations").is_dir():
        return "voc"
    if any(candidate.is_file() for candidate in _coco_json_candidates(path, split)) or _coco_splits_here(path):
        return "coco"
    if _holds_xml(path) or any(_holds_xml(child) for child in path.iterdir()):  # labelImg's folder, Roboflow's VOC
        return "voc"
    if _yolo_class_file(path) is not None:  # labelImg's YOLO folder, Darknet's obj.names
        return "yolo"
    looked = ", ".join(
        [
            "data.yaml (YOLO)",
            "Annotations/ (VOC)",
            "XML files here or in a folder per split (VOC)",
            "classes.txt or obj.names (YOLO)",
        ]
        + [f"{candidate.relative_to(path)} (COCO)" for candidate in _coco_json_candidates(path, split)]
    )
    raise DatasetError(f"{path}: cannot tell the dataset format (looked for {looked})")
