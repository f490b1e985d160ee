"""Where annotation pixels lie on the decoded image: annotated size vs file size, and EXIF orientation.

Annotations state the image size they were drawn on (VOC ``<size>``, COCO ``width``/``height``). Two things make
that differ from the pixels :func:`efficientdet.data.images.load_image` returns:

- the dataset was re-encoded or resized after labelling (a 200x100 annotation on a 100x50 file): the boxes must be
  scaled per axis;
- the photo carries an EXIF orientation that turns it by 90 degrees. ``load_image`` returns the upright picture
  (what every viewer shows). Labelling tools disagree on which frame they annotate, so the annotated size decides:
  when it has the proportions of the *stored* frame (width and height swapped against the upright picture), the
  boxes were drawn on the stored pixels and are turned with the picture; otherwise they are taken as upright.
  Orientations that keep the size (mirror, 180 degrees) cannot be told apart this way and are taken as upright.

Training maps annotation boxes onto the image with :meth:`AnnotationFrame.to_image`; evaluation maps detections
back with :meth:`AnnotationFrame.to_annotation`, so they are scored against the annotations as written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# EXIF orientations (tag 0x0112) that turn the picture by 90 degrees, swapping width and height
TRANSPOSING = frozenset({5, 6, 7, 8})
# the orientation that undoes each one (applied to the upright frame); the others undo themselves
_INVERSE = {6: 8, 8: 6}


def orient_boxes(boxes: np.ndarray, orientation: int, width: float, height: float) -> np.ndarray:
    """Boxes (x1, y1, x2, y2) on a ``width`` x ``height`` stored image, moved as EXIF ``orientation`` moves pixels.

    The point maps are the EXIF definitions as Pillow's ``ImageOps.exif_transpose`` applies them: 2 mirrors x,
    3 turns by 180 degrees, 4 mirrors y, 5 transposes, 6 turns clockwise, 7 transverses, 8 turns anticlockwise.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    w, h = float(width), float(height)
    maps = {
        1: (x1, y1, x2, y2),
        2: (w - x1, y1, w - x2, y2),
        3: (w - x1, h - y1, w - x2, h - y2),
        4: (x1, h - y1, x2, h - y2),
        5: (y1, x1, y2, x2),
        6: (h - y1, x1, h - y2, x2),
        7: (h - y1, w - x1, h - y2, w - x2),
        8: (y1, w - x1, y2, w - x2),
    }
    if orientation not in maps:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")
    ax, ay, bx, by = maps[orientation]
    out = np.stack([np.minimum(ax, bx), np.minimum(ay, by), np.maximum(ax, bx), np.maximum(ay, by)], axis=1)
    return out.astype(np.float32)


@dataclass(frozen=True)
class AnnotationFrame:
    """How one record's annotation pixels map onto its decoded, upright image (see the module docstring)."""

    scale_x: float  # stored-image pixels per annotation pixel, along x
    scale_y: float
    orientation: int  # EXIF orientation still to apply after scaling (1: the annotation is upright already)
    image_width: int  # the decoded, upright image
    image_height: int
    annotated_width: int  # the size the annotation states (0: unknown; then it is the image's)
    annotated_height: int

    @property
    def identity(self) -> bool:
        return self.orientation == 1 and self.scale_x == 1.0 and self.scale_y == 1.0

    def reduced(self, factor: int, image_size: tuple[int, int]) -> AnnotationFrame:
        """This frame on the same picture decoded at 1/``factor`` of its resolution, ``image_size`` (w, h) upright
        (:func:`efficientdet.data.images.decode_image`): the scales shrink by ``factor`` exactly, as each reduced
        pixel covers ``factor`` full ones (only a partial block at the right and bottom edges is off, by less
        than one reduced pixel, and only where an EXIF turn measures from those edges)."""
        if factor == 1:
            return self
        return replace(self, scale_x=self.scale_x / factor, scale_y=self.scale_y / factor,
                       image_width=int(image_size[0]), image_height=int(image_size[1]))  # fmt: skip

    def _stored_size(self) -> tuple[int, int]:
        """Size of the frame the orientation acts on: the upright size, turned back when the turn transposes."""
        if self.orientation in TRANSPOSING:
            return self.image_height, self.image_width
        return self.image_width, self.image_height

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Annotation-pixel boxes -> boxes on the decoded image (what training and matching see)."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if self.identity:
            return boxes
        scaled = boxes * np.array([self.scale_x, self.scale_y] * 2, np.float32)
        if self.orientation == 1:
            return scaled
        return orient_boxes(scaled, self.orientation, *self._stored_size())

    def to_annotation(self, boxes: np.ndarray) -> np.ndarray:
        """Decoded-image boxes (e.g. detections) -> annotation pixels, clipped to the annotated size."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if self.identity:
            return boxes
        if self.orientation != 1:
            back = _INVERSE.get(self.orientation, self.orientation)
            boxes = orient_boxes(boxes, back, self.image_width, self.image_height)
        out = boxes / np.array([self.scale_x, self.scale_y] * 2, np.float32)
        out[:, 0::2] = out[:, 0::2].clip(0, self.annotated_width)
        out[:, 1::2] = out[:, 1::2].clip(0, self.annotated_height)
        return out


def resolve_frame(
    annotated_size: tuple[int, int], image_size: tuple[int, int], orientation: int = 1
) -> AnnotationFrame:
    """The frame of an annotation stating ``annotated_size`` (w, h) on an image decoded upright at ``image_size``.

    ``orientation`` is the EXIF orientation the decoder applied. A non-positive annotated size means "unknown":
    the annotation is taken to be in the image's own pixels.
    """
    img_w, img_h = int(image_size[0]), int(image_size[1])
    ann_w, ann_h = int(annotated_size[0]), int(annotated_size[1])
    if ann_w <= 0 or ann_h <= 0:
        return AnnotationFrame(1.0, 1.0, 1, img_w, img_h, img_w, img_h)
    turn = 1
    stored_w, stored_h = img_w, img_h
    if orientation in TRANSPOSING and _closer_to_stored(ann_w / ann_h, img_w / img_h):
        turn, stored_w, stored_h = orientation, img_h, img_w
    return AnnotationFrame(stored_w / ann_w, stored_h / ann_h, turn, img_w, img_h, ann_w, ann_h)


def _closer_to_stored(annotated_aspect: float, upright_aspect: float) -> bool:
    """Whether an annotated w/h is nearer the stored frame's (1 / upright) than the upright one (log distance)."""
    upright = abs(np.log(annotated_aspect / upright_aspect))
    stored = abs(np.log(annotated_aspect * upright_aspect))
    return bool(stored < upright)
