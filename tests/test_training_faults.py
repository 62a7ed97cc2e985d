"""Training under faults users reported (issue 13): divergence, kills during and between saves,
two processes in one run directory, resumes with another config, wrapped checkpoint keys,
guidance without a trained null class, bit rot, signals and bad settings. CPU-only, offline."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mirai import checkpoint
from mirai.atomic import recover_interrupted_writes
from mirai.cli.main import main
from mirai.config import to_dict
from mirai.errors import BusyError, CheckpointError, ConfigError, DataError, TrainingError
from mirai.foresight.config import ForesightConfig
from mirai.locks import exclusive_dir
from mirai.models import GPT, build_gpt
from mirai.training import state as run_state
from mirai.training.config import TrainConfig, resume_changes
from mirai.training.metrics import read_metrics, truncate_metrics
from mirai.training.trainer import Trainer, train

from helpers import assert_same, make_cfg, sigterm_after_step, weights

SPAWN = multiprocessing.get_context("spawn")


def all_tensors_finite(folder: Path) -> bool:
    return all(torch.isfinite(v).all() for f in folder.glob("*.safetensors") for v in load_file(str(f)).values()
               if v.is_floating_point())


# ------------------------------------------------------------------------------------ divergence
@pytest.mark.parametrize("overrides", [{"optim.lr": 1e9}, {"optim.lr": 1e4}, {"optim.lr": 1e4, "optim.grad_clip": 0}])
def test_a_diverging_run_never_saves_non_finite_weights(stores, tmp_path, overrides):
    cfg = make_cfg(stores, tmp_path / "run", steps=12, save_every=1, **overrides)
    with pytest.raises(TrainingError, match="training diverged") as err:
        train(cfg)
    saved = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert saved and all(all_tensors_finite(p) for p in saved)
    assert str(saved[-1]) in str(err.value)  # the message names the checkpoint that really is the last finite one


def test_the_advised_recovery_from_divergence_works_and_is_recorded(stores, tmp_path, capsys):
    train(make_cfg(stores, tmp_path / "run", steps=3, save_every=1))
    with pytest.raises(TrainingError, match=r"the last checkpoint, .*step_0000003, holds finite weights"):
        train(make_cfg(stores, tmp_path / "run", steps=8, save_every=0, **{"optim.lr": 1e9}), resume=True)
    # A lower learning rate is a change --resume accepts, and records.
    result = train(make_cfg(stores, tmp_path / "run", steps=8, save_every=1, **{"optim.lr": 1e-3}), resume=True)
    assert result.step == 8 and all_tensors_finite(result.checkpoint)
    assert "resumed at step 3 with changed settings: optim.lr 0.003 -> 0.001" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "run" / "config_changes.jsonl").read_text().splitlines()]
    # Each change is against the config the resumed checkpoint was trained with (step 3's).
    assert [r["changes"] for r in records] == [{"optim.lr": [3e-3, 1e9], "save_every": [1, 0], "steps": [3, 8]},
                                              {"optim.lr": [3e-3, 1e-3], "steps": [3, 8]}]
    assert all(r["step"] == 3 for r in records)


def test_divergence_before_any_checkpoint_says_there_is_none(stores, tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint was saved yet"):
        train(make_cfg(stores, tmp_path / "run", steps=12, **{"optim.lr": 1e9}))


def test_non_finite_weights_are_never_written(tmp_path):
    model = build_gpt("GPT-Nano", vocab_size=16, grid_size=2, num_classes=2)
    with torch.no_grad():
        model.output.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"NaN or infinity.*output.weight"):
        checkpoint.save(tmp_path / "ck", model)
    assert not (tmp_path / "ck").exists() and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ kills
def _killed_worker(cfg_dict: dict, kill_at: str, step: int) -> None:
    """Train in a child that SIGKILLs itself: after step ``step`` ("step") or inside the save of
    checkpoint ``step`` once the weights are in the temporary directory ("save")."""
    from mirai.config import from_dict
    from mirai.training.config import TrainConfig

    torch.set_num_threads(1)
    if kill_at == "save":
        real = checkpoint.file_sha256

        def hash_then_die(path):
            if f"step_{step:07d}" in str(path.parent):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path)

        checkpoint.file_sha256 = hash_then_die
    else:
        real_step = Trainer.train_step

        def step_then_die(self):
            logs = real_step(self)
            if self.step == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return logs

        Trainer.train_step = step_then_die
    train(from_dict(TrainConfig, cfg_dict))


def run_killed(cfg, kill_at: str, step: int) -> None:
    child = SPAWN.Process(target=_killed_worker, args=(to_dict(cfg), kill_at, step))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL


def test_kill_9_between_saves_then_resume_is_exact(stores, tmp_path):
    whole = Trainer(make_cfg(stores, tmp_path / "whole", steps=8))
    whole.fit()
    cfg = make_cfg(stores, tmp_path / "killed", steps=8, save_every=3)
    run_killed(cfg, "step", 5)  # checkpoints at 3; steps 4 and 5 are lost
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").glob("step_*")] == ["step_0000003"]
    with (tmp_path / "killed" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # a kill in the middle of a log write leaves a torn last line
    result = train(cfg, resume=True)
    assert result.step == 8
    assert_same(weights(whole.gpt), load_file(str(result.checkpoint / "model.safetensors")))
    steps = [r["step"] for r in read_metrics(tmp_path / "killed") if "loss/ntp" in r]
    assert steps == list(range(1, 9))  # the lost steps were logged once, not twice


def test_metrics_reader_drops_a_torn_last_line_and_names_a_damaged_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    truncate_metrics(tmp_path, 5)  # nothing past step 5, but the torn line goes, so appends start clean
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo{"step": 2, "loss": 1.5}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl, line 2, is not a metrics record.*delete that line"):
        read_metrics(tmp_path)
    path.write_text('{"step": 1, "loss": 2.0}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2"):
        truncate_metrics(tmp_path, 0)
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}')  # whole, but its newline was lost
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    truncate_metrics(tmp_path, 5)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    path.write_bytes(b'{"step": 1, "loss": 2.0}\n\xff\xfe garbage')  # not UTF-8: torn as well
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    path.write_bytes(b'\xff\xfe garbage\n{"step": 1, "loss": 2.0}\n')
    with pytest.raises(DataError, match="line 1, is not a metrics record"):
        read_metrics(tmp_path)


def test_kill_during_the_first_save_leaves_a_run_that_starts_again(stores, tmp_path):
    cfg = make_cfg(stores, tmp_path / "run", steps=4, save_every=2)
    run_killed(cfg, "save", 2)
    folder = tmp_path / "run" / "checkpoints"
    assert [p.name for p in folder.iterdir()] and not list(folder.glob("step_*"))  # only a temporary dir
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        train(cfg, resume=True)
    result = train(cfg)  # a fresh start is not refused by the leftover, and removes it
    assert result.step == 4 and all(p.name.startswith(("step_", "best")) for p in folder.iterdir())
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "loss/ntp" in r] == [1, 2, 3, 4]


def test_kill_during_a_later_save_resumes_from_the_previous_checkpoint(stores, tmp_path):
    whole = Trainer(make_cfg(stores, tmp_path / "whole", steps=6))
    whole.fit()
    cfg = make_cfg(stores, tmp_path / "run", steps=6, save_every=2)
    run_killed(cfg, "save", 4)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")] == ["step_0000002"]
    result = train(cfg, resume=True)
    assert_same(weights(whole.gpt), load_file(str(result.checkpoint / "model.safetensors")))


def test_an_interrupted_replacement_is_restored(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / ".best.old-123").mkdir(parents=True)  # killed between moving best away and moving the new one in
    (folder / ".best.old-123" / "model.safetensors").write_bytes(b"x")
    (folder / ".step_0000004.tmp-abc").mkdir()
    done = recover_interrupted_writes(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["best"] and len(done) == 2


# ------------------------------------------------------------------------------------ one run per directory
def _hold(path: str, ready, release) -> None:
    with exclusive_dir(path, "run directory"):
        ready.set()
        release.wait(600)


def test_a_refused_start_leaves_no_directory_behind(stores, tmp_path):
    cfg = make_cfg(stores, tmp_path / "new" / "run", **{"foresight.source": "ema", "foresight.layer": 99,
                                                        "foresight.warmup": 0})  # found once the model is built
    with pytest.raises(ConfigError, match="foresight.layer=99 is outside"):
        train(cfg)
    assert not (tmp_path / "new").exists()  # nor the parent folder created for it
    for key, value, message in (("top_k", 999, r"top_k .* between 1 and \d+, got 999"),  # the store's vocabulary
                                ("guidance_interval", "[0.5, 0.5]", r"guidance_interval \(0.5, 0.5\) holds none")):
        with pytest.raises(ConfigError, match=r"sampling \(the run's sample grids\): " + message):
            train(make_cfg(stores, tmp_path / "new" / "run", **{f"sampling.{key}": value}))
        assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a directory that was there before, or that got other files, stays
    with pytest.raises(ValueError), exclusive_dir(tmp_path / "kept", "test"):
        raise ValueError
    with pytest.raises(ValueError), exclusive_dir(tmp_path / "written", "test"):
        (tmp_path / "written" / "log.txt").write_text("started")
        raise ValueError
    (tmp_path / "shared").mkdir()
    with pytest.raises(ValueError), exclusive_dir(tmp_path / "shared" / "a" / "b", "test"):
        (tmp_path / "shared" / "a" / "other").mkdir()  # a parent that got something else meanwhile stays
        raise ValueError
    (tmp_path / "old").mkdir()  # with ".." a level missing at first can name an old folder once its parent is made
    for dotted in (tmp_path / "new" / ".." / "old", tmp_path / "p" / "q" / ".." / "r"):
        with pytest.raises(ValueError), exclusive_dir(dotted, "test"):
            raise ValueError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "old", "shared", "written"]
    assert [p.name for p in (tmp_path / "shared" / "a").iterdir()] == ["other"]
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=f"test {tmp_path}/file/x: {tmp_path}/file is a file"):
        with exclusive_dir(tmp_path / "file" / "x", "test"):
            pass
    for below_file in (tmp_path / "made" / ".." / "file" / "x", tmp_path / "m1" / "m2" / ".." / ".." / "file" / "x"):
        with pytest.raises(ConfigError, match="file is a file"), exclusive_dir(below_file, "test"):
            pass  # the levels made before the file was met ("made", "m1/m2") are removed again
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=f"test {tmp_path}/link is a broken symbolic link"):
        with exclusive_dir(tmp_path / "link", "test"):
            pass
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for below_link, message in [(tmp_path / "made" / ".." / "link" / "x", "link is a broken symbolic link"),
                                (tmp_path / "loop" / "x", "loop is a symbolic link loop"),
                                (tmp_path / "made" / ("a" * 300) / "x", r"cannot create \S+ \(File name too long\)")]:
        with pytest.raises(ConfigError, match=message), exclusive_dir(below_link, "test"):
            pass  # named before "made" is removed again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "kept", "link", "loop", "old", "shared", "written"]
    assert (tmp_path / "kept").is_dir() and (tmp_path / "written" / "log.txt").is_file()


def test_a_second_trainer_in_the_same_run_directory_is_refused(stores, tmp_path):
    run = tmp_path / "run"
    train(make_cfg(stores, run, steps=2))
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    ready, release = SPAWN.Event(), SPAWN.Event()
    holder = SPAWN.Process(target=_hold, args=(str(run), ready, release))
    holder.start()
    try:
        assert ready.wait(300)  # the child imports torch first: minutes on a loaded machine
        with pytest.raises(BusyError, match=rf"run_dir {run} is in use by another mirai process \(pid {holder.pid}\)"):
            train(make_cfg(stores, run, steps=4), resume=True)
    finally:
        release.set()
        holder.join(30)
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # nothing was written by the refused trainer
    assert train(make_cfg(stores, run, steps=4), resume=True).step == 4  # the lock went with its holder


# ------------------------------------------------------------------------------------ resume with another config
@pytest.mark.parametrize("change", [{"seed": 4}, {"optim.batch_size": 4}, {"ema.decay": 0.5},
                                    {"optim.weight_decay": 0.1}, {"model.name": "GPT-Micro"}])
def test_resume_refuses_settings_the_checkpoint_was_not_trained_with(stores, tmp_path, change):
    train(make_cfg(stores, tmp_path / "run", steps=2))
    key = next(iter(change))
    with pytest.raises(ConfigError, match=rf"--resume would change {key}: .* -> .*another run_dir"):
        train(make_cfg(stores, tmp_path / "run", steps=4, **change), resume=True)
    assert "seed: 3" in (tmp_path / "run" / "config.yaml").read_text()  # the saved config is untouched


def test_resume_may_change_only_the_foresight_settings_its_source_never_reads():
    def config(**foresight) -> dict:
        return to_dict(TrainConfig(foresight=ForesightConfig(**foresight)))

    # The banner tells the user to drop such a setting: the resumed run must then accept that.
    saved = config(source="ema", encoder="fashion8", cache_features=True)
    assert resume_changes(saved, config(source="ema")) == {"foresight.cache_features": (True, False),
                                                           "foresight.encoder": ("fashion8", None)}
    assert resume_changes(config(k=3), config()) == {"foresight.k": (3, None)}  # no foresight reads nothing
    assert resume_changes(config(source="encoder", teacher_decay=0.9), config(source="encoder")) == {
        "foresight.teacher_decay": (0.9, None)}
    for saved, current in ((config(source="ema", teacher_decay=0.9), config(source="ema")),  # read by Mirai-E
                           (config(source="ema", encoder="fashion8"), config(source="encoder", encoder="fashion8")),
                           (config(k=3), config(source="ema", k=3))):
        with pytest.raises(ConfigError, match=r"--resume would change foresight\."):
            resume_changes(saved, current)


# ------------------------------------------------------------------------------------ checkpoint contents
def test_wrapper_names_are_stripped_as_whole_components():
    t = torch.zeros(1)
    state = {"module._fsdp_wrapped_module.layers.0._checkpoint_wrapped_module.attention.wqkv.weight": t,
             "_orig_mod.output.weight": t, "submodule.weight": t, "layers.0.my_module.w": t}
    stripped, _ = checkpoint.llamagen_state_dicts(state)
    assert sorted(stripped) == ["layers.0.attention.wqkv.weight", "layers.0.my_module.w", "output.weight",
                                "submodule.weight"]


def test_a_run_without_dropout_records_that_it_trained_no_null_class(stores, tmp_path):
    result = train(make_cfg(stores, tmp_path / "run", steps=2, dropout=False))
    gpt = checkpoint.load(result.checkpoint, GPT, use_ema=True)
    assert gpt.args.class_dropout_prob == 0.0 and gpt.args.null_class  # the row exists, untrained
    assert gpt.cls_embedding.embedding_table.num_embeddings == 4  # 3 classes + the null row
    assert (tmp_path / "run" / "samples" / "final.png").is_file()  # the trainer's own grid skipped guidance


def test_bit_rot_in_a_weights_file_is_named_on_load(stores, tmp_path):
    result = train(make_cfg(stores, tmp_path / "run", steps=2, **{"foresight.source": "ema",
                                                                  "foresight.warmup": 0}))
    for name in ("model.safetensors", "auxiliary.safetensors"):
        damaged = tmp_path / name
        damaged.write_bytes((result.checkpoint / name).read_bytes())
        data = bytearray(damaged.read_bytes())
        data[-3] ^= 0x01  # one flipped bit in the last tensor's data: still finite, still loads
        (result.checkpoint / name).write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=rf"{name} does not match the checksum"):
            if name == "model.safetensors":
                checkpoint.load(result.checkpoint, GPT)
            else:
                train(make_cfg(stores, tmp_path / "run", steps=4, **{"foresight.source": "ema",
                                                                     "foresight.warmup": 0}), resume=True)
        (result.checkpoint / name).write_bytes(damaged.read_bytes())
    assert checkpoint.load(result.checkpoint, GPT) is not None


def test_weights_files_are_readable_like_any_file(stores, tmp_path):
    result = train(make_cfg(stores, tmp_path / "run", steps=2))
    umask = os.umask(0)
    os.umask(umask)
    for f in result.checkpoint.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name


# ------------------------------------------------------------------------------------ signals and settings
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])  # a scheduler's stop; the terminal closed
def test_sigterm_exits_143_after_saving(stores, tmp_path, monkeypatch, capsys, signum):
    sigterm_after_step(monkeypatch, lambda trainer: trainer.step == 2, signum)
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(to_dict(make_cfg(stores, tmp_path / "run", steps=5))))
    assert main(["train", "--config", str(config)]) == 128 + signum
    assert f"stopped at step 2: {signal.Signals(signum).name}: saved" in (tmp_path / "run" / "log.txt").read_text()
    assert run_state.has_step_checkpoints(tmp_path / "run")
    assert capsys.readouterr().err.strip().endswith("at step 2; continue with --resume")


@pytest.mark.parametrize("override, message", [
    ({"log_every": 0}, "log_every must be at least 1"),
    ({"save_every": -1}, "save_every must be 0"),
    ({"eval_every": -2}, "eval_every must be 0"),
    ({"optim.lr": "nan"}, "optim.lr: expected a finite number"),
    ({"optim.lr": "inf"}, "optim.lr: expected a finite number"),
    ({"optim.grad_clip": -1}, "optim.grad_clip"),
    ({"ema.decay": "nan"}, "ema.decay: expected a finite number"),
    ({"data.val_images": -1}, "data.val_images"),
])
def test_bad_settings_are_refused_before_anything_runs(stores, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(stores, tmp_path / "run", **override)
    assert not (tmp_path / "run").exists()


def test_a_run_dir_that_cannot_be_a_run_directory_is_refused_in_one_line(stores, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me\n")
    ckpt = checkpoint.save(tmp_path / "model", build_gpt("GPT-Nano", vocab_size=16, grid_size=2, num_classes=2))
    listing = sorted(p.name for p in ckpt.iterdir())
    for run_dir, message in [(tmp_path / "notes.txt", "is a file, not a run directory"),
                             (tmp_path / "notes.txt" / "run", "notes.txt is a file, so nothing can be written"),
                             (ckpt, "holds config.json: it is a checkpoint or model folder")]:
        with pytest.raises(ConfigError, match=message):  # was a FileExistsError/NotADirectoryError traceback
            train(make_cfg(stores, run_dir, steps=2))
    assert (tmp_path / "notes.txt").read_text() == "keep me\n" and sorted(p.name for p in ckpt.iterdir()) == listing


def test_resuming_from_a_model_that_is_not_a_gpt_names_its_kind(stores, tmp_path):
    with pytest.raises(CheckpointError, match="holds a 'vq' model, not a GPT training checkpoint"):
        train(make_cfg(stores, tmp_path / "run", steps=2), resume="fashion/vq8")  # not "can seed a new run"


def test_a_config_directory_or_a_misspelt_name_is_named_with_what_to_give(tmp_path):
    from mirai.config import read_yaml

    with pytest.raises(ConfigError, match=r"is a directory; give a YAML file in it \(it holds none\)"):
        read_yaml(tmp_path)
    for name in "abcd":
        (tmp_path / "sub").mkdir(exist_ok=True)
        (tmp_path / "sub" / f"{name}.yaml").write_text("steps: 1\n")
    with pytest.raises(ConfigError, match=r"a YAML file in it, e.g. .*a.yaml, .*b.yaml, .*c.yaml and 1 more$"):
        read_yaml(tmp_path)
    (tmp_path / "z.yaml").write_text("steps: 1\n")  # the folder's own config before the deeper ones
    with pytest.raises(ConfigError, match=r"a YAML file in it, e.g. .*/z.yaml, .*sub/a.yaml, .*sub/b.yaml and 2 more$"):
        read_yaml(tmp_path)
    with pytest.raises(ConfigError, match=r"fashion/mirai_ee.yaml does not exist; did you mean fashion/mirai_e.yaml"):
        read_yaml("configs/fashion/mirai_ee.yaml")
    # Nothing close: no far-fetched guess, and the shipped configs are counted by folder, not all listed.
    with pytest.raises(ConfigError, match=r"does_not_exist.yaml does not exist \(Mirai ships bench/ \(\d+\), "
                                          r"fashion/ \(\d+\), imagenet/ \(\d+\), tokenizer/ \(\d+\) in .*configs; "
                                          r"name one as e.g. fashion/baseline.yaml\)$"):
        read_yaml("does_not_exist.yaml")


def test_resuming_a_checkpoint_past_the_runs_steps_is_refused(stores, tmp_path):
    result = train(make_cfg(stores, tmp_path / "run", steps=4))
    with pytest.raises(ConfigError, match=r"at step 4, past this run's 2 steps; set steps to at least 4"):
        train(make_cfg(stores, tmp_path / "other", steps=2), resume=result.checkpoint)


def test_a_mirai_e_teacher_of_another_model_is_refused():
    from mirai.foresight import ForesightConfig, build_auxiliary_loss

    student = build_gpt("GPT-Nano", vocab_size=64, grid_size=4, num_classes=3)
    other = build_gpt("GPT-Nano", vocab_size=64, grid_size=2, num_classes=3)
    with pytest.raises(ConfigError, match="teacher must be an EMA of the model itself.*2x2.*4x4"):
        build_auxiliary_loss(ForesightConfig(source="ema"), student, other)


@pytest.mark.parametrize("argv, message", [
    (["train"], "no config given: pass --config FILE"),
    (["train", "--config", "fashion/baseline.yaml", "seed=-1"], "seed must be non-negative"),
    (["train", "--config", "fashion/baseline.yaml", "seed=4294967296"], "seed must be .* below 2\\*\\*32"),
])
def test_train_without_a_config_or_with_a_negative_seed_says_so(tmp_path, argv, message):
    from helpers import assert_cli_refuses

    assert_cli_refuses(argv, tmp_path, match=message)


def test_an_interruption_checkpoint_never_pushes_out_a_scheduled_one(stores, tmp_path):
    """keep_last counts the save schedule first: a run stopped at step 3 and resumed keeps the checkpoints of
    steps 2, 4 and 6 (what a bench scores), not the resume point of step 3 (the fault: step 2 was lost)."""
    cfg = make_cfg(stores, tmp_path / "run", steps=6, save_every=2, keep_last=3)
    first = Trainer(cfg)
    for step in (1, 2, 3):
        first.train_step()
        if step >= 2:
            first.save()  # step 2: the schedule's save, as fit() writes it; step 3: what an interruption writes
    second = Trainer(cfg)
    second.resume()
    second.fit()
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert steps == ["step_0000002", "step_0000004", "step_0000006"]
