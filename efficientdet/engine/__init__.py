"""Training: one :class:`Trainer` (the loop and the paper's recipe) and one :class:`Task` per problem."""

from .components import Checkpointer, MetricsLog, NonFiniteGuard
from .recipe import RecipeConfig
from .trainer import Task, Trainer, resume_settings, run_training
from .utils import ModelEma, TrainingError, amp_mode, resolve_device

__all__ = [
    "Checkpointer",
    "MetricsLog",
    "ModelEma",
    "NonFiniteGuard",
    "RecipeConfig",
    "Task",
    "Trainer",
    "TrainingError",
    "amp_mode",
    "resolve_device",
    "resume_settings",
    "run_training",
]
