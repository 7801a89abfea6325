"""Training: posterior inference, prompt proposals, ELBO scoring, the trainer, its trainings."""

from dlgraph.train.options import TrainerOptions
from dlgraph.train.pace import Pace
from dlgraph.train.records import Estimate, FitResult, StepRecord
from dlgraph.train.run import Schedule
from dlgraph.train.trainer import VariationalTrainer

__all__ = [
    "Estimate",
    "FitResult",
    "Pace",
    "Schedule",
    "StepRecord",
    "TrainerOptions",
    "VariationalTrainer",
]
