import pytest
import torch

from efficientdet import postprocess as pp


def reference_nms(boxes, scores, classes, iou):
    """The textbook per-class greedy NMS, one box at a time."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            if classes[i] == classes[j] and pp.box_iou_one_to_many(boxes[j], boxes[i : i + 1])[0] > iou:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def random_boxes(n, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("n,classes", [(0, 1), (1, 1), (200, 1), (300, 4)])
def test_nms_matches_reference(n, classes):
    boxes, scores, labels = random_boxes(n, classes)
    keep = pp.batched_nms(boxes, scores, labels, 0.5)
    assert keep.tolist() == reference_nms(boxes, scores, labels, 0.5)


def test_nms_max_keep_and_identical_boxes():
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 5 + [[20.0, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = torch.zeros(6, dtype=torch.long)
    assert pp.batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 5]
    assert pp.batched_nms(boxes, scores, labels, 0.5, max_keep=1).tolist() == [0]
    labels[1] = 1  # a different class is never suppressed
    assert pp.batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 1, 5]


def test_postprocess_decodes_the_top_candidates():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 20, 10, 30]])  # (y1, x1, y2, x2)
    cls = [torch.tensor([[[[-5.0]], [[3.0]]]]).reshape(1, 2, 1, 1)]  # 1 location, 2 "anchors" x 1 class
    box = [torch.zeros(1, 8, 1, 1)]
    out = pp.postprocess(cls, box, anchors, num_classes=1, topk=1)
    assert out[0]["boxes"].tolist() == [[20.0, 0.0, 30.0, 10.0]]
    assert out[0]["scores"].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
