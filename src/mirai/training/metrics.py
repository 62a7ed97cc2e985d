"""Metrics: a JSONL log always, TensorBoard and Weights & Biases when asked for."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mirai.config import write_text_atomic
from mirai.errors import ConfigError


class MetricsLogger:
    """Appends ``{"step": ..., "time": ..., **metrics}`` lines to ``RUN/metrics.jsonl``."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = False, wandb: bool = False,
                 config: dict | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = self.wb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("tensorboard=true needs the tensorboard package: pip install 'mirai[tensorboard]'") from None
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise ConfigError("wandb=true needs the wandb package: pip install 'mirai[wandb]'") from None
            self.wb = wandb_module.init(project="mirai", dir=str(run_dir), config=config, name=Path(run_dir).name)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
        if self.wb is not None:
            self.wb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop records after ``step``: a resumed run logs those steps again from its checkpoint."""
    path = Path(run_dir) / "metrics.jsonl"
    records = read_metrics(run_dir)
    if any(r["step"] > step for r in records):
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records if r["step"] <= step))
