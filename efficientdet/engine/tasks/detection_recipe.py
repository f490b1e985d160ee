"""The settings `efficientdet train` chooses from the data when the user leaves them open.

A detector trainer's defaults have to serve a 150-image dataset as well as COCO, and one fixed setting cannot:
- **Small data** (fewer than SMALL_DATA_IMAGES training images): the ImageNet backbone stays frozen (BN
  statistics and weights; only BiFPN and heads train), the input is at least SMALL_DATA_MIN_SIZE px and the box
  loss weighs more. A few hundred images cannot re-train a backbone without forgetting ImageNet, and the frozen
  backbone makes the larger input affordable. Found by earlier raccoon runs and compared with the previous
  defaults by ``benchmarks/recipe_search.py`` on images held out of raccoon's training split (docs/recipe.md has
  the table and that history). 60 epochs, not the 130 of those runs: on the held-out images 130 epochs scored
  0.682 AP and 60 epochs 0.669 (one seed each, a difference within one run's noise) in 46% of the time, which
  brings a run on a 2-core CPU without bf16 to about 30 minutes. No photometric augmentation (``--color-jitter``
  is there to turn it on): on those 32 held-out images it scored higher with three training seeds (mean +0.028
  AP), but on two other draws of 32 held-out images it scored lower (-0.019, -0.031); a setting that wins on one
  draw of validation images and loses on the next is not adopted. A generalized-IoU loss beside the Huber box
  loss (weight 8; the official code's ``iou_loss_type='giou'``): on three draws of raccoon images held out of
  ``train`` +0.003, -0.006 and +0.047 AP, on BCCD's ``val`` split +0.014: tighter boxes where AP50 is already
  high.
- **Large data**: the paper's recipe (section 5.1): every layer trains, at the model's own input size, box
  weight 50 (the official code's ``box_loss_weight``), no IoU loss; the schedule is this project's 60 epochs, not
  the paper's 300 COCO epochs.

Only the options left open (None) are chosen; anything the user gives wins. The choice is one log line and is
stored with the run (``TrainConfig.recipe``, saved in every checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...ops.losses import BOX_LOSS_WEIGHT, IOU_LOSS_WEIGHT
from ...utils.text import counted

SMALL_DATA_IMAGES = 1000  # training images (after any held-out share): fewer is "small data"
SMALL_DATA_MIN_SIZE = 448  # px: boxes placed better than at Lite0's 320; a frozen backbone trains ~1.6x faster


@dataclass(frozen=True)
class DataRecipe:
    """Values for the options a user left open, for one kind of dataset."""

    kind: str
    freeze_backbone: bool
    min_img_size: int | None  # None: the model's own size
    epochs: int
    box_loss_weight: float
    color_jitter: float  # photometric augmentation strength (0: off)
    iou_loss_weight: float  # weight of the generalized-IoU box loss (0: off)


SMALL_DATA = DataRecipe("small data", freeze_backbone=True, min_img_size=SMALL_DATA_MIN_SIZE, epochs=60,
                        box_loss_weight=200.0, color_jitter=0.0, iou_loss_weight=8.0)  # fmt: skip
# the paper's recipe has no photometric augmentation; COCO-scale data shows the lightings itself
LARGE_DATA = DataRecipe("large data", freeze_backbone=False, min_img_size=None, epochs=60,
                        box_loss_weight=BOX_LOSS_WEIGHT, color_jitter=0.0, iou_loss_weight=IOU_LOSS_WEIGHT)  # fmt: skip


def recipe_for(num_images: int) -> DataRecipe:
    """The recipe for a training split of ``num_images`` images."""
    return SMALL_DATA if num_images < SMALL_DATA_IMAGES else LARGE_DATA


def training_size(num_images: int, model_size: int) -> int:
    """The input size ``train`` picks when ``--img-size`` is left open: the model's own, and at least
    ``SMALL_DATA_MIN_SIZE`` for small data (``efficientdet check-data`` measures anchor coverage at it too)."""
    return max(model_size, recipe_for(num_images).min_img_size or 0)


@dataclass(frozen=True)
class RecipeChoice:
    """The chosen values of the open options and the line that tells the user."""

    values: dict[str, object]
    line: str


def choose_settings(
    given: dict[str, object], num_images: int, model_size: int, backbone_pretrained: bool
) -> RecipeChoice:
    """Values for the options of ``given`` that are None (left open), from the data; ``line`` says all of them.

    ``given``: ``freeze_backbone``, ``img_size``, ``epochs``, ``box_loss_weight``, ``color_jitter``,
    ``iou_loss_weight`` as the user set them (None: open).
    ``model_size``: the model's own input size. ``backbone_pretrained``: the backbone starts from trained weights
    (ImageNet or a checkpoint); a randomly initialised backbone is never frozen, whatever the data.
    """
    recipe = recipe_for(num_images)
    freeze = recipe.freeze_backbone and backbone_pretrained
    size = training_size(num_images, model_size)
    chosen = {"freeze_backbone": freeze, "img_size": size, "epochs": recipe.epochs,
              "box_loss_weight": recipe.box_loss_weight, "color_jitter": recipe.color_jitter,
              "iou_loss_weight": recipe.iou_loss_weight}  # fmt: skip
    values = {name: value for name, value in chosen.items() if given.get(name) is None}
    final = {**chosen, **{k: v for k, v in given.items() if v is not None}}
    words = {
        "freeze_backbone": "frozen backbone" if final["freeze_backbone"] else "backbone trained",
        "img_size": f"{final['img_size']} px",
        "epochs": counted(final["epochs"], "epoch"),
        "box_loss_weight": f"box weight {final['box_loss_weight']:g}",
        "color_jitter": f"colour jitter {final['color_jitter']:g}" if final["color_jitter"] else "no colour jitter",
        "iou_loss_weight": f"GIoU loss {final['iou_loss_weight']:g}" if final["iou_loss_weight"] else "no GIoU loss",
    }
    parts = [words[name] + ("" if name in values else " (given)") for name in words]
    bound = "fewer" if recipe is SMALL_DATA else "not fewer"
    line = (f"recipe: {recipe.kind} ({counted(num_images, 'training image')}, {bound} than {SMALL_DATA_IMAGES:,}) -> "
            f"{', '.join(parts)}")  # fmt: skip
    if recipe.freeze_backbone and not backbone_pretrained and given.get("freeze_backbone") is None:
        line += "; backbone trained because it starts from random weights"
    line += (
        "; each can be overridden (--[no-]freeze-backbone, --img-size, --epochs, --box-loss-weight, "
        "--color-jitter, --iou-loss-weight)"
    )
    return RecipeChoice(values, line)


__all__ = ["LARGE_DATA", "SMALL_DATA", "SMALL_DATA_IMAGES", "DataRecipe", "RecipeChoice", "choose_settings",
           "recipe_for", "training_size"]  # fmt: skip
