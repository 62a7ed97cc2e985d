"""A reader that goes away (`mirai train | head`) must not stop a command or lose its work (cli.main.outlive_reader)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import make_cfg

from mirai.checkpoint import read_meta
from mirai.config import to_dict
from mirai.training import state as run_state


def run_with_stdout_closed(argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``python -m mirai ARGV`` whose stdout is closed before the interpreter starts: every print fails with
    EPIPE, as in ``mirai ... | head -1`` once head has exited."""
    proc = subprocess.Popen([sys.executable, "-m", "mirai", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, proc.returncode, None, err.decode())


def test_a_short_command_ends_normally_without_a_traceback():
    done = run_with_stdout_closed(["flops"])
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_training_goes_on_to_its_last_checkpoint_when_its_reader_has_gone(stores, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(to_dict(make_cfg(stores, tmp_path / "run", steps=4, log_every=1))))
    done = run_with_stdout_closed(["train", "--config", str(config)])
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    last = run_state.latest_checkpoint(tmp_path / "run")
    assert run_state.checkpoint_step(last) == 4 and read_meta(last)["finished"]
