"""The run directory: a new run only where nothing would be overwritten or mixed, a resume only from a
checkpoint and never over later ones, a run that ended left as it is (and only for its own config), and what each
checkpoint records about its own step."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from helpers import make_cfg, sigterm_after_step

from mirai.errors import CheckpointError, ConfigError
from mirai.training.metrics import read_metrics
from mirai.training.trainer import train


def test_existing_run_needs_resume(stores, tmp_path):
    cfg = make_cfg(stores, tmp_path / "run", steps=2)
    train(cfg)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = train(cfg, resume=True)  # the run ended at step 2: no second final validation, checkpoint or grid
    assert again.step == 2 and again.checkpoint.name == "step_0000002"
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics
    result = train(make_cfg(stores, tmp_path / "run", steps=4), resume=True)
    assert result.step == 4


def test_a_new_run_is_refused_in_a_folder_of_other_work(stores, tmp_path):
    notes, codes = tmp_path / "notes", stores / "codes_train"
    notes.mkdir()
    (notes / "config.yaml").write_text("my precious notes\n")
    listing = sorted(p.name for p in codes.iterdir())
    for run_dir, shown in [(notes, "config.yaml, which is not a training config"), (codes, "codes.npy, files.txt")]:
        with pytest.raises(ConfigError, match=f"holds files a training run does not write \\({shown}.*new or empty"):
            train(make_cfg(stores, run_dir, steps=2))
    assert (notes / "config.yaml").read_text() == "my precious notes\n"
    assert sorted(p.name for p in codes.iterdir()) == listing
    # A run stopped before its first checkpoint leaves only what a run writes: a new run starts it over.
    stopped = tmp_path / "stopped"
    train(make_cfg(stores, stopped, steps=1))
    shutil.rmtree(stopped / "checkpoints")  # config.yaml, log.txt, metrics.jsonl, samples/ are left
    assert train(make_cfg(stores, stopped, steps=1)).step == 1


def test_saved_work_and_run_files_of_the_wrong_kind_are_refused_too(stores, tmp_path):
    kept = tmp_path / "kept"  # an ended run whose step checkpoints were deleted to free space
    train(make_cfg(stores, kept, steps=2, eval_every=1))
    for step_dir in (kept / "checkpoints").glob("step_*"):
        shutil.rmtree(step_dir)
    with pytest.raises(ConfigError, match=r"holds checkpoints of an earlier run \(best\): continue from one with "
                                          r"--resume .*checkpoints/best"):
        train(make_cfg(stores, kept, steps=2, seed=5))
    assert json.loads((kept / "checkpoints" / "best" / "config.json").read_text())["meta"]["seed"] == 3
    for name, make in [("config.yaml", "dir"), ("log.txt", "dir"), ("checkpoints", "file")]:
        odd = tmp_path / f"odd_{name}"
        odd.mkdir()
        (odd / name).mkdir() if make == "dir" else (odd / name).write_text("x")
        with pytest.raises(ConfigError, match=f"does not write \\({name}"):
            train(make_cfg(stores, odd, steps=1))
        assert sorted(p.name for p in odd.iterdir()) == [name]  # no lock file, config or log was left


def test_a_resume_without_a_checkpoint_leaves_nothing_behind(stores, tmp_path):
    codes = shutil.copytree(stores / "codes_train", tmp_path / "codes")
    listing = sorted(p.name for p in codes.iterdir())
    with pytest.raises(CheckpointError, match="no checkpoint to resume from .*leave out --resume"):
        train(make_cfg(stores, codes, steps=1), resume=True)
    assert sorted(p.name for p in codes.iterdir()) == listing  # not even a .lock


@pytest.mark.parametrize("resume", [True, "auto"])
def test_a_run_stopped_at_its_last_step_does_its_end_of_run_work_on_resume(stores, tmp_path, monkeypatch, resume):
    sigterm_after_step(monkeypatch, lambda trainer: trainer.step == trainer.total_steps)
    cfg = make_cfg(stores, tmp_path / "run", steps=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    last = tmp_path / "run" / "checkpoints" / "step_0000002"
    assert json.loads((last / "config.json").read_text())["meta"]["finished"] is False
    monkeypatch.undo()
    result = train(cfg, resume=resume)  # the bench resumes with "auto"
    assert result.step == 2 and result.samples is not None and result.samples.is_file()
    assert json.loads((last / "config.json").read_text())["meta"]["finished"] is True
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "val/nll_ema" in r] == [2]


def test_a_checkpoint_records_only_a_validation_of_its_own_weights(stores, tmp_path):
    run = tmp_path / "run"  # validations at step 2, checkpoints at step 3: step 3's weights were never validated
    train(make_cfg(stores, run, steps=4, eval_every=2, save_every=3, keep_last=3))
    meta = {p.name: json.loads((p / "config.json").read_text())["meta"] for p in (run / "checkpoints").iterdir()}
    assert meta["step_0000003"]["val_nll"] is None and meta["step_0000004"]["val_nll"] is not None
    assert meta["best"]["step"] == 4


def test_a_full_disk_while_saving_a_checkpoint_is_an_os_error_naming_it(stores, tmp_path, monkeypatch):
    """safetensors reports a full disk with its own error type; it reaches the command line as ENOSPC (one line
    there, see test_sample_records), the half-written checkpoint removed."""
    import errno

    from safetensors import SafetensorError

    from mirai import checkpoint

    def disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(OSError) as caught:
        train(make_cfg(stores, tmp_path / "run", steps=1))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith("checkpoints/step_0000001")
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("resume", [True, None])
def test_a_run_another_process_is_starting_is_busy_not_without_a_checkpoint(stores, tmp_path, resume):
    """Before its first checkpoint a run's folder holds only the lock and logs: a second `mirai train` (--resume
    or not) there is told who holds it, not that there is no checkpoint or that the folder holds other work."""
    import fcntl
    import os

    from mirai.errors import BusyError

    run = tmp_path / "run"
    run.mkdir()
    (run / "log.txt").write_text("mirai train: loading the data\n")
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)  # another open file: its flock conflicts as another process's
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242")
        with pytest.raises(BusyError, match=f"run_dir {run} is in use by another mirai process \\(pid 4242\\)"):
            train(make_cfg(stores, run, steps=2), resume=resume)
    finally:
        os.close(fd)


def test_a_resume_from_an_earlier_checkpoint_does_not_replace_the_later_ones(stores, tmp_path, capsys):
    """Rolling back in place would overwrite the later checkpoints, ``best`` and metrics: refused, naming both
    ways on (a new run_dir to branch, deleting the later ones to roll back); the branch then trains."""
    cfg = make_cfg(stores, tmp_path / "run", steps=4, save_every=2, keep_last=3)
    train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    saved = {p.name: (p / "model.safetensors").read_bytes() for p in checkpoints.iterdir() if p.name.startswith("step")}
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    for given in (checkpoints / "step_0000002", str(checkpoints / "step_0000002")):
        with pytest.raises(ConfigError, match="holds checkpoints after step 2 .*step_0000004.*add run_dir=NEW.*delete"):
            train(make_cfg(stores, tmp_path / "run", steps=4, save_every=2, keep_last=3), resume=given)
    assert {p.name: (p / "model.safetensors").read_bytes() for p in checkpoints.iterdir()
            if p.name.startswith("step")} == saved
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics
    branch = train(make_cfg(stores, tmp_path / "branch", steps=4, save_every=2), resume=checkpoints / "step_0000002")
    assert branch.step == 4 and branch.checkpoint.parent == tmp_path / "branch" / "checkpoints"
    # The command line the error suggests: the checkpoint's run config goes on in the new run_dir.
    from mirai.cli.main import main

    assert main(["train", "--resume", str(checkpoints / "step_0000002"), f"run_dir={tmp_path / 'branch2'}"]) == 0
    assert (tmp_path / "branch2" / "checkpoints" / "step_0000004").is_dir()
    # Not into a folder that holds another run (its own config would be read as a change of settings).
    capsys.readouterr()
    assert main(["train", "--resume", str(checkpoints / "step_0000002"), f"run_dir={tmp_path / 'branch2'}"]) != 0
    assert re.search(r"run_dir .*branch2 already holds another run: branch from .* into a new", capsys.readouterr().err)


@pytest.mark.parametrize("change", [{"seed": 5}, {"model.name": "GPT-Micro"}, {"optim.batch_size": 4}, {"steps": 3}])
def test_an_ended_run_is_not_returned_for_another_config(stores, tmp_path, change):
    """``resume="auto"`` returns a run that already ended only for its own config: another seed, model or batch
    is refused as ``--resume`` refuses it, and fewer steps than the run took is refused too."""
    train(make_cfg(stores, tmp_path / "run", steps=4))
    assert train(make_cfg(stores, tmp_path / "run", steps=4, log_every=2), resume="auto").step == 4  # resumable
    with pytest.raises(ConfigError, match="would change|past this run's 3 steps"):
        train(make_cfg(stores, tmp_path / "run", **{"steps": 4, **change}), resume="auto")


def test_resume_refuses_another_code_store(stores, tmp_path):
    train(make_cfg(stores, tmp_path / "run", steps=2))
    other = shutil.copytree(stores / "codes_train", tmp_path / "other_codes")
    np.save(other / "labels.npy", np.roll(np.load(other / "labels.npy"), 1))  # the same images, other labels
    with pytest.raises(ConfigError, match="data.codes"):
        train(make_cfg(stores, tmp_path / "run", steps=4, **{"data.codes": str(other)}), resume=True)
    copy = shutil.copytree(stores / "codes_train", tmp_path / "copied_codes")  # the same data, moved: goes on
    assert train(make_cfg(stores, tmp_path / "run", steps=4, **{"data.codes": str(copy)}), resume=True).step == 4
    # The ended run, asked for again from yet another copy (as a bench does with resume="auto"): the same data too.
    again = shutil.copytree(copy, tmp_path / "copied_again")
    assert train(make_cfg(stores, tmp_path / "run", steps=4, **{"data.codes": str(again)}), resume="auto").step == 4


def test_a_branch_starts_from_the_config_its_checkpoint_saved(stores, tmp_path):
    """The run went on with another learning rate after step 2; a branch from step 2 trains as step 2 was trained."""
    from mirai.cli.main import main
    from mirai.config import read_yaml

    train(make_cfg(stores, tmp_path / "run", steps=4, save_every=2, keep_last=3))
    train(make_cfg(stores, tmp_path / "run", steps=6, save_every=2, keep_last=3, **{"optim.lr": 1e-3}), resume=True)
    assert read_yaml(tmp_path / "run" / "config.yaml")["optim"]["lr"] == 1e-3
    step_2 = tmp_path / "run" / "checkpoints" / "step_0000002"
    assert main(["train", "--resume", str(step_2), f"run_dir={tmp_path / 'branch'}"]) == 0
    branched = read_yaml(tmp_path / "branch" / "config.yaml")
    assert branched["optim"]["lr"] == 3e-3 and branched["steps"] == 4
