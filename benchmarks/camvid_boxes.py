"""A third detection dataset of another kind, made from CamVid's label masks: road scenes, small objects, three classes.

The raccoon and BCCD sets chose or checked the training recipe; a recipe can still fit what those two have in
common (one large object per photo; microscope slides). CamVid (Brostow et al. 2008; the SegNet preparation: 367
`train` and 101 `val` frames at 360x480) is street video with many small cars, pedestrians and cyclists, none of
which the recipe was ever run on. Its labels are per-pixel classes, so boxes are derived: each 8-connected region of
class car, pedestrian or bicyclist becomes one box (its bounding rectangle), and regions under ``--min-area`` pixels
are dropped (slivers of occluded or far-away objects, most of them a few pixels). Touching objects of one class
(a row of parked cars, a group of people) become one box: these are region boxes, not instance annotations, and
their AP is not comparable with published detection figures; they compare detectors trained on the same boxes.

The result is a Pascal VOC folder (``JPEGImages`` as symbolic links to the CamVid frames, ``Annotations``,
``ImageSets/Main/train.txt`` from CamVid ``train`` and ``test.txt`` from CamVid ``val``, ``classes.txt``), so the
plain commands run on it unchanged; nothing of CamVid is copied:

    python benchmarks/camvid_boxes.py --camvid ../shared/datasets/camvid --output /tmp/camvid-boxes
    python benchmarks/raccoon.py --data /tmp/camvid-boxes --seeds 0 --output runs/camvid-boxes
    HF_HUB_OFFLINE=1 /tmp/effdet-venv/bin/python benchmarks/effdet_peer.py --data /tmp/camvid-boxes \\
        --minutes M --output runs/camvid-boxes-effdet       # M: the minutes our run trained
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

# CamVid class ids of the SegNet preparation (0 sky ... 8 car, 9 pedestrian, 10 bicyclist, 11 void)
CLASSES = {8: "car", 9: "pedestrian", 10: "bicyclist"}
MIN_AREA = 100  # pixels of a region: about 10 x 10
SPLITS = {"train": "train", "val": "test"}  # CamVid folder -> split name written here


def region_boxes(mask: np.ndarray, classes: dict[int, str], min_area: int) -> list[tuple[str, int, int, int, int]]:
    """(name, x1, y1, x2, y2) of every 8-connected region of each class in ``mask`` with at least ``min_area``
    pixels; corners in VOC's inclusive 1-based pixels (x2 = last column + 1)."""
    from scipy import ndimage  # scikit-image's dependency, so present wherever the test extra is installed

    boxes = []
    for class_id, name in classes.items():
        labels, count = ndimage.label(mask == class_id, structure=np.ones((3, 3), dtype=bool))
        if count == 0:
            continue
        areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        for region, (rows, cols) in enumerate(ndimage.find_objects(labels)):
            if areas[region] >= min_area:
                boxes.append((name, cols.start + 1, rows.start + 1, cols.stop, rows.stop))
    return boxes


def voc_xml(filename: str, width: int, height: int, boxes: list[tuple[str, int, int, int, int]]) -> str:
    objects = "".join(
        f"<object><name>{escape(name)}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, x1, y1, x2, y2 in boxes
    )
    return (
        f"<annotation><filename>{escape(filename)}</filename><size><width>{width}</width><height>{height}</height>"
        f"<depth>3</depth></size>{objects}</annotation>\n"
    )


def convert(camvid: Path, output: Path, min_area: int = MIN_AREA) -> dict[str, tuple[int, int]]:
    """Write the VOC folder; (images, boxes) per split written."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (output / sub).mkdir(parents=True, exist_ok=True)
    counts = {}
    for folder, split in SPLITS.items():
        frames = sorted((camvid / folder).glob("*.jpg"))
        if not frames:
            raise FileNotFoundError(f"{camvid / folder}: no CamVid frames (*.jpg) here")
        total = 0
        for frame in frames:
            mask = np.asarray(Image.open(camvid / f"{folder}annot" / f"{frame.stem}.png"))
            boxes = region_boxes(mask, CLASSES, min_area)
            total += len(boxes)
            link = output / "JPEGImages" / frame.name
            if not link.exists():
                link.symlink_to(frame.resolve())
            xml = voc_xml(frame.name, mask.shape[1], mask.shape[0], boxes)
            (output / "Annotations" / f"{frame.stem}.xml").write_text(xml)
        (output / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{f.stem}\n" for f in frames))
        counts[split] = (len(frames), total)
    (output / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES.values()))  # one label order
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camvid", type=Path, required=True, help="CamVid folder (train/, trainannot/, val/, ...)")
    parser.add_argument("--output", type=Path, required=True, help="VOC folder to write (outside the repository)")
    parser.add_argument("--min-area", type=int, default=MIN_AREA, help="smallest region kept, in pixels")
    args = parser.parse_args(argv)
    try:
        counts = convert(args.camvid, args.output, args.min_area)
    except (FileNotFoundError, OSError) as error:
        print(f"camvid_boxes: {error}", file=sys.stderr)
        return 1
    for split, (images, boxes) in counts.items():
        print(f"{split}: {images} images, {boxes} boxes ({', '.join(CLASSES.values())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
