"""Training: the config, the loop (one process or DDP), data order, checkpoints and metrics.

``train(cfg, resume=...)`` is the one entry point that the CLI, the bench and the demo use.
"""

from mirai.training.config import TrainConfig
from mirai.training.trainer import Trainer, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train"]
