"""Output paths that cannot be written: refused with the reason named, before anything is made or loaded
(``mirai.errors.refuse_under_file``), and at lock time (``mirai.locks.exclusive_dir``) with the folders made
for the attempt removed again. The training-level cases are in test_training_faults.py."""

from __future__ import annotations

import os

import pytest

from mirai.bench.demo import DemoSettings
from mirai.errors import ConfigError, refuse_under_file
from mirai.locks import LOCK_FILE, exclusive_dir


def test_a_lock_file_the_system_refuses_is_a_config_error(tmp_path, monkeypatch):
    """A folder without write permission (as root only a patched ``os.open`` shows it): the reason is named
    and the folders made for the lock are removed."""
    opened = os.open

    def refuse_lock(path, *args):
        if str(path).endswith(LOCK_FILE):
            raise PermissionError(13, "Permission denied")
        return opened(path, *args)

    monkeypatch.setattr("mirai.locks.os.open", refuse_lock)
    with pytest.raises(ConfigError, match=r"test \S+new/run: cannot create \S+\.lock \(Permission denied\)"):
        with exclusive_dir(tmp_path / "new" / "run", "test"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_output_paths_are_checked_before_anything_is_made(tmp_path):
    """``refuse_under_file`` walks the levels as folder creation meets them and creates nothing."""
    (tmp_path / "file").write_text("")
    (tmp_path / "l1").symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(tmp_path / "nowhere")
    for path, message in [(tmp_path / "new" / ".." / "file" / "x", f"x: {tmp_path}/file is a file"),
                          (tmp_path / "m1" / "m2" / ".." / ".." / "file" / "x", f"x: {tmp_path}/file is a file"),
                          (tmp_path / "l1" / "x", rf"l1 is a broken symbolic link \(to {tmp_path}/nowhere\)"),
                          (tmp_path / "l1", "l1 is a broken symbolic link")]:
        with pytest.raises(ConfigError, match=message):
            refuse_under_file(path, "--out")
    with pytest.raises(ConfigError, match=r"run_dir \S+file is a file, not a run directory; choose another"):
        refuse_under_file(tmp_path / "file", "run_dir", folder="run directory")  # the folder itself, named
    for fine in (tmp_path / "new" / ".." / "new" / "x", tmp_path / "a" / "b"):
        refuse_under_file(fine, "--out")
    refuse_under_file(tmp_path / "file", "--out", file=True)  # an output file may exist (the caller decides)
    refuse_under_file(tmp_path / "l1", "--out", file=True)  # writing a file through a dangling link works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "l1", "l2"]
    for too_long in (tmp_path / ("a" * 300), tmp_path / ("a" * 300) / "x", tmp_path / "missing" / ("a" * 300)):
        for file in (False, True):
            with pytest.raises(ConfigError, match=r"cannot create \S+ \(File name too long\)"):
                refuse_under_file(too_long, "--out", file=file)
    with pytest.raises(ConfigError, match=r"out \(--out\) \S+: cannot create \S+ \(File name too long\)"):
        DemoSettings(out=tmp_path / ("a" * 300)).validate()  # "mirai demo --out": a message, not a traceback
