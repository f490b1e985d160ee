"""Post-processing against textbook references: hard NMS, Gaussian soft-NMS, the exact top-k shortcut."""

import math

import pytest
import torch

from efficientdet import postprocess as pp


def iou(a, b):
    """IoU of two (x1, y1, x2, y2) boxes in plain Python floats."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes, scores, classes, thr, agnostic=False):
    """The textbook greedy NMS, one box at a time; equal scores keep input order."""
    boxes, scores = boxes.double().tolist(), scores.tolist()
    classes = [0] * len(scores) if agnostic else classes.tolist()
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable
    keep = []
    for i in order:
        if all(classes[i] != classes[j] or iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def reference_soft_nms(boxes, scores, classes, sigma=0.5, floor=0.001, agnostic=False):
    """Bodla et al.'s Gaussian soft-NMS, one box at a time: returns (index, decayed score) pairs."""
    boxes = boxes.double().tolist()
    current = {i: float(s) for i, s in enumerate(scores.double().tolist()) if s >= floor}
    classes = [0] * len(boxes) if agnostic else classes.tolist()
    out = []
    while current:
        best = max(current.values())
        i = min(k for k, v in current.items() if v == best)  # ties: lowest input index first
        out.append((i, current.pop(i)))
        for j in list(current):
            if classes[j] == classes[i]:
                current[j] *= math.exp(-(iou(boxes[i], boxes[j]) ** 2) / sigma)
                if current[j] < floor:
                    del current[j]
    return out


def random_boxes(n, classes=3, seed=0, clustered=False):
    g = torch.Generator().manual_seed(seed)
    if clustered:  # many heavy overlaps, as around a real object
        centres = torch.rand(max(n // 50, 1), 2, generator=g) * 300
        xy = centres[torch.randint(0, len(centres), (n,), generator=g)] + torch.randn(n, 2, generator=g) * 8
        wh = torch.rand(n, 2, generator=g) * 20 + 40
    else:
        xy = torch.rand(n, 2, generator=g) * 100
        wh = torch.rand(n, 2, generator=g) * 40 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize(
    "n,classes,clustered", [(0, 1, False), (1, 1, False), (200, 1, False), (300, 4, False), (3000, 5, True)]
)
@pytest.mark.parametrize("agnostic", [False, True])
def test_hard_nms_matches_reference(n, classes, clustered, agnostic):
    boxes, scores, labels = random_boxes(n, classes, clustered=clustered)
    keep = pp.batched_nms(boxes, scores, None if agnostic else labels, 0.5)
    assert keep.tolist() == reference_nms(boxes, scores, labels, 0.5, agnostic)


@pytest.mark.parametrize("n,classes,clustered", [(300, 4, False), (3000, 5, True), (5000, 40, True)])
@pytest.mark.parametrize("max_keep", [1, 7, 100])
def test_hard_nms_with_max_keep_is_the_references_first(n, classes, clustered, max_keep):
    boxes, scores, labels = random_boxes(n, classes, clustered=clustered)
    keep = pp.batched_nms(boxes, scores, labels, 0.5, max_keep=max_keep)
    assert keep.tolist() == reference_nms(boxes, scores, labels, 0.5)[:max_keep]


def test_hard_nms_compares_only_the_boxes_it_needs(monkeypatch):
    """With a cap on the boxes kept (predict's and bench's 100), NMS compares only the boxes up to the last one it
    needs: 5000 candidates around 120 objects, the 100 best objects found within the first few hundred boxes, and
    the IoU pairs computed stay far below kept x all."""
    g = torch.Generator().manual_seed(0)
    centres = torch.cartesian_prod(torch.arange(12.0), torch.arange(10.0)) * 100  # 120 objects, far apart
    xy = centres[torch.randint(0, 120, (5000,), generator=g)] + torch.rand(5000, 2, generator=g) * 4
    boxes, scores, labels = torch.cat([xy, xy + 40], 1), torch.rand(5000, generator=g), torch.zeros(5000).long()
    pairs = []
    iou_matrix = pp._iou_matrix
    monkeypatch.setattr(pp, "_iou_matrix", lambda a, b: pairs.append(len(a) * len(b)) or iou_matrix(a, b))
    keep = pp.batched_nms(boxes, scores, labels, 0.5, max_keep=100)
    assert keep.tolist() == reference_nms(boxes, scores, labels, 0.5)[:100]
    assert sum(pairs) < 100 * 1000


@pytest.mark.parametrize(
    "n,max_keep,kernel_expected",
    [(5000, 100, False), (1001, 100, False), (1000, 100, True), (300, 100, True), (5000, None, True)],
)
def test_torchvisions_kernel_runs_only_where_it_is_the_faster(monkeypatch, n, max_keep, kernel_expected):
    """Where torchvision is installed its NMS kernel compares every candidate with every box it keeps, while ours
    stops at ``max_keep``: with more than ten candidates per box wanted ours ran 1.7x (BCCD) to 5.8x (raccoon)
    faster on the candidates of ``eval`` (the same picks), so the kernel serves only the smaller sets (and runs
    without a cap, and other devices than the CPU)."""
    calls = []

    def kernel(boxes, scores, labels, iou_threshold):  # stands in for torchvision.ops.batched_nms
        calls.append(len(boxes))
        return torch.as_tensor(reference_nms(boxes, scores, labels, iou_threshold), dtype=torch.long)

    monkeypatch.setattr(pp, "_tv_batched_nms", kernel)
    boxes, scores, labels = random_boxes(n, 5, clustered=True)
    keep = pp.batched_nms(boxes, scores, labels, 0.5, max_keep=max_keep)
    assert keep.tolist() == reference_nms(boxes, scores, labels, 0.5)[:max_keep]
    assert bool(calls) == kernel_expected


def test_hard_nms_ties_identical_boxes_and_max_keep():
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 5 + [[20.0, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = torch.zeros(6, dtype=torch.long)
    assert pp.batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 5]
    assert pp.batched_nms(boxes, scores, labels, 0.5, max_keep=1).tolist() == [0]
    labels[1] = 1  # a different class is never suppressed...
    assert pp.batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 1, 5]
    assert pp.batched_nms(boxes, scores, None, 0.5).tolist() == [0, 5]  # ...unless class-agnostic
    tied = torch.full((6,), 0.5)  # all scores equal: input order decides, as in the reference
    assert pp.batched_nms(boxes, tied, labels, 0.5).tolist() == reference_nms(boxes, tied, labels, 0.5) == [0, 1, 5]


def test_hard_nms_threshold_is_strict_and_degenerate_boxes_survive():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [3, 3, 3, 3]])  # IoU(0, 1) = 0.5 exactly; a point box
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.zeros(3, dtype=torch.long)
    assert pp.batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 1, 2]  # suppress only IoU > threshold
    assert pp.batched_nms(boxes, scores, labels, 0.49).tolist() == [0, 2]


@pytest.mark.parametrize(
    "n,classes,clustered", [(0, 1, False), (1, 1, False), (150, 1, False), (400, 3, True), (600, 20, True)]
)
@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("max_keep", [None, 25])
@pytest.mark.parametrize("tied", [False, True])
def test_soft_nms_matches_reference(n, classes, clustered, agnostic, max_keep, tied):
    """Each class runs on its own boxes and the picks are merged by score (ties, across classes too, in input
    order): the same picks as the one-box-at-a-time loop over every box, up to ``max_keep``."""
    boxes, scores, labels = random_boxes(n, classes, seed=1, clustered=clustered)
    if tied:  # many equal scores: ten values
        scores = (scores * 10).floor() / 10 + 0.05
    keep, decayed = pp.soft_nms(boxes, scores, None if agnostic else labels, 0.5, 0.001, max_keep)
    ref = reference_soft_nms(boxes, scores, labels, agnostic=agnostic)[:max_keep]
    assert keep.tolist() == [i for i, _ in ref]
    assert decayed.double().tolist() == pytest.approx([s for _, s in ref], rel=1e-6)
    assert (decayed[1:] <= decayed[:-1]).all()  # best first


def test_soft_nms_decays_instead_of_removing():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    keep, decayed = pp.soft_nms(boxes, scores, None, sigma=0.5, score_floor=0.001)
    # box 0 decays its duplicate by exp(-1/0.5) and the shifted box by exp(-iou^2/0.5); the far box is untouched
    # and taken next; then the shifted box, which decays the duplicate once more
    i02 = 90 / 110
    decay = math.exp(-(i02**2) / 0.5)
    expected = {0: 0.9, 3: 0.6, 2: 0.7 * decay, 1: 0.8 * math.exp(-2) * decay}
    assert keep.tolist() == [0, 3, 2, 1]
    assert decayed.tolist() == pytest.approx([expected[int(i)] for i in keep])
    keep, _ = pp.soft_nms(boxes, scores, None, score_floor=0.2)  # the floor drops the decayed duplicates
    assert keep.tolist() == [0, 3]
    keep, _ = pp.soft_nms(boxes, scores, None, max_keep=2)
    assert keep.tolist() == [0, 3]
    keep, decayed = pp.soft_nms(boxes, scores, torch.tensor([0, 1, 0, 1]), score_floor=0.95)  # none in play
    assert keep.tolist() == [] and decayed.tolist() == []


def naive_topk(class_outputs, num_classes, k):
    cls, _ = pp.flatten_outputs(class_outputs, class_outputs, num_classes)  # boxes unused here
    return [torch.topk(c.reshape(-1), min(k, c.numel())) for c in cls]


@pytest.mark.parametrize("k", [1, 7, 500, 10_000])
@pytest.mark.parametrize("channels_last", [False, True])
def test_select_candidates_is_the_exact_topk(k, channels_last):
    g = torch.Generator().manual_seed(3)
    c, a = 5, 9
    shapes = [(8, 6), (4, 3), (2, 2)]  # H != W: the plane-order index arithmetic must not mix them up
    cls = [torch.randn(2, a * c, h, w, generator=g) for h, w in shapes]
    box = [torch.randn(2, a * 4, h, w, generator=g) for h, w in shapes]
    if channels_last:  # what a channels-last network would hand over
        cls = [x.contiguous(memory_format=torch.channels_last) for x in cls]
        box = [x.contiguous(memory_format=torch.channels_last) for x in box]
    _, flat_box = pp.flatten_outputs(cls, box, c)
    for i, (logits, anchor_idx, labels, codes) in enumerate(pp.select_candidates(cls, box, c, k)):
        ref = naive_topk(cls, c, k)[i]
        assert logits.tolist() == ref.values.tolist()
        assert (anchor_idx * c + labels).tolist() == ref.indices.tolist()
        assert torch.equal(codes, flat_box[i, anchor_idx])


@pytest.mark.parametrize("k", [7, 500])
def test_select_candidates_with_a_logit_floor_is_the_topk_above_it(k):
    g = torch.Generator().manual_seed(4)
    cls = [torch.randn(1, 9 * 5, h, w, generator=g) for h, w in [(8, 6), (4, 3)]]
    box = [torch.randn(1, 9 * 4, h, w, generator=g) for h, w in [(8, 6), (4, 3)]]
    ref = naive_topk(cls, 5, 10_000)[0]
    for floor in (1.0, 2.5):  # 2.5: fewer pairs above it than k (for k=500)
        logits, anchor_idx, labels, _ = pp.select_candidates(cls, box, 5, k, min_logit=floor)[0]
        above = ref.values >= floor
        assert logits.tolist() == ref.values[above][:k].tolist()
        assert (anchor_idx * 5 + labels).tolist() == ref.indices[above][:k].tolist()


def flat_outputs_with_maxima(seed=6, batch=2, anchors=300, classes=5):
    """One flat level, as an exported file returns it, with each anchor's best logit as a runtime computes it."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(batch, anchors * classes, 1, 1, generator=g).round(decimals=1)  # ties, as int8 logits have
    box = torch.randn(batch, anchors * 4, 1, 1, generator=g)
    return pp.ClassOutputs([cls], cls.view(batch, anchors, classes).amax(2)), [box]


@pytest.mark.parametrize("k", [7, 100, 5000])
@pytest.mark.parametrize("floor", [-math.inf, 1.5, 2.8])
def test_select_candidates_from_a_networks_anchor_maxima_is_the_exact_topk(k, floor):
    """With the per-anchor maxima computed by the network: the same candidates as from a plain list (ties at the
    k-th best included), which are the exact top k."""
    cls, box = flat_outputs_with_maxima()
    given = pp.select_candidates(cls, box, 5, k, min_logit=floor)
    plain = pp.select_candidates(list(cls), box, 5, k, min_logit=floor)
    for i, (got, ref) in enumerate(zip(given, plain)):
        for a, b in zip(got, ref):
            assert torch.equal(a, b)
        top = naive_topk(list(cls), 5, 10_000)[i]
        above = top.values >= floor
        assert got[0].tolist() == top.values[above][:k].tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_select_candidates_on_autocast_outputs_matches_float32(dtype):
    """Half-precision outputs (eager bf16 / fp16 autocast) take torch's selection ops, float32 outputs numpy's:
    the same candidates from the same values, ties at the k-th best included."""
    g = torch.Generator().manual_seed(7)
    shapes = [(8, 6), (4, 3)]
    low = [(torch.randn(2, 9 * 5, h, w, generator=g) * 2).round().to(dtype) for h, w in shapes]  # many ties
    box = [torch.randn(2, 9 * 4, h, w, generator=g) for h, w in shapes]
    for k in (7, 100, 10_000):
        for floor in (-math.inf, 1.5):
            half = pp.select_candidates(low, box, 5, k, min_logit=floor)
            full = pp.select_candidates([x.float() for x in low], box, 5, k, min_logit=floor)
            for (hl, hi, hc, hb), (fl, fi, fc, fb) in zip(half, full):
                assert hl.dtype == dtype and fl.dtype == torch.float32
                assert hl.float().tolist() == fl.tolist()
                # ties may come out in another order: the same (anchor, class) pairs, with the same box codes
                pairs_half = sorted(zip((hi * 5 + hc).tolist(), hb.tolist()))
                assert pairs_half == sorted(zip((fi * 5 + fc).tolist(), fb.tolist()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_selection_helpers_agree_with_torch(dtype):
    """The k-th largest value and the indices at or above a threshold: numpy's answer (float32 / float64 on the
    CPU) and torch's (other dtypes) are torch's kthvalue and nonzero."""
    g = torch.Generator().manual_seed(8)
    values = torch.randn(1000, generator=g).round(decimals=1).to(dtype)  # ties
    for k in (1, 2, 500, 1000):
        assert pp._kth_largest(values, k) == float(torch.kthvalue(values, 1000 - k + 1).values)
    for threshold in (-5.0, 0.0, 0.3, 9.0):
        got = pp._indices_at_least(values, threshold)
        assert got.dtype == torch.int64
        assert torch.equal(got, torch.nonzero(values >= threshold).squeeze(1))


def test_select_candidates_takes_the_networks_anchor_maxima():
    """The shortcut is taken, not just tolerated: maxima that hide the best anchor lose its pairs."""
    cls, box = flat_outputs_with_maxima(batch=1)
    best = int(cls.anchor_maxima[0].argmax())
    cls.anchor_maxima[0, best] = -math.inf
    assert best not in pp.select_candidates(cls, box, 5, 10)[0][1].tolist()
    assert best in pp.select_candidates(list(cls), box, 5, 10)[0][1].tolist()


def test_postprocess_score_threshold_keeps_what_an_unthresholded_run_keeps_above_it():
    """The threshold reaches the candidate selection as a logit floor; hard NMS never lets a lower score
    suppress a higher one, so the result must be the unthresholded one's boxes at or above the threshold."""
    g = torch.Generator().manual_seed(5)
    shapes = [(16, 12), (8, 6), (4, 3)]
    cls = [torch.randn(1, 9 * 3, h, w, generator=g) - 2 for h, w in shapes]
    box = [0.3 * torch.randn(1, 9 * 4, h, w, generator=g) for h, w in shapes]
    n = sum(h * w * 9 for h, w in shapes)
    corner, size = 200 * torch.rand(n, 2, generator=g), 10 + 50 * torch.rand(n, 2, generator=g)
    anchors = torch.cat([corner, corner + size], 1)  # (y1, x1, y2, x2), overlapping at random
    for threshold in (0.2, 0.5, 0.8):
        full = pp.postprocess(cls, box, anchors, 3, topk=3000, max_det=5000, score_threshold=0.0)[0]
        cut = pp.postprocess(cls, box, anchors, 3, topk=3000, max_det=5000, score_threshold=threshold)[0]
        keep = full["scores"] >= threshold
        assert 0 < int(keep.sum()) < len(keep)
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(cut[key], full[key][keep]), key


def test_postprocess_decodes_the_top_candidates():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 20, 10, 30]])  # (y1, x1, y2, x2)
    cls = [torch.tensor([[[[-5.0]], [[3.0]]]]).reshape(1, 2, 1, 1)]  # 1 location, 2 "anchors" x 1 class
    box = [torch.zeros(1, 8, 1, 1)]
    out = pp.postprocess(cls, box, anchors, num_classes=1, topk=1)
    assert out[0]["boxes"].tolist() == [[20.0, 0.0, 30.0, 10.0]]
    assert out[0]["scores"].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())


def random_lite0_outputs(num_classes: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """A randomly initialised Lite0's raw outputs for one 128 px noise image, and its anchors."""
    from efficientdet import create_model
    from efficientdet.ops.anchors import anchors_for_config

    torch.manual_seed(0)
    model = create_model("efficientdet-lite0", num_classes=num_classes).eval()
    with torch.no_grad():
        cls, box = model(torch.randn(1, 3, 128, 128))
    return cls, box, anchors_for_config(model.config, (128, 128))


def test_postprocess_nms_options_on_a_real_model():
    cls, box, anchors = random_lite0_outputs(4)
    hard = pp.postprocess(cls, box, anchors, 4, max_det=50)[0]
    soft = pp.postprocess(cls, box, anchors, 4, max_det=50, nms="soft")[0]
    agnostic = pp.postprocess(cls, box, anchors, 4, max_det=100_000, class_agnostic=True)[0]
    per_class = pp.postprocess(cls, box, anchors, 4, max_det=100_000)[0]
    assert len(hard["scores"]) == len(soft["scores"]) == 50
    assert (soft["scores"][1:] <= soft["scores"][:-1]).all() and (hard["scores"][1:] <= hard["scores"][:-1]).all()
    assert soft["scores"][0] == hard["scores"][0]  # the best box is never decayed
    assert len(agnostic["scores"]) < len(per_class["scores"])
    with pytest.raises(ValueError, match="unknown NMS method"):
        pp.postprocess(cls, box, anchors, 4, nms="linear")


def test_box_voting_moves_a_kept_box_to_the_score_weighted_mean_of_its_cluster():
    # box 0 is kept; box 1 overlaps it by IoU 0.9 (votes), box 2 by 0.6 (does not vote at 0.8), box 3 is another
    # class (never votes for box 0), box 4 is far away and kept itself
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 6], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.3, 0.8, 0.95, 0.5])
    classes = torch.tensor([0, 0, 0, 1, 0])
    kept = torch.tensor([0, 4])
    voted = pp.vote_boxes(kept, boxes, scores, classes, iou_threshold=0.8)
    assert iou(boxes[0].tolist(), boxes[1].tolist()) == pytest.approx(0.9)
    assert iou(boxes[0].tolist(), boxes[2].tolist()) == pytest.approx(0.6)
    y2 = (0.9 * 10 + 0.3 * 9) / (0.9 + 0.3)
    assert voted.tolist() == [pytest.approx([0, 0, 10, y2]), pytest.approx([50, 50, 60, 60])]
    voted = pp.vote_boxes(kept, boxes, scores, classes, iou_threshold=0.5)  # now box 2 votes too
    y2 = (0.9 * 10 + 0.3 * 9 + 0.8 * 6) / (0.9 + 0.3 + 0.8)
    assert voted[0].tolist() == pytest.approx([0, 0, 10, y2])
    voted = pp.vote_boxes(kept, boxes, scores, None, iou_threshold=0.8)  # class-agnostic: box 3 votes as well
    y2 = (0.9 * 10 + 0.3 * 9 + 0.95 * 10) / (0.9 + 0.3 + 0.95)
    assert voted[0].tolist() == pytest.approx([0, 0, 10, y2])
    assert pp.vote_boxes(torch.tensor([], dtype=torch.long), boxes, scores, classes, 0.8).shape == (0, 4)


def test_postprocess_with_box_voting_keeps_the_same_detections_with_voted_corners():
    cls, box, anchors = random_lite0_outputs(3)
    for nms in pp.NMS_METHODS:
        plain = pp.postprocess(cls, box, anchors, 3, max_det=20, nms=nms)[0]
        voted = pp.postprocess(cls, box, anchors, 3, max_det=20, nms=nms, vote_iou=0.5)[0]
        assert torch.equal(voted["scores"], plain["scores"]) and torch.equal(voted["labels"], plain["labels"])
        moved = (voted["boxes"] - plain["boxes"]).abs().amax(1) > 1e-4
        assert 0 < int(moved.sum()) < len(moved)  # some boxes had close neighbours of their class, some not
        # a voted box is a mean of boxes overlapping the kept one by IoU >= 0.5: it stays near it
        sizes = plain["boxes"][:, 2:] - plain["boxes"][:, :2]
        assert (voted["boxes"] - plain["boxes"]).abs().max() < 0.25 * sizes.max()


def three_candidates() -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Three anchors (one location, three "anchors" x 1 class, zero box codes: each decodes to its anchor) over a
    picture that fills rows 0-40 of a 64 px input: one box inside it, one across its bottom edge, one in the
    padding below it, scored 0.6, 0.7 and 0.9."""
    anchors = torch.tensor([[4.0, 4, 20, 20], [30, 30, 50, 50], [44, 0, 60, 64]])  # (y1, x1, y2, x2)
    logits = torch.logit(torch.tensor([0.6, 0.7, 0.9]))
    return [logits.reshape(1, 3, 1, 1)], [torch.zeros(1, 12, 1, 1)], anchors


def test_postprocess_clips_candidates_to_the_picture_and_drops_those_outside_it():
    """A letterboxed picture leaves padding in the input; a candidate there is no detection of the picture, and a
    box across the picture's edge is clipped to it (the region of each image, input pixels)."""
    cls, box, anchors = three_candidates()
    plain = pp.postprocess(cls, box, anchors, num_classes=1)[0]
    assert plain["boxes"].tolist() == [[0.0, 44, 64, 60], [30, 30, 50, 50], [4, 4, 20, 20]]
    clipped = pp.postprocess(cls, box, anchors, num_classes=1, regions=[(0.0, 0.0, 64.0, 40.0)])[0]
    assert clipped["boxes"].tolist() == [[30.0, 30, 50, 40], [4, 4, 20, 20]]
    assert clipped["scores"].tolist() == pytest.approx([0.7, 0.6])
    soft = pp.postprocess(cls, box, anchors, num_classes=1, nms="soft", regions=[(0.0, 0.0, 64.0, 40.0)])[0]
    assert soft["boxes"].tolist() == clipped["boxes"].tolist()


def test_postprocess_gives_the_slots_of_candidates_outside_the_picture_to_real_ones():
    """max_det counts detections of the picture: the best-scored candidate in the padding does not take a slot."""
    cls, box, anchors = three_candidates()
    kept = pp.postprocess(cls, box, anchors, num_classes=1, max_det=2, regions=[(0.0, 0.0, 64.0, 40.0)])[0]
    assert kept["scores"].tolist() == pytest.approx([0.7, 0.6])


def test_postprocess_suppresses_with_the_clipped_boxes():
    """NMS compares what the picture holds: two boxes that differ only below the picture's edge are one box."""
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 30, 10]])  # IoU 1/3 as decoded, 1 inside rows 0-10
    cls = [torch.logit(torch.tensor([0.9, 0.8])).reshape(1, 2, 1, 1)]
    box = [torch.zeros(1, 8, 1, 1)]
    assert len(pp.postprocess(cls, box, anchors, num_classes=1)[0]["boxes"]) == 2
    assert len(pp.postprocess(cls, box, anchors, num_classes=1, regions=[(0.0, 0.0, 10.0, 10.0)])[0]["boxes"]) == 1


def test_postprocess_drops_slivers_along_the_pictures_edge():
    """A box reaching 0.005 px into the picture keeps no real area there: dropped, like an empty one."""
    anchors = torch.tensor([[39.995, 0, 60, 64], [39.9, 0, 60, 64]])  # 0.005 and 0.1 px inside rows 0-40
    cls = [torch.logit(torch.tensor([0.9, 0.8])).reshape(1, 2, 1, 1)]
    out = pp.postprocess(cls, [torch.zeros(1, 8, 1, 1)], anchors, num_classes=1, regions=[(0.0, 0.0, 64.0, 40.0)])
    assert out[0]["scores"].tolist() == pytest.approx([0.8])
    assert out[0]["boxes"][0].tolist() == pytest.approx([0.0, 39.9, 64, 40])
