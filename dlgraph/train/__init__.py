"""Training: posterior inference, prompt proposals, ELBO scoring, the trainer, checkpoints."""

from dlgraph.train.options import TrainerOptions
from dlgraph.train.records import Estimate, FitResult, StepRecord
from dlgraph.train.trainer import VariationalTrainer

__all__ = ["Estimate", "FitResult", "StepRecord", "TrainerOptions", "VariationalTrainer"]
