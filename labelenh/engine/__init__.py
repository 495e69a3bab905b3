"""One training loop for teachers and students.

The engine knows nothing of datasets, views or stores: a *task* hands it batches that already
carry what the loss needs, and computes the loss. The engine owns the optimiser, the learning
rate schedule, AMP/channels-last, evaluation, checkpoints, resume and early stopping.

    config     TrainConfig: the training settings and their checks
    optim      the optimiser (timm) and the learning rate at a step
    runs       the files of a run folder and the names it may have
    core       Batch, the Task protocol, and the Engine loop
    evaluation predict, and the metrics of the evaluation splits (temperature scaling on val)
    records    a run's records: checkpoint state, resume, the run folder's files, the summary
    progress   the progress bar and the line printed after each epoch
"""

from labelenh.engine.config import (
    LEGACY_TRAIN,
    SCHEDULES,
    TrainConfig,
    check_optimizer,
    cpu_channels_last,
    with_memory_format,
)
from labelenh.engine.core import Batch, Engine, FitResult, Task
from labelenh.engine.evaluation import predict
from labelenh.engine.optim import build_optimizer, learning_rate
from labelenh.engine.runs import NAME_MAX_BYTES, RUN_FILES, check_run_name

__all__ = [
    "LEGACY_TRAIN", "NAME_MAX_BYTES", "RUN_FILES", "SCHEDULES", "Batch", "Engine", "FitResult", "Task",
    "TrainConfig", "build_optimizer", "check_optimizer", "check_run_name", "cpu_channels_last", "learning_rate",
    "predict", "with_memory_format",
]
