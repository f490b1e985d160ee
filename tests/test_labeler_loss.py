"""Anchor matching and the loss against values computed by hand."""

import math

import pytest
import torch

from efficientdet.models.config import get_config
from efficientdet.ops.anchors import decode_boxes
from efficientdet.ops.labeler import IGNORE, NEGATIVE, AnchorLabeler, AtssLabeler, Targets, box_iou, labeler_for_config
from efficientdet.ops.losses import (
    detection_loss,
    distance_iou_loss,
    focal_loss,
    generalized_iou_loss,
    huber_loss,
    iou_loss,
    quality_focal_loss,
)

# three anchors (y1, x1, y2, x2): A0 at the origin, A1 shifted right by 5, A2 far away
ANCHORS = torch.tensor([[0.0, 0, 10, 10], [0, 5, 10, 15], [50, 50, 60, 60]])


def test_box_iou_hand_values():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[50 / 150, 1.0, 0.0]]))


def test_positive_negative_and_force_match():
    lab = AnchorLabeler(ANCHORS)
    # GT (x1y1x2y2) equal to A0: IoU(A0)=1 positive; IoU(A1)=1/3 negative; A2 negative
    cls, box, npos = lab.label_image(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([2]))
    assert cls.tolist() == [2, NEGATIVE, NEGATIVE] and npos == 1
    assert torch.allclose(box[0], torch.zeros(4), atol=1e-6)
    # a GT that overlaps no anchor at IoU >= 0.5 is force-matched to its best anchor
    cls, box, npos = lab.label_image(torch.tensor([[52.0, 52, 70, 70]]), torch.tensor([0]))
    assert cls.tolist() == [NEGATIVE, NEGATIVE, 0] and npos == 1
    decoded = decode_boxes(box[2:3], ANCHORS[2:3])
    assert torch.allclose(decoded, torch.tensor([[52.0, 52, 70, 70]]), atol=1e-4)


def test_iou_exactly_half_is_positive():
    """The probe is *not* the box's best anchor, so force-matching cannot make it positive: only ``>= 0.5`` does."""
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 20.5]])  # (y1, x1, y2, x2)
    gt, label = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1])
    # anchor 0 is the box itself (IoU 1, the best); anchor 1 has IoU 100/200 = 0.5 exactly; anchor 2 100/205
    assert box_iou(anchors[:, [1, 0, 3, 2]], gt)[:, 0].tolist() == [1.0, 0.5, pytest.approx(100 / 205)]
    cls, _, npos = AnchorLabeler(anchors).label_image(gt, label)
    assert cls.tolist() == [1, 1, NEGATIVE] and npos == 2
    # just above 0.5 the same probe is background: the threshold is what decides it
    cls, _, _ = AnchorLabeler(anchors, match_iou=0.5 + 1e-6).label_image(gt, label)
    assert cls.tolist() == [1, NEGATIVE, NEGATIVE]


def test_unmatched_iou_opens_retinanets_ignore_band():
    """Anchors at IoU 1, 0.5 and 100/205 = 0.488 with one box, one far away: by default (no band) the 0.488 anchor
    is background; with ``unmatched_iou`` 0.45 it is ignored, and so is the 0.5 one once the match IoU is above it.
    Positives and the far anchor are untouched."""
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 20.5], [50, 50, 60, 60]])
    gt, label = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1])
    assert AnchorLabeler(anchors).label_image(gt, label)[0].tolist() == [1, 1, NEGATIVE, NEGATIVE]
    cls, _, npos = AnchorLabeler(anchors, unmatched_iou=0.45).label_image(gt, label)
    assert cls.tolist() == [1, 1, IGNORE, NEGATIVE] and npos == 2
    cls, _, npos = AnchorLabeler(anchors, match_iou=0.6, unmatched_iou=0.45).label_image(gt, label)
    assert cls.tolist() == [1, IGNORE, IGNORE, NEGATIVE] and npos == 1
    with pytest.raises(ValueError, match="unmatched_iou must be in"):
        AnchorLabeler(anchors, unmatched_iou=0.7)


def test_contested_anchor_goes_to_the_first_box():
    """Two boxes whose best anchor is the same: the official matcher (argmax over a one-hot of the forced
    matches) gives it to the first box, even though the second overlaps it more."""
    anchors = torch.tensor([[0.0, 0, 10, 10], [100.0, 100, 110, 110]])
    boxes = torch.tensor([[0.0, 0, 9, 10], [0.0, 0, 10, 10]])  # IoU with anchor 0: 0.9 and 1.0
    cls, box, npos = AnchorLabeler(anchors).label_image(boxes, torch.tensor([3, 5]))
    assert cls.tolist() == [3, NEGATIVE] and npos == 1
    assert torch.allclose(decode_boxes(box[:1], anchors[:1]), boxes[:1], atol=1e-4)
    # many boxes sharing one best anchor: still the first, every time
    many = torch.tensor([[0.0, 0, 9.5, 10]] + [[0.0, 0, 10, 10]] * 40)
    labels = torch.arange(41)
    for _ in range(3):
        assert AnchorLabeler(anchors).label_image(many, labels)[0][0] == 0


def test_crowd_boxes_are_ignored_not_targets():
    lab = AnchorLabeler(ANCHORS)
    cls, _, npos = lab.label_image(
        torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]), torch.tensor([1, 0]), torch.tensor([False, True])
    )
    assert cls.tolist() == [1, NEGATIVE, IGNORE] and npos == 1


def test_image_without_boxes_is_all_negative():
    cls, box, npos = AnchorLabeler(ANCHORS).label_image(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert cls.tolist() == [NEGATIVE] * 3 and npos == 0 and not box.any()


# One level of twelve anchors (y1, x1, y2, x2), one per location: A0 over x 0-10, A1 over x 5-25 (centre x 15),
# and ten far away (IoU 0 with every box below). With k = 12 all twelve are every box's candidates.
ATSS_ANCHORS = torch.tensor(
    [[0.0, 0, 10, 10], [0, 5, 10, 25]] + [[0, 100 + 10 * i, 10, 110 + 10 * i] for i in range(10)]
)


def test_atss_threshold_is_the_mean_plus_std_of_the_candidates_ious():
    """Box 0-16 x 0-10: IoU with A0 100/160 = 0.625, with A1 110/250 = 0.44, ten zeros; mean 0.0888, sample std
    0.2110, threshold 0.300. Both anchors are positives, A1 at an IoU the fixed matcher (0.5) calls background."""
    lab = AtssLabeler(ATSS_ANCHORS, level_counts=[12], anchors_per_location=1, topk=12)
    gt, label = torch.tensor([[0.0, 0, 16, 10]]), torch.tensor([4])
    cls, box, npos = lab.label_image(gt, label)
    assert cls.tolist() == [4, 4] + [NEGATIVE] * 10 and npos == 2
    assert torch.allclose(decode_boxes(box[:2], ATSS_ANCHORS[:2]), gt.expand(2, 4), atol=1e-4)
    assert AnchorLabeler(ATSS_ANCHORS).label_image(gt, label)[0].tolist() == [4] + [NEGATIVE] * 11


def test_atss_positive_needs_its_centre_inside_the_box():
    """Box 0-14 x 0-10: IoU 0.714 (A0) and 0.36 (A1), threshold 0.0895 + 0.2222 = 0.312. A1 is above it, but its
    centre (x 15) lies outside the box: background."""
    lab = AtssLabeler(ATSS_ANCHORS, level_counts=[12], anchors_per_location=1, topk=12)
    cls, _, npos = lab.label_image(torch.tensor([[0.0, 0, 14, 10]]), torch.tensor([1]))
    assert cls.tolist() == [1] + [NEGATIVE] * 11 and npos == 1


def test_atss_takes_k_candidates_per_level_and_the_highest_iou_box_wins():
    """Two levels (A0, A1 | the far ten), k = 2: each box's candidates are A0, A1 and the two nearest far anchors.
    Box 0-8: IoUs 0.8, 0.12, 0, 0, threshold 0.23 + 0.384 = 0.614; box 0-10: 1, 0.2, 0, 0, threshold 0.776. A0 is
    a positive of both and regresses to the one it overlaps more (IoU 1), whatever the order of the boxes."""
    lab = AtssLabeler(ATSS_ANCHORS, level_counts=[2, 10], anchors_per_location=1, topk=2)
    boxes, labels = torch.tensor([[0.0, 0, 8, 10], [0, 0, 10, 10]]), torch.tensor([2, 3])
    for order in ([0, 1], [1, 0]):
        cls, box, npos = lab.label_image(boxes[order], labels[order])
        assert cls.tolist() == [3] + [NEGATIVE] * 11 and npos == 1
        assert torch.allclose(box[0], torch.zeros(4), atol=1e-6)
    # alone, the first box keeps A0
    assert lab.label_image(boxes[:1], labels[:1])[0].tolist() == [2] + [NEGATIVE] * 11


def _atss_by_loops(anchors_yxyx, counts, per_location, boxes, k=9):
    """A plain per-box, per-level rendering of the paper's Algorithm 1, to check the vectorised one against."""
    anchors = anchors_yxyx[:, [1, 0, 3, 2]].double()
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    iou = box_iou(anchors, boxes.double())
    best = {}  # anchor -> (iou, box)
    for g, b in enumerate(boxes.double()):
        centre = (b[:2] + b[2:]) / 2
        candidates, start = [], 0
        for count in counts:
            d = [float(torch.dist(centres[i], centre)) for i in range(start, start + count)]
            candidates += [start + i for i in sorted(range(count), key=d.__getitem__)[: k * per_location]]
            start += count
        values = torch.tensor([float(iou[i, g]) for i in candidates], dtype=torch.float64)
        threshold = values.mean() + values.std()
        for i, v in zip(candidates, values):
            x, y = centres[i]
            inside = min(x - b[0], y - b[1], b[2] - x, b[3] - y) > 0.01
            if v >= threshold and inside and (i not in best or v > best[i][0]):
                best[i] = (float(v), g)
    return {i: g for i, (_, g) in best.items()}


def test_atss_on_the_lite0_anchor_grid_matches_the_algorithm_and_gives_small_boxes_more_positives():
    config = get_config("efficientdet-lite0")
    lab = labeler_for_config(config, (448, 448), "atss")
    assert isinstance(lab, AtssLabeler) and lab.candidates_per_level == 9 * 9
    # a raccoon-sized box, a small one and two overlapping ones; centres off the grid's symmetry (no distance ties)
    boxes = torch.tensor([[61.3, 40.2, 380.7, 411.9], [201.1, 150.6, 214.8, 161.3], [300.2, 20.4, 371.7, 95.1],
                          [320.6, 31.9, 400.3, 120.8]])  # fmt: skip
    labels = torch.tensor([0, 1, 2, 3])
    cls, box, npos = lab.label_image(boxes, labels)
    expected = _atss_by_loops(lab.anchors_yxyx, lab.level_counts, config.num_anchors, boxes)
    assert npos == len(expected) and {i: int(cls[i]) for i in torch.nonzero(cls >= 0)[:, 0].tolist()} == expected
    decoded = decode_boxes(box[cls >= 0], lab.anchors_yxyx[cls >= 0])
    assert torch.allclose(decoded, boxes[cls[cls >= 0]], atol=1e-3)
    fixed = labeler_for_config(config, (448, 448), "iou").label_image(boxes, labels)[0]
    assert set(expected.values()) == {0, 1, 2, 3}  # every box has positives
    # the small box (14 x 11 pixels), which the fixed IoU gives only its forced best anchor, gets 18 (the fixed
    # matcher's counts per box: 15, 1, 26, 18; ATSS's: 72, 18, 64, 61)
    assert int((fixed == 1).sum()) == 1 and int((cls == 1).sum()) == 18
    with pytest.raises(ValueError, match="assigner must be one of iou, atss"):
        labeler_for_config(config, (448, 448), "ota")


def test_focal_loss_hand_value():
    # logit 0 -> p = 0.5. positive: 0.25 * 0.5^1.5 * ln 2 ; negative: 0.75 * 0.5^1.5 * ln 2
    fl = focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]))
    base = 0.5**1.5 * math.log(2)
    assert fl.tolist() == pytest.approx([0.25 * base, 0.75 * base])


def test_huber_hand_values():
    h = huber_loss(torch.tensor([0.05, 0.3, -0.3]), torch.zeros(3), delta=0.1)
    assert h.tolist() == pytest.approx([0.5 * 0.05**2, 0.1 * (0.3 - 0.05), 0.1 * (0.3 - 0.05)])


def test_detection_loss_normalisation_and_weights():
    # one image, 3 anchors, 2 classes; anchor 0 positive class 1, anchor 1 negative, anchor 2 ignored
    targets = Targets(
        cls=torch.tensor([[1, NEGATIVE, IGNORE]]),
        box=torch.tensor([[[0.2, 0.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4]]),
        num_positives=torch.tensor([1.0]),
    )
    logits = torch.zeros(1, 3, 2)
    codes = torch.zeros(1, 3, 4)
    codes[0, 2] = 5.0  # ignored anchor: its box error must not count
    out = detection_loss(logits, codes, targets, num_classes=2)
    base = 0.5**1.5 * math.log(2)
    # anchor 0: class 1 positive (0.25 base), class 0 negative (0.75 base); anchor 1: 2 negatives; anchor 2 none
    expected_cls = (0.25 * base + 3 * 0.75 * base) / (1 + 1)
    expected_box = (0.1 * (0.2 - 0.05)) / ((1 + 1) * 4)
    assert out["cls_loss"].item() == pytest.approx(expected_cls)
    assert out["box_loss"].item() == pytest.approx(expected_box)
    assert out["loss"].item() == pytest.approx(expected_cls + 50 * expected_box)


def test_generalized_iou_loss_hand_values():
    pred = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1]])
    target = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 3, 3]])
    # identical: GIoU 1; overlap 1 of union 7 in a 3x3 hull: 1/7 - 2/9; apart: IoU 0, hull 9, union 2: -7/9
    expected = [0.0, 1 - (1 / 7 - 2 / 9), 1 + 7 / 9]
    assert generalized_iou_loss(pred, target).tolist() == pytest.approx(expected, abs=1e-6)


def test_detection_loss_adds_the_giou_of_the_decoded_boxes_of_positive_anchors():
    targets = Targets(
        cls=torch.tensor([[1, NEGATIVE, IGNORE]]),
        box=torch.tensor([[[0.2, 0.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4]]),  # anchor 0's box: 2 px lower
        num_positives=torch.tensor([1.0]),
    )
    logits = torch.zeros(1, 3, 2)
    codes = torch.zeros(1, 3, 4, requires_grad=True)
    plain = detection_loss(logits, codes, targets, num_classes=2)
    assert "iou_loss" not in plain
    with pytest.raises(ValueError, match="anchors"):
        detection_loss(logits, codes, targets, num_classes=2, iou_weight=2.0)
    out = detection_loss(logits, codes, targets, num_classes=2, iou_weight=2.0, anchors=ANCHORS)
    # predicted box = anchor 0 (x 0-10, y 0-10), target y 2-12: intersection 80, union 120, hull 120 -> GIoU 2/3;
    # the ignored and the negative anchors add nothing; normalised like the box loss by (positives + 1) * 4
    expected_iou = (1 - 2 / 3) / ((1 + 1) * 4)
    assert out["iou_loss"].item() == pytest.approx(expected_iou)
    assert out["loss"].item() == pytest.approx(plain["loss"].item() + 2.0 * expected_iou)
    out["iou_loss"].backward()
    assert codes.grad[0, 0, 0] < 0  # moving the box down (positive ty) raises the GIoU
    assert not codes.grad[0, 1:].any()


def test_distance_and_complete_iou_loss_hand_values():
    pred = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 4, 4]])
    target = torch.tensor([[0.0, 0, 2, 2], [1, 0, 3, 2], [0, 0, 4, 2], [1, 1, 3, 3]])
    # identical: 0. Same shape shifted by 1: IoU 2/6, centres 1 apart, hull 3 x 2 (diagonal^2 13); CIoU adds nothing.
    # 2x2 against 4x2 at one corner: IoU 4/8, centres 1 apart, hull 4 x 2 (diagonal^2 20), aspect term
    # v = 4/pi^2 (atan 2 - atan 1)^2 with alpha = v / (1 - IoU + v).
    # A box inside a box with the same centre: DIoU = 1 - IoU (4/16) exactly, like GIoU (its hull is the outer box)
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    diou = [0.0, 1 - 1 / 3 + 1 / 13, 1 - 0.5 + 1 / 20, 1 - 0.25]
    ciou = [0.0, 1 - 1 / 3 + 1 / 13, 1 - 0.5 + 1 / 20 + v / (0.5 + v) * v, 1 - 0.25]
    assert distance_iou_loss(pred, target).tolist() == pytest.approx(diou, abs=1e-6)
    assert distance_iou_loss(pred, target, aspect=True).tolist() == pytest.approx(ciou, abs=1e-6)
    assert iou_loss(pred, target, "CIoU").tolist() == pytest.approx(ciou, abs=1e-6)
    assert torch.equal(iou_loss(pred, target, "giou"), generalized_iou_loss(pred, target))
    with pytest.raises(ValueError, match="expected one of giou, diou, ciou"):
        iou_loss(pred, target, "siou")


def test_distance_iou_pulls_the_centres_together_where_giou_is_flat():
    """A small box inside a large one, off-centre: GIoU (its hull is the large box) does not care where it sits,
    DIoU moves it towards the large box's centre."""
    target = torch.tensor([[0.0, 0, 10, 10]])
    for kind, moves in (("giou", False), ("diou", True), ("ciou", True)):
        pred = torch.tensor([[1.0, 1, 3, 3]], requires_grad=True)
        iou_loss(pred, target, kind).sum().backward()
        shift = -(pred.grad[0, :2] + pred.grad[0, 2:])  # the descent direction of the box's centre
        assert bool((shift > 1e-6).all()) == moves, (kind, pred.grad)


def test_detection_loss_uses_the_iou_loss_type():
    targets = Targets(cls=torch.tensor([[1]]), box=torch.tensor([[[0.2, 0.1, 0.3, 0.0]]]),
                      num_positives=torch.tensor([1.0]))  # fmt: skip
    codes = torch.zeros(1, 1, 4)
    pred = decode_boxes(codes[0], ANCHORS[:1])[:, [1, 0, 3, 2]]  # (x1, y1, x2, y2)
    target = decode_boxes(targets.box[0], ANCHORS[:1])[:, [1, 0, 3, 2]]
    for kind in ("giou", "diou", "ciou"):
        out = detection_loss(torch.zeros(1, 1, 2), codes, targets, 2, iou_weight=1.0, anchors=ANCHORS[:1],
                             iou_type=kind)  # fmt: skip
        assert out["iou_loss"].item() == pytest.approx(iou_loss(pred, target, kind).item() / 8, rel=1e-5)


def test_giou_loss_stays_finite_for_an_untrained_heads_huge_scale_codes():
    targets = Targets(cls=torch.tensor([[0]]), box=torch.zeros(1, 1, 4), num_positives=torch.tensor([1.0]))
    codes = torch.tensor([[[0.0, 0.0, 300.0, 300.0]]], requires_grad=True)  # exp(300) overflows float32
    out = detection_loss(torch.zeros(1, 1, 1), codes, targets, 1, iou_weight=1.0, anchors=ANCHORS[:1])
    out["loss"].backward()
    assert math.isfinite(out["iou_loss"].item()) and 0 < out["iou_loss"].item() < 2
    assert torch.isfinite(codes.grad).all()


def test_quality_focal_loss_hand_values():
    # logit 0 -> p = 0.5 and a cross-entropy of ln 2 for any target t: |t - 0.5|^2 ln 2
    qfl = quality_focal_loss(torch.zeros(3), torch.tensor([1.0, 2 / 3, 0.0]))
    assert qfl.tolist() == pytest.approx([0.25 * math.log(2), (1 / 6) ** 2 * math.log(2), 0.25 * math.log(2)])
    assert quality_focal_loss(torch.tensor([20.0, -20.0]), torch.tensor([1.0, 0.0])).max() < 1e-8  # already right


def test_detection_loss_with_quality_focal_targets_the_iou_of_each_positive_box():
    targets = Targets(
        cls=torch.tensor([[1, NEGATIVE, IGNORE]]),
        box=torch.tensor([[[0.2, 0.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4]]),  # anchor 0's box: 2 px lower
        num_positives=torch.tensor([1.0]),
    )
    logits = torch.zeros(1, 3, 2, requires_grad=True)
    codes = torch.zeros(1, 3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="anchors"):
        detection_loss(logits, codes, targets, num_classes=2, quality_focal=True)
    out = detection_loss(logits, codes, targets, num_classes=2, quality_focal=True, anchors=ANCHORS)
    # anchor 0 predicts the anchor itself, IoU 2/3 with its object: class 1's target is 2/3, class 0's 0; anchor 1
    # has two targets of 0; the ignored anchor adds nothing. Each term |t - 0.5|^2 ln 2, over (positives + 1)
    expected = ((1 / 6) ** 2 + 3 * 0.25) * math.log(2) / 2
    assert out["cls_loss"].item() == pytest.approx(expected)
    plain = detection_loss(logits, codes, targets, num_classes=2)
    assert out["box_loss"].item() == pytest.approx(plain["box_loss"].item())
    out["cls_loss"].backward()
    assert codes.grad is None or not codes.grad.any()  # the IoU target is a target, not a path for gradients
    assert logits.grad[0, 0, 1] < 0 and logits.grad[0, 0, 0] > 0 and logits.grad[0, 1].gt(0).all()
    assert not logits.grad[0, 2].any()
