"""Dataset readers on the real raccoon VOC set and on tiny crafted COCO / YOLO / VOC sets with known problems."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, require_shared
from PIL import Image

from efficientdet.data.images import load_image
from efficientdet.data.readers import (
    DatasetError,
    has_split,
    read_coco,
    read_dataset,
    read_voc,
    read_yolo,
    single_set,
    yolo_label_path,
)

RACCOON = SHARED / "datasets" / "raccoon"
RACCOON_GRAYSCALE = {"raccoon-150", "raccoon-152", "raccoon-161"}


def _image(path: Path, size: tuple[int, int] = (100, 50), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


def _assert_boxes_inside(record) -> None:
    boxes = record.boxes
    assert boxes.dtype == np.float32 and boxes.shape == (len(record.labels), 4)
    assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
    assert np.all(boxes[:, 2] <= record.width) and np.all(boxes[:, 3] <= record.height)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])


# ---------------------------------------------------------------------------------------------------- raccoon VOC


@pytest.fixture(scope="module")
def raccoon() -> dict:
    root = require_shared(RACCOON)
    return {split: read_voc(root, split) for split in ("train", "test")}


def test_raccoon_splits_classes_and_box_count(raccoon):
    train, test = raccoon["train"], raccoon["test"]
    assert (len(train), len(test)) == (160, 40)
    assert train.class_names == test.class_names == ["raccoon"]
    assert train.format == "voc" and train.category_ids is None
    # 217 = the <object> count over all 200 XML files (173 in train, 44 in test)
    assert sum(len(r.boxes) for r in train.records + test.records) == 217
    assert train.fixes == test.fixes == {"clipped_boxes": 0, "zero_area_boxes": 0, "unreadable_images": 0}
    assert [r.image_id for r in train.records] == list(range(160))


def test_raccoon_boxes_inside_images_and_one_based_conversion(raccoon):
    for record in raccoon["train"].records + raccoon["test"].records:
        assert Path(record.path).is_absolute() and Path(record.path).is_file()
        assert np.all(record.labels == 0) and not record.iscrowd.any()
        _assert_boxes_inside(record)
    first = raccoon["train"].records[0]  # raccoon-1.xml: xmin 81 ymin 88 xmax 522 ymax 408, size 650x417
    assert Path(first.path).name == "raccoon-1.jpg" and (first.width, first.height) == (650, 417)
    np.testing.assert_array_equal(first.boxes, [[80, 87, 522, 408]])


def test_raccoon_grayscale_images_load_as_rgb(raccoon):
    records = [r for r in raccoon["train"].records + raccoon["test"].records if Path(r.path).stem in RACCOON_GRAYSCALE]
    assert len(records) == 3
    for record in records:
        with Image.open(record.path) as img:
            assert img.mode == "L"
        assert load_image(record.path).shape == (record.height, record.width, 3)


def test_read_dataset_detects_voc(raccoon):
    assert len(read_dataset(RACCOON, split="test")) == 40


# ------------------------------------------------------------------------------------------------- crafted COCO


def _coco_dataset(tmp_path: Path, annotations: list[dict]) -> Path:
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.jpg")
    content = {
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": 100, "height": 50},
            {"id": 9, "file_name": "b.jpg", "width": 100, "height": 50},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": annotations,
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(content))
    return path


def test_coco_boxes_negatives_clipping_and_crowd(tmp_path):
    path = _coco_dataset(
        tmp_path,
        [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 10]},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [90, 40, 30, 30]},  # runs off the corner: clipped
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [30, 30, 0, 10]},  # zero width: dropped
            {"id": 4, "image_id": 7, "category_id": 18, "bbox": [0, 0, 50, 50], "iscrowd": 1},
        ],
    )
    data = read_coco(path)
    assert data.format == "coco"
    assert data.class_names == ["person", "dog"] and data.category_ids == [1, 18]
    first, negative = data.records
    assert (first.image_id, negative.image_id) == (7, 9)
    assert first.path == str((tmp_path / "images" / "a.jpg").resolve())
    np.testing.assert_allclose(first.boxes, [[10, 5, 30, 15], [90, 40, 100, 50], [0, 0, 50, 50]])
    np.testing.assert_array_equal(first.labels, [1, 0, 1])
    np.testing.assert_array_equal(first.iscrowd, [False, False, True])
    assert negative.boxes.shape == (0, 4) and negative.labels.shape == (0,)
    assert data.fixes == {"clipped_boxes": 1, "zero_area_boxes": 1, "unreadable_images": 0}
    assert read_dataset(path).records[0].image_id == 7


def test_coco_boxes_in_fractions_of_the_image_are_an_error(tmp_path):
    """A converter that writes `bbox` normalised to 0..1 gave one-pixel boxes in each image's top-left corner,
    trained without a word; when every box of the file lies within 0..1 the file is refused with the reason."""
    path = _coco_dataset(
        tmp_path,
        [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [0.1, 0.05, 0.2, 0.1]},
            {"id": 2, "image_id": 9, "category_id": 1, "bbox": [0.5, 0.5, 0.25, 0.4]},
        ],
    )
    with pytest.raises(DatasetError, match=r"instances\.json: every bbox lies within 0\.\.1 \(fractions of the "
                       r"image\?\); COCO's bbox is \[x, y, width, height\] in pixels"):  # fmt: skip
        read_coco(path)


def test_coco_boxes_written_as_corners_are_suspected_aloud(tmp_path, caplog):
    """`bbox` written as [x1, y1, x2, y2] runs most boxes off the image, and reading clipped them under a count;
    when more than half of a file's boxes needed clipping, a warning names the likely cause."""
    corners = [[40 + i, 5, 80 + i, 45] for i in range(12)]  # x + "w" = x1 + x2 > 100 for every one
    path = _coco_dataset(tmp_path, [{"id": i + 1, "image_id": 7, "category_id": 1, "bbox": b}
                                    for i, b in enumerate(corners)])  # fmt: skip
    with caplog.at_level("WARNING"):
        data = read_coco(path)
    assert data.fixes["clipped_boxes"] == 12
    assert (
        "instances.json: 12 of 12 boxes run off their image and were clipped: is bbox written as [x1, y1, x2, "
        "y2]? COCO's is [x, y, width, height]" in caplog.text
    )


def test_coco_unknown_category_names_file_and_id(tmp_path):
    path = _coco_dataset(tmp_path, [{"id": 5, "image_id": 7, "category_id": 44, "bbox": [1, 1, 2, 2]}])
    with pytest.raises(DatasetError, match=r"instances\.json.*category id 44"):
        read_coco(path)


def test_coco_missing_key_names_file_and_entry(tmp_path):
    """The entry is named by its id where it has one ("an annotation is missing the key 'bbox'" before: one of
    how many?)."""
    path = _coco_dataset(tmp_path, [{"id": 5, "image_id": 7, "bbox": [1, 1, 2, 2]}])
    with pytest.raises(DatasetError, match=r"instances\.json: annotation 5 \(image 7\) is missing the key 'category"):
        read_coco(path)
    path = _coco_dataset(tmp_path, [{"image_id": 7, "category_id": 1}])
    with pytest.raises(DatasetError, match=r"instances\.json: an annotation \(image 7\) has no 'bbox' and no polygon"):
        read_coco(path)


def test_coco_polygon_only_annotations_train_as_their_bounding_boxes(tmp_path):
    """Converters that write an instance's outline and leave `bbox` out (it is derived data) stopped the dataset
    ("is missing the key 'bbox'"); the box of all of an object's polygons is its bounding box, as COCO's own `bbox`
    is defined. A given `bbox` wins; an outline in run-length encoding (no polygon to read) stays an error."""
    outline = [[10, 5, 30, 5, 30, 15], [12, 8, 14, 20, 13, 9]]  # two parts: the box spans both
    path = _coco_dataset(
        tmp_path,
        [
            {"id": 5, "image_id": 7, "category_id": 1, "segmentation": outline},
            {"id": 6, "image_id": 7, "category_id": 18, "segmentation": outline, "bbox": [0, 0, 4, 4]},
        ],
    )
    record = read_coco(path).records[0]
    np.testing.assert_allclose(record.boxes, [[10, 5, 30, 20], [0, 0, 4, 4]])
    np.testing.assert_array_equal(record.labels, [0, 1])
    rle = {"size": [50, 100], "counts": "PP3"}
    path = _coco_dataset(tmp_path, [{"id": 5, "image_id": 7, "category_id": 1, "segmentation": rle}])
    with pytest.raises(DatasetError, match=r"annotation 5 \(image 7\) has no 'bbox' and no polygon"):
        read_coco(path)
    bad = [[10, 5, 30]]  # an odd number of coordinates
    path = _coco_dataset(tmp_path, [{"id": 5, "image_id": 7, "category_id": 1, "segmentation": bad}])
    with pytest.raises(DatasetError, match=r"annotation 5: segmentation polygon must be x y pairs"):
        read_coco(path)


def test_coco_annotations_of_images_not_listed_are_skipped_with_a_warning(tmp_path, caplog):
    """An annotation whose image is not in `images` (an image deleted from the JSON by hand, or a split cut from a
    bigger file) stopped the whole dataset; it has no picture to train on, so it is left out and the warning says
    how many and of which image ids."""
    path = _coco_dataset(
        tmp_path,
        [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 10]},
            {"id": 2, "image_id": 44, "category_id": 18, "bbox": [10, 5, 20, 10]},
            {"id": 3, "image_id": 44, "category_id": 1, "bbox": [10, 5, 20, 10]},
        ],
    )
    with caplog.at_level("WARNING"):
        data = read_coco(path)
    assert [len(r.boxes) for r in data.records] == [1, 0]
    assert "instances.json: left out 2 annotations whose image is not in 'images' (image id 44)" in caplog.text


def test_coco_image_without_a_size_takes_the_files(tmp_path):
    """An image entry without width/height stopped the whole dataset ("is missing the key 'width'"), while a zero
    size already fell back to the file's header; the boxes need no size to be read."""
    path = _coco_dataset(tmp_path, [{"id": 1, "image_id": 9, "category_id": 18, "bbox": [10, 5, 20, 10]}])
    content = json.loads(path.read_text())
    del content["images"][1]["width"], content["images"][1]["height"]
    path.write_text(json.dumps(content))
    records = read_coco(path).records
    assert [(r.width, r.height) for r in records] == [(100, 50), (100, 50)]
    np.testing.assert_allclose(records[1].boxes, [[10, 5, 30, 15]])


def test_coco_file_names_relative_to_the_json_are_found(tmp_path):
    """`"file_name": "images/b.jpg"` beside `images/a.jpg` (exporters that write the path from the JSON's folder)
    was looked for as images/images/b.jpg: an unreadable image and its boxes lost."""
    path = _coco_dataset(tmp_path, [{"id": 1, "image_id": 9, "category_id": 18, "bbox": [10, 5, 20, 10]}])
    content = json.loads(path.read_text())
    content["images"][1]["file_name"] = "images/b.jpg"
    path.write_text(json.dumps(content))
    data = read_coco(path)
    assert data.records[1].path == str((tmp_path / "images" / "b.jpg").resolve())
    assert data.fixes["unreadable_images"] == 0 and len(data.records[1].boxes) == 1


def test_windows_paths_in_annotation_files_are_found(tmp_path):
    """A COCO JSON or a YOLO list written on Windows names `sub\\b.jpg`; on Linux and macOS a backslash is a
    character of the name, so the image was "unreadable" and its boxes lost."""
    _image(tmp_path / "images" / "sub" / "b.jpg")
    path = _coco_dataset(tmp_path, [{"id": 1, "image_id": 9, "category_id": 18, "bbox": [10, 5, 20, 10]}])
    content = json.loads(path.read_text())
    content["images"][1]["file_name"] = "sub\\b.jpg"
    path.write_text(json.dumps(content))
    data = read_coco(path)
    assert data.records[1].path == str((tmp_path / "images" / "sub" / "b.jpg").resolve())
    assert data.fixes["unreadable_images"] == 0
    (tmp_path / "yolo").mkdir()
    root = _yolo_dataset(tmp_path / "yolo", "names: [cat, dog]")
    (root / "train.txt").write_text("images\\train\\boxed.jpg\r\n.\\images\\train\\negative.png\r\n")
    (root / "data.yaml").write_text("train: train.txt\nnames: [cat, dog]\n")
    assert [Path(r.path).name for r in read_yolo(root, "train").records] == ["boxed.jpg", "negative.png"]
    assert len(read_yolo(root, "train").records[0].boxes) == 2
    (root / "data.yaml").write_text("train: images\\train\nnames: [cat, dog]\n")  # the yaml's own entry
    assert len(read_yolo(root, "train")) == 2


def test_coco_folder_layout_is_detected(tmp_path):
    _image(tmp_path / "val2017" / "a.jpg")
    content = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}],
        "categories": [{"id": 3, "name": "car"}],
        "annotations": [],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(content))
    data = read_dataset(tmp_path, split="val2017")
    assert data.format == "coco" and data.records[0].path == str((tmp_path / "val2017" / "a.jpg").resolve())


def test_coco_folder_without_the_split_asked_names_the_splits_it_has(tmp_path):
    """CVAT's COCO export (annotations/instances_default.json + images/) asked for `train` was "cannot tell the
    dataset format", listing nine places looked in; it is a COCO folder, and the error names its split."""
    _image(tmp_path / "images" / "a.jpg")
    content = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 3, "name": "car"}]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_default.json").write_text(json.dumps(content))
    (tmp_path / "annotations" / "person_keypoints_default.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"no COCO annotation file for split 'train' \(the splits here: default; "
                       r"looked for annotations/instances_train\.json"):  # fmt: skip
        read_dataset(tmp_path, split="train")
    assert len(read_dataset(tmp_path, split="default")) == 1 and not has_split(tmp_path, None, "train")


def test_roboflow_coco_export_layout_is_detected_with_valid_as_the_val_split(tmp_path):
    """Roboflow's COCO export: a folder per split (train/, valid/, test/), each with _annotations.coco.json and its
    images beside it."""
    from efficientdet.data.readers import has_split

    for folder, names in (("train", ["a.jpg", "b.jpg"]), ("valid", ["c.jpg"])):
        content = {
            "images": [{"id": i, "file_name": n, "width": 100, "height": 50} for i, n in enumerate(names)],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 2, 30, 20]}],
        }
        for name in names:
            _image(tmp_path / folder / name)
        (tmp_path / folder / "_annotations.coco.json").write_text(json.dumps(content))
    train = read_dataset(tmp_path)
    assert train.format == "coco" and [Path(r.path).name for r in train.records] == ["a.jpg", "b.jpg"]
    assert train.records[0].path == str((tmp_path / "train" / "a.jpg").resolve())
    assert has_split(tmp_path, None, "val") and not has_split(tmp_path, None, "test")
    assert [Path(r.path).parent.name for r in read_dataset(tmp_path, split="val").records] == ["valid"]
    with pytest.raises(DatasetError, match=r"no COCO annotation file for split 'test'.*test/_annotations\.coco\.json"):
        read_dataset(tmp_path, "coco", "test")


def test_roboflow_parent_category_without_boxes_is_not_a_class(tmp_path, caplog):
    """Roboflow's COCO exports list the project as category 0, the supercategory of the real classes, with no boxes:
    it is left out of the classes (said once in the log); the real classes keep their ids."""
    _image(tmp_path / "a.jpg")
    categories = [{"id": 0, "name": "animals", "supercategory": "none"},
                  {"id": 1, "name": "cat", "supercategory": "animals"},
                  {"id": 2, "name": "dog", "supercategory": "animals"}]  # fmt: skip
    content = {"images": [{"id": 0, "file_name": "a.jpg", "width": 100, "height": 50}], "categories": categories,
               "annotations": [{"id": 1, "image_id": 0, "category_id": 2, "bbox": [1, 2, 30, 20]}]}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(content))
    with caplog.at_level("INFO"):
        data = read_coco(tmp_path / "ann.json")
    assert data.class_names == ["cat", "dog"] and data.category_ids == [1, 2]
    assert data.records[0].labels.tolist() == [1]
    assert "'animals'" in caplog.text and "supercategory" in caplog.text
    # a category that is also a supercategory but has boxes stays a class; so does COCO's person (its own parent)
    content["annotations"].append({"id": 2, "image_id": 0, "category_id": 0, "bbox": [5, 5, 10, 10]})
    content["categories"].append({"id": 3, "name": "person", "supercategory": "person"})
    (tmp_path / "ann.json").write_text(json.dumps(content))
    assert read_coco(tmp_path / "ann.json").class_names == ["animals", "cat", "dog", "person"]


def test_unknown_layout_names_path_and_what_was_looked_for(tmp_path):
    with pytest.raises(DatasetError, match=r"data\.yaml.*Annotations.*instances_train\.json"):
        read_dataset(tmp_path)


# ------------------------------------------------------------------------------------------------- crafted YOLO


def _yolo_dataset(tmp_path: Path, names_yaml: str) -> Path:
    (tmp_path / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\n{names_yaml}\n")
    _image(tmp_path / "images" / "train" / "boxed.jpg", (200, 100))
    _image(tmp_path / "images" / "train" / "negative.png", (64, 32))
    labels = tmp_path / "labels" / "train"
    labels.mkdir(parents=True)
    # a box in the middle, and one hanging off the right edge (clipped)
    (labels / "boxed.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.95 0.5 0.2 0.2\n")
    return tmp_path


@pytest.mark.parametrize(
    "names_yaml",
    ["names: [cat, 'hot dog']", "nc: 2\nnames:\n  0: cat\n  1: hot dog", "names:\n- cat\n- hot dog  # comment"],
)
def test_yolo_names_boxes_and_negatives(tmp_path, names_yaml):
    data = read_yolo(_yolo_dataset(tmp_path, names_yaml), "train")
    assert data.format == "yolo" and data.class_names == ["cat", "hot dog"]
    boxed, negative = data.records
    assert Path(boxed.path).name == "boxed.jpg" and (boxed.width, boxed.height) == (200, 100)
    np.testing.assert_allclose(boxed.boxes, [[80, 30, 120, 70], [170, 40, 200, 60]], atol=1e-4)
    np.testing.assert_array_equal(boxed.labels, [1, 0])
    assert negative.boxes.shape == (0, 4) and (negative.width, negative.height) == (64, 32)
    assert [r.image_id for r in data.records] == [0, 1]
    assert data.fixes["clipped_boxes"] == 1


def test_yolo_yaml_with_a_class_count_and_no_names_gets_numbered_names(tmp_path, caplog):
    """Older YOLO yamls give `nc: 2` and no `names`: the dataset stopped; its classes are named class_0, class_1,
    as ultralytics names them, and a warning says so."""
    root = _yolo_dataset(tmp_path, "nc: 2")
    with caplog.at_level("WARNING"):
        data = read_yolo(root, "train")
    assert data.class_names == ["class_0", "class_1"] and len(data.records[0].boxes) == 2
    assert "data.yaml: no 'names': the 2 classes are called class_0 ... class_1" in caplog.text
    (root / "data.yaml").write_text("train: images/train\n")
    with pytest.raises(DatasetError, match=r"'names' must be a non-empty list or mapping of class names"):
        read_yolo(root, "train")


def test_yolo_class_out_of_range_names_file_line_and_class(tmp_path):
    root = _yolo_dataset(tmp_path, "names: [cat, dog]")
    (root / "labels" / "train" / "boxed.txt").write_text("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"boxed\.txt: line 2: class index 2 is out of range"):
        read_yolo(root, "train")


def test_every_bad_label_file_of_a_split_is_named_at_once(tmp_path):
    """The first bad file stopped the reader, so a dataset with many was fixed one run of check-data at a time;
    each bad file (its first bad line) is named now, ten at the most, then a count. VOC's XML files the same."""
    root = _yolo_dataset(tmp_path, "names: [cat, dog]")
    labels = root / "labels" / "train"
    (labels / "boxed.txt").write_text("0 0.5 0.5 0.1\n")
    for i in range(11):
        _image(root / "images" / "train" / f"more{i:02d}.jpg")
        (labels / f"more{i:02d}.txt").write_text(f"{2 + i} 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError) as error:
        read_yolo(root, "train")
    message = str(error.value)
    assert message.startswith(
        f"12 label files have problems: {labels / 'boxed.txt'}: line 1: expected 'class cx cy w h'"
    )
    assert f"{labels / 'more00.txt'}: line 1: class index 2 is out of range (the dataset has 2)" in message
    assert "more08.txt" in message and "more09.txt" not in message and message.endswith("; and 2 more")
    (tmp_path / "voc").mkdir()
    voc = _voc_dataset(tmp_path / "voc", _voc_xml("bird", (1, 1, 100, 50)))
    for stem, xml in (("a", _voc_xml("", (1, 1, 9, 9))), ("b", "not xml")):  # no class name; not XML at all
        _image(voc / "JPEGImages" / f"{stem}.png")
        (voc / "Annotations" / f"{stem}.xml").write_text(xml)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("a\nimg1\nb\n")
    with pytest.raises(
        DatasetError, match=r"^2 label files have problems: \S*a\.xml: object 1.*; \S*b\.xml: malformed"
    ):
        read_voc(voc, "train")


def test_yolo_malformed_line_names_file_and_line(tmp_path):
    root = _yolo_dataset(tmp_path, "names: [cat, dog]")
    (root / "labels" / "train" / "boxed.txt").write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(DatasetError, match=r"boxed\.txt: line 1"):
        read_yolo(root, "train")


def test_yolo_pixel_coordinates_are_named_not_dropped(tmp_path):
    """A converter that writes pixels instead of 0..1 (`0 150 80 40 60`) gave boxes far outside the picture, dropped
    as "zero area" while reading: the boxes were lost under a count. Values beyond 0..1 by more than a rounding's
    worth are an error naming the file and line; a box hanging a little off the edge is still clipped."""
    root = _yolo_dataset(tmp_path, "names: [cat, dog]")
    (root / "labels" / "train" / "boxed.txt").write_text("0 0.5 0.5 0.2 0.2\n1 150 80 40 60\n")
    with pytest.raises(DatasetError, match=r"boxed\.txt: line 2: coordinates must be normalised to 0\.\.1 \(got 150: "
                       r"pixels\? divide by the image's width and height\)"):  # fmt: skip
        read_yolo(root, "train")
    (root / "labels" / "train" / "boxed.txt").write_text("0 0.98 0.5 0.1 0.2\n")  # right edge at 1.03: clipped
    data = read_yolo(root, "train")
    np.testing.assert_allclose(data.records[0].boxes, [[186, 40, 200, 60]], atol=1e-3)
    assert data.fixes["clipped_boxes"] == 1


def test_yolo_optional_score_column_is_ignored_but_checked(tmp_path):
    root = _yolo_dataset(tmp_path, "names: [cat, dog]")
    labels = root / "labels" / "train" / "boxed.txt"
    labels.write_text("1 0.5 0.5 0.2 0.4 0.87\n0 0.95 0.5 0.2 0.2\n")  # predict --save-txt --save-conf
    (boxed, _) = read_yolo(root, "train").records
    np.testing.assert_allclose(boxed.boxes, [[80, 30, 120, 70], [170, 40, 200, 60]], atol=1e-4)
    labels.write_text("1 0.5 0.5 0.2 0.4 high\n")
    with pytest.raises(DatasetError, match=r"boxed\.txt: line 1 score"):
        read_yolo(root, "train")
    labels.write_text("1 0.5 0.5 0.2 0.4 0.9 0.7 0.1\n")  # 7 numbers after the class: neither a box nor a polygon
    with pytest.raises(DatasetError, match=r"boxed\.txt: line 1: expected"):
        read_yolo(root, "train")


def test_yolo_polygon_lines_train_as_their_boxes(tmp_path):
    """A YOLO segmentation label (``class x1 y1 x2 y2 x3 y3 ...``, what Roboflow's and ultralytics' segmentation
    exports write) stopped the dataset with "expected 'class cx cy w h'"; ultralytics' detection trainer takes
    the polygon's bounding box, and so does this reader (boxes and polygons may share a file)."""
    root = _yolo_dataset(tmp_path, "names: [cat, dog]")
    labels = root / "labels" / "train" / "boxed.txt"
    labels.write_text("1 0.4 0.3 0.6 0.3 0.6 0.7 0.4 0.7\n0 0.9 0.4 1.0 0.6 0.85 0.5\n1 0.5 0.5 0.2 0.4\n")
    (boxed, _) = read_yolo(root, "train").records
    np.testing.assert_allclose(boxed.boxes, [[80, 30, 120, 70], [170, 40, 200, 60], [80, 30, 120, 70]], atol=1e-4)
    np.testing.assert_array_equal(boxed.labels, [1, 0, 1])
    labels.write_text("1 0.4 0.3 0.6 0.3 0.6 nan\n")
    with pytest.raises(DatasetError, match=r"boxed\.txt: line 1: expected a finite number"):
        read_yolo(root, "train")


def test_yolo_unreadable_image_is_kept_and_counted(tmp_path):
    root = _yolo_dataset(tmp_path, "names: [cat, dog]")
    (root / "images" / "train" / "broken.jpg").write_text("not an image")
    data = read_yolo(root, "train")
    broken = next(r for r in data.records if Path(r.path).name == "broken.jpg")
    assert (broken.width, broken.height, len(broken.boxes)) == (0, 0, 0)
    assert data.fixes["unreadable_images"] == 1


def test_yolo_split_as_txt_list_and_missing_split(tmp_path):
    root = _yolo_dataset(tmp_path, "names: [cat, dog]")
    (root / "val.txt").write_text("images/train/boxed.jpg\n")
    (root / "data.yaml").write_text("train: images/train\nval: val.txt\nnames: [cat, dog]\n")
    assert [Path(r.path).name for r in read_yolo(root, "val").records] == ["boxed.jpg"]
    with pytest.raises(DatasetError, match=r"data\.yaml.*'test'"):
        read_yolo(root, "test")


def test_yolo_label_path_replaces_the_last_images_component():
    path = Path("/data/images/set/images/train/x.jpg")
    assert yolo_label_path(path) == Path("/data/images/set/labels/train/x.txt")
    assert yolo_label_path(Path("/data/flat/x.png")) == Path("/data/flat/x.txt")


def test_malformed_yaml_names_the_file(tmp_path):
    root = _yolo_dataset(tmp_path, "names: [cat, dog]")
    (root / "data.yaml").write_text("names: [cat, dog\ntrain: images/train\n")
    with pytest.raises(DatasetError, match=r"data\.yaml: malformed YAML"):
        read_yolo(root, "train")


def test_yolo_roboflow_parent_relative_entries(tmp_path):
    root = _yolo_dataset(tmp_path, "names: [cat, dog]")
    (root / "data.yaml").write_text("train: ../images/train\nnames: [cat, dog]\n")
    assert len(read_yolo(root / "data.yaml", "train")) == 2


def test_yolo_path_key_of_another_machine_falls_back_to_the_yaml_folder(tmp_path, caplog):
    """A data.yaml written elsewhere (`path: /content/datasets/x` in Colab, `path: ../datasets/coco8` as
    ultralytics' own files) stopped a dataset whose split folders sit beside the yaml; the entries are read from
    the yaml's folder then, with a warning naming the `path:` that was not there. A `path:` that exists is
    followed as before, and an entry missing from both places still names the entry."""
    root = _yolo_dataset(tmp_path, "names: [cat, dog]")
    (root / "data.yaml").write_text("path: /nonexistent/datasets/x\ntrain: images/train\nnames: [cat, dog]\n")
    with caplog.at_level("WARNING"):
        assert len(read_yolo(root, "train")) == 2
        assert len(read_yolo(root, "train")) == 2  # each split read again: said once
    assert caplog.text.count("data.yaml: path: /nonexistent/datasets/x does not exist; reading the split entries") == 1
    (root / "data.yaml").write_text("path: /nonexistent/datasets/x\ntrain: images/nowhere\nnames: [cat, dog]\n")
    with pytest.raises(DatasetError, match=r"split entry /nonexistent/datasets/x/images/nowhere is neither"):
        read_yolo(root, "train")
    (root / "data.yaml").write_text("train: images/train\nnames: [cat, dog]\nroboflow:\n  project: p\n")
    with pytest.raises(DatasetError, match=r"no entry for split 'test' \(entries: \['train'\]\)"):
        read_yolo(root, "test")


# -------------------------------------------------------------------------------------------------- crafted VOC


def _voc_xml(name: str, box: tuple[int, int, int, int], size: tuple[int, int] | None = (100, 50)) -> str:
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    xmin, ymin, xmax, ymax = box
    return (
        f"<annotation>{size_xml}<object><name>{name}</name><difficult>1</difficult><bndbox><xmin>{xmin}</xmin>"
        f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object></annotation>"
    )


def _voc_dataset(tmp_path: Path, xml: str) -> Path:
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    _image(tmp_path / "JPEGImages" / "img1.png")
    (tmp_path / "Annotations" / "img1.xml").write_text(xml)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("img1  1\n\n")
    return tmp_path


def test_voc_png_image_difficult_kept_and_size_from_header(tmp_path):
    data = read_voc(_voc_dataset(tmp_path, _voc_xml("bird", (1, 1, 100, 50), size=None)), "train")
    (record,) = data.records
    assert Path(record.path).name == "img1.png" and (record.width, record.height) == (100, 50)
    np.testing.assert_array_equal(record.boxes, [[0, 0, 100, 50]])  # the whole image, 1-based inclusive
    assert data.class_names == ["bird"]


def test_voc_class_file_with_unknown_class_names_xml_and_class(tmp_path):
    root = _voc_dataset(tmp_path, _voc_xml("zebra", (2, 2, 20, 20)))
    (root / "classes.txt").write_text("bird\ncat\n")
    with pytest.raises(DatasetError, match=r"img1\.xml: class 'zebra'"):
        read_voc(root, "train")


def test_voc_class_names_written_two_ways_are_said(tmp_path, caplog):
    """`Raccoon` in one file and `raccoon` in the others trained as two classes without a word (check-data listed
    them, unremarked); the names stay as written, and a class file settles it."""
    root = _voc_dataset(tmp_path, _voc_xml("Raccoon", (2, 2, 20, 20)))
    _image(root / "JPEGImages" / "img2.png")
    (root / "Annotations" / "img2.xml").write_text(_voc_xml("raccoon", (2, 2, 20, 20)))
    (root / "ImageSets" / "Main" / "train.txt").write_text("img1\nimg2\n")
    with caplog.at_level("WARNING"):
        data = read_voc(root, "train")
    assert data.class_names == ["Raccoon", "raccoon"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{root}: class names that differ only in case: 'Raccoon', 'raccoon' (one class written "
                        "two ways? they train as separate classes; correct the XML files, or list the classes in "
                        "classes.txt)"]  # fmt: skip


def test_voc_missing_and_malformed_xml_name_the_file(tmp_path):
    root = _voc_dataset(tmp_path, "<annotation><object>")
    with pytest.raises(DatasetError, match=r"img1\.xml: malformed XML"):
        read_voc(root, "train")
    (root / "Annotations" / "img1.xml").unlink()
    with pytest.raises(DatasetError, match=r"img1\.xml: annotation file not found"):
        read_voc(root, "train")


def test_voc_missing_split_names_the_split_files_there_are(tmp_path):
    """A VOC set with trainval.txt / test.txt only (a common layout): asked for 'train', the error names the file
    looked for and the splits the folder has, so the user knows what to pass."""
    root = _voc_dataset(tmp_path, _voc_xml("bird", (2, 2, 20, 20)))
    main = root / "ImageSets" / "Main"
    (main / "train.txt").rename(main / "trainval.txt")
    (main / "test.txt").write_text("img1\n")
    (main / "bird_trainval.txt").write_text("img1  1\n")  # VOC's per-class lists are not splits
    with pytest.raises(DatasetError, match=r"train\.txt: split file not found \(the splits here: test, trainval\)"):
        read_voc(root, "train")
    for other in main.iterdir():
        other.unlink()
    with pytest.raises(DatasetError, match=r"train\.txt: split file not found \(no split files in "):
        read_voc(root, "train")


def _xml_beside(folder: Path, stem: str, name: str = "cat") -> None:
    """An image and its VOC XML side by side (labelImg's output; Roboflow's Pascal VOC export per split folder)."""
    _image(folder / f"{stem}.jpg")
    (folder / f"{stem}.xml").write_text(_voc_xml(name, (11, 6, 50, 40)))


def test_voc_roboflow_export_reads_a_folder_per_split(tmp_path):
    """Roboflow's Pascal VOC export (train/, valid/, test/, each with images and XML files side by side) was "cannot
    tell the dataset format"; each split is its folder, `val` is `valid/` as in its COCO export."""
    for split, stems in (("train", ["a", "b", "c"]), ("valid", ["d"]), ("test", ["e", "f"])):
        for stem in stems:
            _xml_beside(tmp_path / split, f"{stem}_jpg.rf.0123")
    (tmp_path / "README.roboflow.txt").write_text("exported from roboflow\n")
    train, val = read_dataset(tmp_path, split="train"), read_dataset(tmp_path, split="val")
    assert train.format == "voc" and train.class_names == ["cat"]
    assert [Path(r.path).name for r in train.records] == ["a_jpg.rf.0123.jpg", "b_jpg.rf.0123.jpg", "c_jpg.rf.0123.jpg"]
    np.testing.assert_array_equal(train.records[0].boxes, [[10, 5, 50, 40]])
    assert [Path(r.path).parent.name for r in val.records] == ["valid"]
    assert len(read_dataset(tmp_path, split="test")) == 2
    assert has_split(tmp_path, None, "val") and not has_split(tmp_path, None, "trainval")
    assert not single_set(tmp_path, None)
    with pytest.raises(DatasetError, match=r"no folder 'trainval/' of images and XML files \(the splits here: test, "
                       r"train, valid\)"):  # fmt: skip
        read_dataset(tmp_path, split="trainval")


def test_voc_folder_of_images_and_xml_files_is_one_set(tmp_path, caplog):
    """labelImg's output (one folder of images, each with its XML) and a VOC folder without ImageSets/ were "cannot
    tell the dataset format" and "split file not found"; each is one set, as a single COCO file is: every split
    name reads all of it, and `train` holds validation images out of it. An image without an XML file is left out
    with a warning (unlabelled, not known to be empty)."""
    for stem in ("p1", "p2", "p3"):
        _xml_beside(tmp_path / "flat", stem)
    _image(tmp_path / "flat" / "unlabelled.jpg")
    with caplog.at_level("WARNING"):
        data = read_dataset(tmp_path / "flat", split="train")
    assert data.format == "voc" and [Path(r.path).stem for r in data.records] == ["p1", "p2", "p3"]
    assert "flat: 1 image without an XML file left out (unlabelled.jpg)" in caplog.text
    assert single_set(tmp_path / "flat", None) and not has_split(tmp_path / "flat", None, "val")
    assert len(read_dataset(tmp_path / "flat", split="val")) == 3
    (tmp_path / "voc").mkdir()
    root = _voc_dataset(tmp_path / "voc", _voc_xml("bird", (2, 2, 20, 20)))
    assert not single_set(root, None)
    (root / "stray.xml").write_text(_voc_xml("bird", (2, 2, 20, 20)))  # VOC's layout wins, as reading it does
    assert not single_set(root, None) and has_split(root, None, "train")
    (root / "stray.xml").unlink()
    shutil.rmtree(root / "ImageSets")
    _image(root / "JPEGImages" / "img2.png")
    (root / "Annotations" / "img2.xml").write_text(_voc_xml("cat", (2, 2, 20, 20)))
    data = read_voc(root, "train")
    assert [Path(r.path).name for r in data.records] == ["img1.png", "img2.png"] and single_set(root, "voc")


@pytest.mark.parametrize("class_file", ["classes.txt", "obj.names"])
def test_yolo_folder_without_a_yaml_is_one_set_named_by_its_class_file(tmp_path, class_file):
    """labelImg's YOLO output (images, a .txt label file each, and classes.txt) and Darknet-style folders
    (obj.names; CVAT's YOLO export) have no data.yaml: "cannot tell the dataset format". Such a folder is one set,
    searched through like a YOLO split folder, images without a label file negatives as YOLO has them."""
    root = tmp_path / "labelled"
    _image(root / "a.jpg", (200, 100))
    (root / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    _image(root / "more" / "images" / "b.png", (64, 32))
    (root / "more" / "labels").mkdir()
    (root / "more" / "labels" / "b.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    _image(root / "negative.jpg")
    (root / class_file).write_text("cat\nhot dog\n")
    data = read_dataset(root, split="val")
    assert data.format == "yolo" and data.class_names == ["cat", "hot dog"]
    assert [Path(r.path).name for r in data.records] == ["a.jpg", "b.png", "negative.jpg"]
    np.testing.assert_allclose(data.records[0].boxes, [[80, 30, 120, 70]], atol=1e-4)
    np.testing.assert_allclose(data.records[1].boxes, [[16, 8, 48, 24]], atol=1e-4)
    assert len(data.records[2].boxes) == 0
    assert single_set(root, None) and not has_split(root, None, "train")
    (root / class_file).write_text("cat\n")
    with pytest.raises(DatasetError, match=r"a\.txt: line 1: class index 1 is out of range"):
        read_dataset(root)


def test_yolo_labels_beside_their_images_are_read_and_a_split_without_labels_is_said(tmp_path, caplog):
    """Label files put beside their images inside images/train/ (not in labels/train/) left every image a negative
    without a word: 0 boxes trained. They are read where they are; a split where no image has a label file anywhere
    is said in a warning."""
    root = tmp_path / "beside"
    _image(root / "images" / "train" / "a.jpg", (200, 100))
    (root / "images" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [cat]\n")
    np.testing.assert_allclose(read_yolo(root, "train").records[0].boxes, [[80, 30, 120, 70]], atol=1e-4)
    (root / "images" / "train" / "a.txt").unlink()
    _image(root / "images" / "val" / "b.jpg")
    with caplog.at_level("WARNING"):
        assert len(read_yolo(root, "val").records[0].boxes) == 0
    assert (
        "data.yaml: split 'val' has 1 image and no label file (looked for labels/val/b.txt, and b.txt beside "
        "the image): every image trains as a negative" in caplog.text
    )
