"""Object detection as a training task: focal + Huber loss on anchors, COCO AP (pycocotools) as the metric.

The loss is the paper's (section 3.3 keeps RetinaNet's focal loss; the official code adds a Huber box loss with
weight 50); each image's ground truth is assigned to anchors by :mod:`efficientdet.ops.labeler` (the official
fixed-IoU matcher, or ATSS with `--assigner atss`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ...data.dataset import Batch, DetectionDataset, loader_kwargs
from ...data.images import ImageReadError, load_image
from ...data.readers import has_split, read_dataset, single_set
from ...data.records import DetectionData, ImageRecord
from ...evaluation.coco import (
    COCO_MAX_DETECTIONS,
    CocoEvaluation,
    dense_evaluation_line,
    detections_to_keep,
    format_metrics,
)
from ...evaluation.data_check import data_summary
from ...evaluation.plots import write_evaluation_plots
from ...evaluation.validate import evaluate_model, predict_records
from ...models.config import ModelConfig, get_config, list_models
from ...models.detector import EfficientDet
from ...models.factory import checkpoint_labels, config_for_checkpoint, load_pretrained_backbone
from ...models.finetune import describe_mapping, shared_classes, transfer_state
from ...models.hub import detection_weights_file, resolve_weights
from ...models.weights import load_weights, read_checkpoint
from ...ops.labeler import ASSIGNERS, MATCH_IOU, labeler_for_config
from ...ops.losses import BOX_LOSS_WEIGHT, FOCAL_ALPHA, FOCAL_GAMMA, IOU_LOSS_TYPES, IOU_LOSS_WEIGHT, detection_loss
from ...ops.postprocess import flatten_outputs
from ...utils.atomic import atomic_open
from ...utils.distributed import DistEnv, all_reduce_sum
from ...utils.fields import flag_name, increasing_pair, int_at_least, number_in, one_of, option, optional_text
from ...utils.text import counted
from ...viz.draw import draw_batch, draw_detections
from ...viz.plot import plot_training_metrics
from ..recipe import RecipeConfig
from ..tensorboard_log import TensorBoardLogger
from ..trainer import Task
from ..utils import TrainingError, shared_images_line
from .detection_recipe import LARGE_DATA, SMALL_DATA, SMALL_DATA_IMAGES, choose_settings

LOG = logging.getLogger(__name__)

# Default jitter of `efficientdet train` (the paper's 0.1-2.0 is `--scale-range 0.1 2.0`): milder for small data.
DEFAULT_TRAIN_SCALE_RANGE = (0.5, 1.5)
DATASET_FORMATS = ("voc", "coco", "yolo")
AUTO_VALIDATION = "auto"  # val_split: the dataset's "val" split if it has one, else a held-out share of train
DEFAULT_VALIDATION_SPLIT = "val"
# The share of the training split held out when the dataset has no validation split: what detector trainers do
# (a seeded random 10%, at least one image), so that best.pt and the printed AP measure images the model did not
# train on.
DEFAULT_HOLDOUT_FRACTION = 0.1
# The final epochs see single, unblended images only, as the evaluation does (YOLOv8's close_mosaic: the last 10 of
# 100 epochs; YOLOX: the last 15 of 300 without mosaic and mixup).
MIXING_CLOSE_FRACTION = 0.1
MIN_HOLDOUT_IMAGES = 10  # fewer training images than this: no holdout, train on all (and say so)
# --data and --format of `train` and `eval` (one wording, one check)
DATASET_HELP = "dataset: VOC root, YOLO root (data.yaml) or COCO json / folder"
DATASET_OPTION = option(DATASET_HELP)
# train's --resume may name the run's data at a new path: the trainer checks that it holds the run's training images
TRAIN_DATASET_OPTION = option(DATASET_HELP + " (--resume: the run's own data at a new path)", resume=True)
FORMAT_OPTION = option("dataset format", one_of(DATASET_FORMATS, optional=True), default_text="detected")
PLOTS_DIR = "plots"  # under the output folder: PR curves, F1 curve and confusion matrix of the final evaluation
# Options of the data's recipe that a checkpoint may lack, because its run was saved before they existed, and what
# that run did without them; a resumed run goes on that way (None would be "choose from the data", which a resumed
# run never does)
BEFORE_THE_OPTION: dict[str, float] = {"color_jitter": 0.0, "iou_loss_weight": 0.0}
TENSORBOARD_IMAGES = 4  # validation images drawn with the EMA model's detections at each evaluation
TENSORBOARD_SCORE_THRESHOLD = 0.3  # as `efficientdet predict` draws: lower scores only clutter the picture


def _augmentation_probability(text: str) -> dict[str, Any]:
    """The option of an augmentation applied with probability P (0: off, the default)."""
    return option(text, number_in(0, 1), metavar="P")


def mixing_epochs(epochs: int) -> int:
    """The epochs (from the first) that may train on mosaics and mixups: all but the last MIXING_CLOSE_FRACTION,
    at least one closing epoch when there are two or more."""
    closing = max(1, round(MIXING_CLOSE_FRACTION * epochs)) if epochs > 1 else 0
    return epochs - closing


@dataclass
class TrainConfig(RecipeConfig):
    """Every option of `efficientdet train` (the CLI maps its flags one to one onto these fields)."""

    model: str = field(default="efficientdet-lite0", metadata=one_of(list_models()))
    data: str | None = field(default=None, metadata=TRAIN_DATASET_OPTION)
    val_split: str | None = field(
        default=AUTO_VALIDATION,
        metadata=option(
            "split evaluated after each epoch: 'auto' uses 'val' when the dataset has one, else holds out "
            "--holdout-fraction of the training split (seeded by --seed); 'none': no evaluation",
            parse=optional_text,
        ),
    )
    holdout_fraction: float = field(
        default=DEFAULT_HOLDOUT_FRACTION,
        metadata=option(
            "with --val-split auto and no 'val' split: the share of training images held out for validation",
            number_in(0, 1, low_open=True, high_open=True),
        ),
    )
    holdout_seed: int | None = field(
        default=None,
        metadata=option(
            "seed of the held-out draw (keep it fixed to compare settings or --seed values on the same images)",
            default_text="--seed",
        ),
    )
    format: str | None = field(default=None, metadata=FORMAT_OPTION)
    # None: from the data's recipe (detection_recipe: 60 for small and large data alike)
    epochs: int | None = field(
        default=None,
        metadata=option(
            "epochs", int_at_least(1, optional=True), resume=True,
            default_text=str(SMALL_DATA.epochs)
            if SMALL_DATA.epochs == LARGE_DATA.epochs
            else f"from the data: {SMALL_DATA.epochs} below {SMALL_DATA_IMAGES:,} training images, "
            f"else {LARGE_DATA.epochs}",
        ),
    )  # fmt: skip
    img_size: int | None = field(
        default=None,
        metadata=option(
            "input size", int_at_least(1, optional=True),
            default_text=f"from the data: at least {SMALL_DATA.min_img_size} below {SMALL_DATA_IMAGES:,} training "
            "images, else the model's own",
        ),
    )  # fmt: skip
    freeze_backbone: bool | None = field(
        default=None,
        metadata=option(
            "train only the feature network and heads",
            default_text=f"from the data: on below {SMALL_DATA_IMAGES:,} training images with a pretrained backbone",
        ),
    )
    scale_range: tuple[float, float] = field(default=DEFAULT_TRAIN_SCALE_RANGE, metadata=increasing_pair(0.0))
    # Photometric augmentation (brightness, contrast, saturation); None: from the data's recipe (detection_recipe:
    # off for both; on raccoon's held-out training images it won on one draw and lost on two others)
    color_jitter: float | None = field(
        default=None,
        metadata=option(
            "photometric augmentation: brightness, contrast and saturation each scaled by 1 +- this (0: off)",
            number_in(0, 1, high_open=True, optional=True),
            metavar="S",
            default_text=f"from the data's recipe: {SMALL_DATA.color_jitter:g} for small data (below "
            f"{SMALL_DATA_IMAGES:,} training images), {LARGE_DATA.color_jitter:g} for large",
        ),
    )  # fmt: skip
    # YOLOv4's mosaic (four images on one canvas), off for the last MIXING_CLOSE_FRACTION of the epochs. Off by
    # default: on three draws of images held out of raccoon's train split at 0.5 it gained ~0.02 AP on two, lost
    # 0.066 on the third; on BCCD's val split it lost 0.009 (docs/recipe.md)
    mosaic: float = field(
        default=0.0,
        metadata=_augmentation_probability(
            "probability that a training sample is a mosaic of four images (0: off); the last "
            f"{MIXING_CLOSE_FRACTION:.0%} of the epochs train without it"
        ),
    )
    # Mixup (two training images blended, the boxes of both), off for the last MIXING_CLOSE_FRACTION of the epochs.
    # Off by default: at 0.5 it lost 0.059 AP on a draw of images held out of raccoon's train split (docs/recipe.md)
    mixup: float = field(
        default=0.0,
        metadata=_augmentation_probability(
            "probability that a training sample is blended with another training image, keeping the boxes of "
            f"both (0: off); the last {MIXING_CLOSE_FRACTION:.0%} of the epochs train without it"
        ),
    )
    # Object-aware random erasing: a random patch of up to 40% of a box's area replaced by noise. Off by default: at
    # 0.5 it lost 0.019 and 0.029 AP on two draws of images held out of raccoon's train split (docs/recipe.md)
    erase: float = field(
        default=0.0,
        metadata=_augmentation_probability(
            "probability that each training box gets a random patch inside it erased (0: off)"
        ),
    )
    # Weight of the Huber box loss against the focal class loss (the paper: 50). Higher asks for tighter boxes.
    box_loss_weight: float | None = field(
        default=None,
        metadata=option(
            "weight of the box loss against the class loss (higher: tighter boxes)", number_in(0, optional=True),
            default_text=f"from the data: {SMALL_DATA.box_loss_weight:g} below {SMALL_DATA_IMAGES:,} training "
            f"images, else the paper's {BOX_LOSS_WEIGHT:g}",
        ),
    )  # fmt: skip
    # A generalized-IoU loss on the decoded boxes beside the Huber loss on their codes (the official code's
    # iou_loss_type='giou' with iou_loss_weight); None: from the data's recipe (detection_recipe: on for small data,
    # where it won on validation; off, the official default, for large)
    iou_loss_weight: float | None = field(
        default=None,
        metadata=option(
            "weight of a generalized-IoU loss on the decoded boxes, added to the box loss (0: off)",
            number_in(0, optional=True),
            metavar="W",
            default_text=f"from the data: {SMALL_DATA.iou_loss_weight:g} below {SMALL_DATA_IMAGES:,} training "
            f"images, else the official code's {IOU_LOSS_WEIGHT:g}",
        ),
    )
    # Which IoU loss --iou-loss-weight weighs (the official code's iou_loss_type)
    iou_loss_type: str = field(
        default="giou",
        metadata=option(
            "the IoU loss of --iou-loss-weight: generalized (giou), distance (diou) or complete IoU (ciou)",
            one_of(IOU_LOSS_TYPES),
        ),
    )
    # The IoU at which an anchor becomes a positive of a ground-truth box (the official matcher's 0.5; below it a
    # negative, and each box keeps its best anchor whatever the IoU)
    match_iou: float = field(
        default=MATCH_IOU,
        metadata=option(
            "IoU with a ground-truth box from which an anchor trains as that box's positive (below: background)",
            number_in(0, 1, low_open=True),
        ),
    )
    # RetinaNet's ignore band (Lin et al. 2017: 0.4 to 0.5): anchors whose best IoU lies in [unmatched, match) are
    # neither positives nor background; the official code's unmatched_threshold, equal to the match IoU by default.
    # Neither the band (0.4) nor ATSS below beat the official matcher on held-out raccoon images (docs/recipe.md).
    unmatched_iou: float | None = field(
        default=None,
        metadata=option(
            "IoU from which an anchor that is no positive is ignored rather than background (below --match-iou)",
            number_in(0, 1, low_open=True, optional=True),
            default_text="the --match-iou: no ignore band, as in the official code",
        ),
    )
    # How anchors become positives: the official fixed IoU (--match-iou) or ATSS (Zhang et al., CVPR 2020), where
    # each box sets its own threshold from the anchors nearest its centre
    assigner: str = field(
        default="iou",
        metadata=option(
            "how anchors are assigned to boxes: a fixed IoU (iou, the official matcher; see --match-iou) or "
            "adaptive training sample selection (atss)",
            one_of(ASSIGNERS),
        ),
    )
    # The focal loss's constants (Lin et al. 2017): alpha weighs the positives against the negatives, gamma how far
    # well-classified anchors are down-weighted. The defaults are the EfficientDet paper's (section 5.1), chosen on
    # COCO; on held-out raccoon images alpha 0.5 and RetinaNet's gamma 2 did not beat them (docs/recipe.md).
    focal_alpha: float = field(
        default=FOCAL_ALPHA,
        metadata=option(
            "focal loss alpha: the weight of positive anchors (negatives: 1 - alpha)",
            number_in(0, 1, low_open=True, high_open=True),
        ),
    )
    focal_gamma: float = field(
        default=FOCAL_GAMMA,
        metadata=option(
            "focal loss gamma: how strongly well-classified anchors are down-weighted (0: cross-entropy)", number_in(0)
        ),
    )
    # The class score as an estimate of the box's IoU with its object (Li et al. 2020, quality focal loss); off:
    # the paper's focal loss
    quality_focal: bool = field(
        default=False,
        metadata=option("train the class scores towards each box's IoU with its object (quality focal loss)"),
    )
    # ImageNet backbone weights for a fresh start (packaged for Lite0-2, else downloaded once): a detector trained
    # from a random backbone on a small dataset is a trap nobody asks for. Unused with checkpoint / pretrained.
    pretrained_backbone: bool = True
    pretrained: bool = field(
        default=False, metadata=option("start from the published COCO weights of --model (downloaded once)")
    )
    # The "recipe: ..." line of the run: which settings were chosen from the data and which were given
    recipe: str | None = field(default=None, metadata=option("the settings chosen from the data", cli=False))

    @property
    def held_out_seed(self) -> int:
        """The seed of the held-out draw: ``holdout_seed``, else ``seed``."""
        return self.seed if self.holdout_seed is None else self.holdout_seed

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pretrained and self.checkpoint:
            raise ValueError("give --checkpoint or --pretrained (the published weights), not both")
        if self.quality_focal and (self.focal_alpha, self.focal_gamma) != (FOCAL_ALPHA, FOCAL_GAMMA):
            # the quality focal loss has no alpha and its own exponent: the values would be dropped without a word
            raise ValueError("--focal-alpha / --focal-gamma shape the focal loss, which --quality-focal replaces")
        if self.unmatched_iou is not None and self.unmatched_iou > self.match_iou:
            raise ValueError(
                f"--unmatched-iou ({self.unmatched_iou:g}) must not exceed --match-iou ({self.match_iou:g})"
            )
        if self.assigner == "atss" and (self.match_iou != MATCH_IOU or self.unmatched_iou is not None):
            # ATSS sets each box's threshold itself: the thresholds would be dropped without a word
            raise ValueError(
                "--match-iou / --unmatched-iou set the fixed-IoU matcher's thresholds, which --assigner atss replaces"
            )


# the BiFPN and head sizes `train` may set (--fpn-channels, --fpn-repeats, --head-repeats); a fine-tuning run
# cannot change them: the checkpoint's weights have their shapes
NECK_FIELDS = ("fpn_channels", "fpn_repeats", "head_repeats")


def build_model(cfg: TrainConfig, class_names: list[str], category_ids: list[int] | None = None) -> EfficientDet:
    """A model for ``class_names``: fresh, from ImageNet backbone weights, or fine-tuned from a checkpoint.

    A checkpoint (``checkpoint``, or ``pretrained``: the published COCO weights) gives everything but the rows of
    the class head for classes it does not know by name, which start afresh (:mod:`efficientdet.finetune`); the
    mapping is logged. ``category_ids``: the dataset's ids of the classes (COCO JSON), kept with the model.
    """
    num_classes = len(class_names)
    overrides = dict(cfg.model_overrides)
    if cfg.img_size:
        overrides["image_size"] = cfg.img_size
    start = resolve_weights(cfg.checkpoint) if cfg.checkpoint else None
    if cfg.pretrained:
        start = str(detection_weights_file(cfg.model))
    if start:
        ckpt = read_checkpoint(start)
        settings = config_for_checkpoint(get_config(cfg.model), ckpt, start)
        saved = get_config(cfg.model).replace(**settings)
        changed = [k for k in NECK_FIELDS if k in overrides and overrides[k] != getattr(saved, k)]
        if changed:
            theirs = ", ".join(f"{k} {getattr(saved, k)}" for k in changed)
            flags = " / ".join(flag_name(k) for k in changed)
            raise ValueError(f"{flags}: {start} has {theirs}; a checkpoint's BiFPN and heads keep their size "
                             "(train from the ImageNet backbone to change it)")  # fmt: skip
        source_classes = saved.num_classes
        source_names, _ = checkpoint_labels(ckpt, source_classes)
        settings.update(overrides, num_classes=num_classes)
        model = EfficientDet(get_config(cfg.model).replace(**settings))
        if source_names is None and source_classes == num_classes:
            rows = {i: i for i in range(num_classes)}  # names unknown, same count: the classes in their order
        else:
            rows = shared_classes(source_names, class_names)
        state, kept = transfer_state(ckpt.state_dict, model, rows, source_classes)
        load_weights(model, state, source=start)
        LOG.info("fine-tuning from %s: %d classes -> %d: %s", start, source_classes, num_classes,
                 describe_mapping(kept, source_names, class_names))  # fmt: skip
    else:
        model = EfficientDet(get_config(cfg.model, num_classes=num_classes, **overrides))
        if cfg.pretrained_backbone and not cfg.resume:  # a resumed run loads its own weights over these
            load_pretrained_backbone(model)
    model.class_names = list(class_names)
    model.category_ids = [int(i) for i in category_ids] if category_ids is not None else None
    return model


def _report_fixes(name: str, fixes: dict[str, int]) -> None:
    done = {k: v for k, v in fixes.items() if v}
    if done:
        LOG.warning(
            "%s split: fixed while reading: %s", name, ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in done.items())
        )


def _save_batch_preview(batch: Batch, path: Path, config: ModelConfig, class_names: list[str]) -> None:
    """``train_batch0.jpg``: the first batch as the network gets it (augmented), with its target boxes.

    Wrong labels, boxes shifted by a bad format guess or lost by augmentation show at a glance, before hours of
    training. A file that cannot be written is a warning, never a reason to stop the run.
    """
    try:
        picture = draw_batch(batch.images, batch.targets, config.mean, config.std, class_names)
        with atomic_open(path, "wb") as f:
            picture.save(f, format="JPEG", quality=90)
    except OSError as e:
        LOG.warning("could not write %s: %s", path, e)


def _draw_predictions(model: EfficientDet, records: list[ImageRecord], device: torch.device) -> list[np.ndarray]:
    """Each readable image of ``records`` with ``model``'s detections drawn (HxWx3 uint8).

    Predicted as validation predicts (``predict_records``: batches in the model's own memory layout; a
    channels-last model fed NCHW images, as ``inference.Detector`` feeds them, runs several times slower on CPU).
    """
    dets, _ = predict_records(model, records, device=device, score_threshold=TENSORBOARD_SCORE_THRESHOLD)
    drawn = []
    for record, det in zip(records, dets):
        try:
            image = load_image(record.path)
        except ImageReadError:
            continue  # validation has already reported it
        picture = draw_detections(image, det["boxes"], det["labels"], det["scores"], model.class_names)
        drawn.append(np.asarray(picture))
    return drawn


def _log_pr_curves(tb: TensorBoardLogger, evaluation: CocoEvaluation, epoch: int) -> None:
    """Each class's validation PR curve at IoU 0.5 (pycocotools' interpolated precision), under ``val/pr/``."""
    t = evaluation.iou_index(0.5)
    for k, name in enumerate(evaluation.class_names):
        tb.pr_curve(f"val/pr/{name}", evaluation.precision[t, :, k], evaluation.recall_thresholds, epoch)
    tb.flush()


def hold_out(data: DetectionData, fraction: float, seed: int) -> tuple[DetectionData, DetectionData | None]:
    """``(train, validation)``: a seeded random ``fraction`` of ``data``'s images (at least one) held out, both in
    the reader's order; ``(data, None)`` when there are fewer than MIN_HOLDOUT_IMAGES images to share."""
    n = len(data.records)
    if n < MIN_HOLDOUT_IMAGES:
        return data, None
    count = min(n - 1, max(1, round(fraction * n)))
    held = set(np.random.default_rng(seed).permutation(n)[:count].tolist())
    kept = [r for i, r in enumerate(data.records) if i not in held]
    chosen = [r for i, r in enumerate(data.records) if i in held]
    return replace(data, records=kept), replace(data, records=chosen, fixes={})


def _holdout_line(cfg: TrainConfig, train_data: DetectionData, val_data: DetectionData | None) -> str:
    where = f"{cfg.data} has no {DEFAULT_VALIDATION_SPLIT!r} split"
    if val_data is None:
        return (f"validation: {where} and {cfg.train_split!r} has fewer than {MIN_HOLDOUT_IMAGES} images to share: "
                "training on all of them without evaluation")  # fmt: skip
    return (f"validation: {where}: holding out {len(val_data)} of {len(val_data) + len(train_data)} "
            f"{cfg.train_split!r} images (seed {cfg.held_out_seed}, --holdout-fraction {cfg.holdout_fraction:g}) "
            "to evaluate on; --val-split none trains on every image")  # fmt: skip


def _check_validation_split(cfg: TrainConfig, split: str, val_data: Any, speak: bool) -> None:
    """An empty validation split is a mistake worth stopping for; one without boxes scores AP -1 (undefined)."""
    if not len(val_data):
        raise TrainingError(
            f"{cfg.data}: validation split {split!r} has no images; "
            "name another with --val-split, or --val-split none to train without evaluation"
        )
    if speak and not any(len(r.boxes) for r in val_data.records):
        LOG.warning(
            "validation split %r has %s but no boxes: AP is undefined (-1) at every evaluation",
            split, counted(len(val_data), "image"),
        )  # fmt: skip


class DetectionTask(Task):
    """Boxes from a COCO JSON / VOC XML / YOLO txt dataset; best.pt is the best COCO AP of the EMA weights."""

    name = "detection"
    metric = "AP"
    divergence_hint = "Try a lower --lr, check the data for degenerate boxes, or --amp off."
    reports_skipped_images = True

    def __init__(self, cfg: TrainConfig, env: DistEnv, device: torch.device) -> None:
        super().__init__(cfg, env, device)
        self.val_data: DetectionData | None = None
        self.evaluation: Any = None  # the last evaluation (its COCO tables feed the plots)
        self.preview = Path(cfg.output) / "train_batch0.jpg" if env.is_main and not cfg.resume else None

    @property
    def loss_names(self) -> tuple[str, ...]:  # type: ignore[override]
        """The losses logged per epoch; ``iou_loss`` once the run has one (known after the recipe is chosen)."""
        return ("loss", "cls_loss", "box_loss") + (("iou_loss",) if self.cfg.iou_loss_weight else ())

    def read_data(self) -> None:
        cfg, env = self.cfg, self.env
        if cfg.data is None:
            raise TrainingError("no --data given (run `efficientdet demo` for a synthetic dataset)")
        train_data = read_dataset(cfg.data, cfg.format, cfg.train_split)
        if not len(train_data):
            raise TrainingError(f"{cfg.data}: split {cfg.train_split!r} has no images")
        if not any(len(record.boxes) for record in train_data.records):  # every image a negative: nothing to learn
            raise TrainingError(
                f"{cfg.data}: the training split {cfg.train_split!r} holds no boxes "
                f"({counted(len(train_data), 'image')}): nothing to learn; `efficientdet check-data --data {cfg.data}` "
                "shows what was read"
            )
        if env.is_main:
            _report_fixes(cfg.train_split, train_data.fixes)
        val_split = cfg.val_split
        if val_split not in (None, AUTO_VALIDATION) and single_set(cfg.data, cfg.format):
            where = ("give the dataset folder (annotations/instances_<split>.json), " if Path(cfg.data).is_file()
                     else "")  # fmt: skip
            raise TrainingError(
                f"{cfg.data} is one set without named splits, so --val-split {val_split} would evaluate on the "
                f"training images; {where}--val-split auto holds out part of it, or none"
            )
        val_data = None
        if val_split == AUTO_VALIDATION:
            if has_split(cfg.data, cfg.format, DEFAULT_VALIDATION_SPLIT):
                val_split = DEFAULT_VALIDATION_SPLIT
            else:
                train_data, val_data = hold_out(train_data, cfg.holdout_fraction, cfg.held_out_seed)
                if env.is_main:
                    LOG.info(_holdout_line(cfg, train_data, val_data))
                val_split = None
        if val_split:
            val_data = read_dataset(cfg.data, cfg.format, val_split)
            _check_validation_split(cfg, val_split, val_data, env.is_main)
            if env.is_main:
                shared = shared_images_line(f"validation split {val_split!r}", [r.path for r in val_data.records],
                                            f"the training split {cfg.train_split!r}",
                                            [r.path for r in train_data.records])  # fmt: skip
                if shared:
                    LOG.warning(shared)
                _report_fixes(val_split, val_data.fixes)
            val_data = val_data.with_class_names(train_data.class_names)
        self.train_data, self.val_data = train_data, val_data
        self.class_names = train_data.class_names
        if val_data is not None and env.is_main:
            keep = detections_to_keep(val_data.records)
            if keep != COCO_MAX_DETECTIONS:
                LOG.info(dense_evaluation_line(keep, val_data.records))
        self._choose_recipe()

    def _choose_recipe(self) -> None:
        """Fill the options left open from the training split's size (:mod:`.detection_recipe`); say what."""
        cfg = self.cfg
        if cfg.resume:  # the saved run's settings, chosen when it started
            for name, value in BEFORE_THE_OPTION.items():  # ... by code older than some options: as it ran then
                if getattr(cfg, name) is None:
                    setattr(cfg, name, value)
            return
        open_options = {"freeze_backbone": cfg.freeze_backbone, "img_size": cfg.img_size, "epochs": cfg.epochs,
                        "box_loss_weight": cfg.box_loss_weight, "color_jitter": cfg.color_jitter,
                        "iou_loss_weight": cfg.iou_loss_weight}  # fmt: skip
        pretrained = bool(cfg.pretrained_backbone or cfg.checkpoint or cfg.pretrained)
        choice = choose_settings(open_options, len(self.train_data), get_config(cfg.model).image_size, pretrained)
        for name, value in choice.values.items():
            setattr(cfg, name, value)
        cfg.recipe = choice.line
        if self.env.is_main:
            LOG.info(choice.line)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"recipe": self.cfg.recipe} if self.cfg.recipe else {}

    def training_files(self) -> list[str]:
        return [r.path for r in self.train_data.records]

    def build_model(self) -> nn.Module:
        return build_model(self.cfg, self.train_data.class_names, self.train_data.category_ids)

    def train_dataset(self, model: nn.Module) -> Dataset:
        cfg = self.cfg
        self.model_cfg = model_cfg = model.config
        size = model_cfg.image_size
        self.labeler = labeler_for_config(
            model_cfg, (size, size), cfg.assigner, cfg.match_iou, self.device, cfg.unmatched_iou
        )
        if self.env.is_main:
            LOG.info(data_summary(self.train_data, cfg.train_split, model_cfg, size, match_iou=cfg.match_iou))
        return DetectionDataset(
            self.train_data.records, size, model_cfg.mean, model_cfg.std, train=True,
            scale_range=tuple(cfg.scale_range), hflip=cfg.hflip, seed=cfg.seed, color_strength=cfg.color_jitter,
            mosaic=cfg.mosaic, mixup=cfg.mixup, mixing_epochs=mixing_epochs(cfg.epochs), erase=cfg.erase,
            reduced_decoding=cfg.reduced_decoding,
        )  # fmt: skip

    def loader_kwargs(self, workers: int) -> dict[str, Any]:
        return loader_kwargs(workers)

    def plot(self, csv_path: Path, png_path: Path) -> None:
        plot_training_metrics(str(csv_path), str(png_path))

    def prepare(self, batch: Batch) -> Any | None:
        env, device = self.env, self.device
        if not len(batch) and not env.distributed:
            return None
        if self.preview is not None and len(batch):  # a fresh run's first batch
            _save_batch_preview(batch, self.preview, self.model_cfg, self.class_names)
            self.preview = None
        targets = self.labeler([{k: v.to(device) for k, v in t.items()} for t in batch.targets]) if len(batch) else None
        if env.distributed:
            # every rank takes part in every step or none does; the loss normaliser counts all ranks' positives
            positives = float(targets.num_positives.sum()) if targets is not None else 0.0
            local = torch.tensor([float(len(batch) > 0), positives], dtype=torch.float64)
            together = all_reduce_sum(local.to(device))
            if int(together[0]) < env.world_size:
                return None  # some rank has no readable image in this step: all skip it
            targets = replace(targets, num_positives=together[1:].to(torch.float32))
        return batch, targets

    def loss(self, net: nn.Module, prepared: Any, autocast: Callable[[], Any]) -> dict[str, torch.Tensor]:
        batch, targets = prepared
        images = batch.images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with autocast():
            cls_out, box_out = net(images)
        k = self.model_cfg.num_classes
        cls_flat, box_flat = flatten_outputs(cls_out, box_out, k)
        cfg = self.cfg
        return detection_loss(cls_flat, box_flat, targets, k, box_weight=cfg.box_loss_weight,
                              iou_weight=cfg.iou_loss_weight, anchors=self.labeler.anchors_yxyx,
                              quality_focal=cfg.quality_focal, iou_type=cfg.iou_loss_type, alpha=cfg.focal_alpha,
                              gamma=cfg.focal_gamma)  # fmt: skip

    def evaluate(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        cfg = self.cfg
        self.evaluation = evaluate_model(
            model, self.val_data, self.model_cfg.image_size, cfg.batch_size, cfg.workers, self.device,
            distributed=self.env.distributed,
        )  # fmt: skip
        return self.evaluation.metrics, dict(self.evaluation.metrics)

    def loss_detail(self, row: dict[str, Any]) -> str:
        iou = f", iou {row['train_iou_loss']:.4f}" if "train_iou_loss" in row else ""
        return f" (cls {row['train_cls_loss']:.4f}, box {row['train_box_loss']:.5f}{iou})"

    def format_metrics(self, metrics: dict[str, Any]) -> str:
        return format_metrics(metrics)

    def after_epoch(
        self, tb: TensorBoardLogger | None, epoch: int, model: nn.Module, evaluated: bool, last: bool
    ) -> None:
        """Validation images with the EMA model's detections and the PR curves (TensorBoard); at the end, the
        evaluation plots: why the final weights score what they score."""
        if tb is not None and evaluated:
            records = self.val_data.records[:TENSORBOARD_IMAGES]  # the same images every time: one sees them improve
            tb.images("val/predictions", _draw_predictions(model, records, self.device), epoch)
            tb.flush()
            _log_pr_curves(tb, self.evaluation.coco, epoch)
        if evaluated and last:
            write_evaluation_plots(
                self.evaluation.coco, self.val_data, self.evaluation.detections, Path(self.cfg.output) / PLOTS_DIR
            )

    def summary(self, best: float) -> dict[str, Any]:
        return {"best_ap": best}


__all__ = ["DetectionTask", "TrainConfig", "build_model"]
