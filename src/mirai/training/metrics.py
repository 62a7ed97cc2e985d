"""Metrics: a JSONL log always, TensorBoard and Weights & Biases when asked for."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mirai.config import write_text_atomic
from mirai.errors import ConfigError, DataError


class LogWindow:
    """Step logs summed over a logging window, read once when the window is logged.

    Reading a device value waits for every queued kernel (a GPU sync); adding 0-d tensors only
    queues more, so the steps between two log lines never wait for the device (issue 15). ``read``
    gives the mean of each device value over the steps that reported it (LlamaGen logs the mean
    loss of its log interval too) and the latest value of each host number (learning rate, epoch,
    lambda: schedules, whose value at the logged step is the one to plot).
    """

    def __init__(self) -> None:
        self._device: dict[str, torch.Tensor] = {}
        self._host: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, logs: dict[str, torch.Tensor | float]) -> None:
        """Add one step's logs: 0-d tensors (kept on their device) or numbers."""
        for k, v in logs.items():
            if isinstance(v, torch.Tensor):
                v = v.detach().double()
                self._device[k] = self._device[k] + v if k in self._device else v
                self._counts[k] = self._counts.get(k, 0) + 1
            else:
                self._host[k] = float(v)

    def read(self, extra: torch.Tensor | None = None) -> tuple[dict[str, float], list[float]]:
        """(each key's mean or latest value since the last read, the values of the 1-d ``extra``), read
        from the device in one transfer; starts a new window."""
        names = list(self._device)
        parts = [torch.stack([self._device[k] for k in names])] if names else []
        if extra is not None:
            parts.append(extra.to(parts[0].device) if parts else extra)
        values = torch.cat(parts).tolist() if parts else []
        means = {k: v / self._counts[k] for k, v in zip(names, values)}
        means.update(self._host)
        self._device, self._host, self._counts = {}, {}, {}
        return means, values[len(names):]


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
                raise ConfigError("tensorboard=true needs the tensorboard package: pip install 'mirai-foresight[tensorboard]'") from None
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise ConfigError("wandb=true needs the wandb package: pip install 'mirai-foresight[wandb]'") from None
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


def _parse_metrics(path: Path) -> tuple[list[dict], bool]:
    """(records of ``path``, whether the file needs rewriting before new lines are appended).

    The logger appends whole lines, so a file that does not end in a newline was cut short by a
    kill: a last line that is not valid JSON (or not UTF-8) is dropped, and a complete one is kept
    but its newline is due. Any other line that is not a JSON record raises ``DataError`` naming it.
    """
    text = path.read_bytes().decode("utf-8", errors="replace")  # undecodable bytes fail as JSON below
    lines = text.splitlines()
    needs_rewrite = bool(lines) and not text.endswith("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            if needs_rewrite and number == len(lines):  # the torn end of a killed write
                break
            raise DataError(f"{path}, line {number}, is not a metrics record ({line[:80]!r}): the file was edited "
                            "or damaged; delete that line (or the file, losing the run's logged curves) and rerun")
        records.append(record)
    return records, needs_rewrite


def _record(line: str) -> dict | None:
    """The metrics record on ``line``, or None when it is not one."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of a run's ``metrics.jsonl`` ([] when it has none), without a torn last line."""
    path = Path(run_dir) / "metrics.jsonl"
    return _parse_metrics(path)[0] if path.is_file() else []


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop records after ``step`` (a resumed run logs those steps again from its checkpoint), and
    mend a last line a kill cut short, so that new records are not appended to it."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    records, needs_rewrite = _parse_metrics(path)
    if needs_rewrite or any(r["step"] > step for r in records):
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records if r["step"] <= step))
