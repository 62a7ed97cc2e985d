"""The training loop on tiny models and stores: learning, exact resume, DDP equivalence,
signals, NaN handling, Mirai-I/E end to end, and the train/sample CLI. CPU-only, offline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from mirai import checkpoint
from mirai.cli.main import main
from mirai.config import from_dict, read_yaml
from mirai.errors import CheckpointError, ConfigError, DataError, TrainingError
from mirai.models import GPT
from mirai.training import objective as objective_module
from mirai.training.config import TrainConfig
from mirai.training.metrics import read_metrics
from mirai.training.trainer import Trainer, train

from helpers import MIRAI_E, assert_same, encoder_overrides, make_cfg, sigterm_after_step, weights


# ------------------------------------------------------------------------------------ one process
def test_training_learns_and_writes_a_complete_run(stores, tmp_path):
    cfg = make_cfg(stores, tmp_path / "run", steps=30, eval_every=10, save_every=10)
    result = train(cfg)
    run = Path(result.run_dir)
    records = read_metrics(run)
    losses = [r["loss/ntp"] for r in records if "loss/ntp" in r]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    vals = [r["val/nll_ema"] for r in records if "val/nll_ema" in r]
    assert len(vals) == 3 and result.val_nll == vals[-1] and vals[-1] < np.log(64)
    # keep_last=2 step checkpoints plus the best one; the final one is what the result names.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "step_0000020", "step_0000030"]
    assert result.checkpoint == run / "checkpoints" / "step_0000030"
    # best is the lowest validation's step checkpoint, of hard links (no second copy), and that step's own
    # training state already counts its validation as the best (a resume from it must not lose that).
    best_step = run / "checkpoints" / f"step_{10 * (1 + int(np.argmin(vals))):07d}"
    assert all((run / "checkpoints" / "best" / f.name).samefile(f) for f in best_step.iterdir())
    assert torch.load(best_step / "training_state.pt", weights_only=True)["best_val"] == min(vals)
    assert (run / "samples" / "final.png").is_file()
    # The saved config rebuilds the run's config exactly; the checkpoint holds it too.
    assert from_dict(TrainConfig, read_yaml(run / "config.yaml")) == cfg
    assert from_dict(TrainConfig, read_yaml(result.checkpoint / "train_config.yaml")) == cfg
    ema = checkpoint.load(result.checkpoint, GPT, use_ema=True)
    assert ema.args.n_layer == 2 and ema.args.vocab_size == 64 and ema.args.grid_size == 4


def test_gradient_accumulation_matches_one_big_batch(stores, tmp_path):
    results = []
    for accum in (1, 2):
        t = Trainer(make_cfg(stores, tmp_path / f"a{accum}", dropout=False, **{"optim.grad_accum": accum}))
        for _ in range(3):
            t.train_step()
        results.append(weights(t.gpt))
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("source", ["none", "ema", "ema_teacher", "encoder"])
def test_resume_continues_exactly(stores, tmp_path, source):
    """2k steps in one go == k steps, stop, resume for k more (dropout on: RNG state is restored)."""
    extra = {"none": {}, "ema": MIRAI_E, "ema_teacher": {**MIRAI_E, "foresight.teacher_decay": 0.5},
             "encoder": encoder_overrides(stores)}[source]
    whole = Trainer(make_cfg(stores, tmp_path / "whole", steps=6, **extra))
    whole.fit()
    # Same budget (schedules depend on the fraction of training done), stopped half way.
    first = Trainer(make_cfg(stores, tmp_path / "split", steps=6, **extra))
    for _ in range(3):
        first.train_step()
    first.save()
    second = Trainer(make_cfg(stores, tmp_path / "split", steps=6, **extra))
    second.resume()
    assert second.step == 3
    second.fit()
    assert_same(weights(whole.gpt), weights(second.gpt))
    assert_same(weights(whole.ema), weights(second.ema))
    if source != "none":
        assert_same(weights(whole.objective.auxiliary), weights(second.objective.auxiliary))
    if source == "ema_teacher":
        assert_same(weights(whole.objective.auxiliary.source.teacher),
                    weights(second.objective.auxiliary.source.teacher))
    assert_same(whole.optimizer.state_dict()["state"][0], second.optimizer.state_dict()["state"][0])


def test_code_ids_changed_after_extraction_are_a_data_error_when_read(stores, tmp_path):
    """The store's recorded range is trusted at start-up (no scan of a large codes.npy); a batch that reads
    ids outside the vocabulary names the file and the fix instead of failing in the model."""
    codes = shutil.copytree(stores / "codes_train", tmp_path / "codes")
    array = np.load(codes / "codes.npy", mmap_mode="r+")
    array[:, :, 0, 0] = 70  # the tokenizer has 64 codes
    array.flush()
    with pytest.raises(DataError, match=r"codes.npy holds code ids \d+..70 \(images \d+.*outside the vocabulary "
                                        r"0..63 that its extraction recorded.*re-run mirai extract"):
        train(make_cfg(stores, tmp_path / "run", steps=1, **{"data.codes": str(codes)}))


def test_sigterm_saves_a_checkpoint_then_stops(stores, tmp_path, monkeypatch):
    sigterm_after_step(monkeypatch, lambda trainer: trainer.step == 3)
    cfg = make_cfg(stores, tmp_path / "run", steps=10)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step")] == [
        "step_0000003"]
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was restored
    monkeypatch.undo()
    assert train(cfg, resume=True).step == 10


def test_nan_loss_stops_cleanly_and_keeps_the_last_checkpoint(stores, tmp_path, monkeypatch):
    cfg = make_cfg(stores, tmp_path / "run", steps=4, save_every=2)
    train(cfg)
    saved = tmp_path / "run" / "checkpoints" / "step_0000004"
    before = load_file(str(saved / "model.safetensors"))
    ntp = objective_module.ntp_loss
    calls = {"n": 0}

    def poisoned(logits, tokens):
        calls["n"] += 1
        loss = ntp(logits, tokens)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(objective_module, "ntp_loss", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan in step 6.*last checkpoint, .*step_0000004, holds finite weights"):
        train(make_cfg(stores, tmp_path / "run", steps=8, save_every=2), resume=True)
    assert_same(before, load_file(str(saved / "model.safetensors")))
    assert checkpoint.load(saved, GPT, use_ema=True) is not None


def test_config_errors_name_the_fix(stores, tmp_path):
    with pytest.raises(ConfigError, match=r"exactly one of steps and epochs.*steps=2000 epochs=0"):
        Trainer(make_cfg(stores, tmp_path / "r", epochs=1))
    with pytest.raises(ConfigError, match=r"config.optim: unknown key.*lerning_rate.*lr"):
        make_cfg(stores, tmp_path / "r", **{"optim.lerning_rate": 1})
    with pytest.raises(DataError, match="64-code tokenizer.*vocab_size=512"):
        Trainer(make_cfg(stores, tmp_path / "r", **{"model.vocab_size": 512}))
    with pytest.raises(DataError, match="grid_size=16"):
        Trainer(make_cfg(stores, tmp_path / "r", **{"model.grid_size": 16}))
    with pytest.raises(ConfigError, match="not divisible"):
        Trainer(make_cfg(stores, tmp_path / "r", **{"optim.batch_size": 9, "optim.grad_accum": 2}))
    with pytest.raises(ConfigError, match="data.codes"):
        Trainer(make_cfg(stores, tmp_path / "r", **{"data.codes": ""}))


# ------------------------------------------------------------------------------------ foresight
def test_mirai_e_trains_its_heads_and_exports_a_plain_gpt(stores, tmp_path):
    cfg = make_cfg(stores, tmp_path / "run", steps=12, **{
        "foresight.source": "ema", "foresight.warmup": 4, "foresight.warmup_unit": "step"})
    result = train(cfg)
    records = [r for r in read_metrics(result.run_dir) if "loss/ntp" in r]
    # NTP only during the warm-up, then three heads with lambda 2 -> 1 at half of training.
    assert all("loss/foresight" not in r and r["loss/total"] == r["loss/ntp"] for r in records[:4])
    assert all(r["loss/total"] == pytest.approx(r["loss/ntp"] + r["loss/foresight"]) for r in records[4:])
    assert {"foresight/loss0", "foresight/loss2", "foresight/lambda0"} <= records[-1].keys()
    assert records[5]["foresight/lambda0"] == 2.0 and records[-1]["foresight/lambda0"] == 1.0
    ckpt = checkpoint.read_checkpoint(result.checkpoint)
    assert not any("head" in k for k in ckpt.model)  # heads are training-only
    assert load_file(str(result.checkpoint / "auxiliary.safetensors"))


def test_mirai_e_teacher_decay_gives_the_teacher_its_own_horizon(stores, tmp_path):
    def run(name: str, **extra) -> Trainer:
        t = Trainer(make_cfg(stores, tmp_path / name, steps=6, dropout=False, **MIRAI_E, **extra))
        for _ in range(4):
            t.train_step()
        return t

    def teacher(t: Trainer) -> torch.nn.Module:
        return t.objective.auxiliary.source.teacher

    paper = run("paper")
    assert teacher(paper) is paper.ema and "teacher" not in paper.saved_states()  # the sampled EMA teaches
    # A separate teacher with the sampled EMA's decay follows the same path, so training is unchanged.
    same = run("same", **{"foresight.teacher_decay": 0.9})
    assert teacher(same) is not same.ema and same.saved_states()["teacher"].module is teacher(same)
    assert_same(weights(teacher(same)), weights(same.ema))
    assert_same(weights(same.gpt), weights(paper.gpt))
    # Decay 0: the teacher is the model itself after every step; the sampled EMA still averages.
    instant = run("instant", **{"foresight.teacher_decay": 0.0})
    assert_same(weights(teacher(instant)), weights(instant.gpt))
    assert not torch.equal(instant.ema.output.weight, instant.gpt.output.weight)
    assert not torch.equal(instant.gpt.output.weight, paper.gpt.output.weight)  # other targets after the warm-up
    # A checkpoint made without the separate teacher cannot resume a run that keeps one.
    paper.save()
    teacher_cfg = make_cfg(stores, tmp_path / "paper", steps=6, **MIRAI_E, **{"foresight.teacher_decay": 0.5})
    keeps_teacher = Trainer(teacher_cfg)
    with pytest.raises(ConfigError, match=r"foresight.teacher_decay: None -> 0.5"):  # the saved config differs
        keeps_teacher.resume()
    for saved in (tmp_path / "paper" / "checkpoints").glob("step_*/train_config.yaml"):
        saved.unlink()  # without the saved config, the missing teacher file itself is named
    with pytest.raises(CheckpointError, match="teacher.safetensors.*teacher_decay"):
        keeps_teacher.resume()
    with pytest.raises(ConfigError, match="teacher_decay"):
        make_cfg(stores, tmp_path / "bad", **MIRAI_E, **{"foresight.teacher_decay": 1.0})


def test_mirai_i_feature_cache_gives_the_same_targets(stores, tmp_path):
    live = Trainer(make_cfg(stores, tmp_path / "live", **encoder_overrides(stores)))
    cached = Trainer(make_cfg(stores, tmp_path / "cached", **encoder_overrides(stores),
                              **{"foresight.cache_features": True}))
    batch_live = live.data.step_batches(0, live.device, live.batch_fields)[0]
    batch_cached = cached.data.step_batches(0, cached.device, cached.batch_fields)[0]
    assert "images" in batch_live and "images" not in batch_cached
    targets_live = live.objective.auxiliary.source.targets(batch_live)
    targets_cached = cached.objective.auxiliary.source.targets(batch_cached)
    torch.testing.assert_close(targets_cached, targets_live, atol=2e-3, rtol=2e-3)  # float16 cache
    logs = [cached.train_step() for _ in range(15)]
    assert logs[-1]["foresight/loss0"] < logs[0]["foresight/loss0"]


# ------------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        t = Trainer(from_dict(TrainConfig, cfg_dict))
        t.fit()
        if rank == 0:
            torch.save({"gpt": weights(t.gpt), "ema": weights(t.ema), "heads": weights(t.objective.auxiliary)}, out)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_on_two_processes_matches_one_process(stores, tmp_path):
    from mirai.config import to_dict

    cfg = make_cfg(stores, tmp_path / "ddp", steps=4, dropout=False, eval_every=2,
                   **{"foresight.source": "ema", "foresight.warmup": 1, "foresight.warmup_unit": "step"})
    single = Trainer(make_cfg(stores, tmp_path / "single", steps=4, dropout=False, eval_every=2,
                              **{"foresight.source": "ema", "foresight.warmup": 1, "foresight.warmup_unit": "step"}))
    single.fit()
    out = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_worker, args=(2, _free_port(), to_dict(cfg), str(out)), nprocs=2, start_method="spawn")
    ddp = torch.load(out, weights_only=True)
    for name, module in (("gpt", single.gpt), ("ema", single.ema), ("heads", single.objective.auxiliary)):
        for k, v in weights(module).items():
            torch.testing.assert_close(ddp[name][k], v, rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
    single_vals = [r["val/nll_ema"] for r in read_metrics(tmp_path / "single") if "val/nll_ema" in r]
    ddp_vals = [r["val/nll_ema"] for r in read_metrics(tmp_path / "ddp") if "val/nll_ema" in r]
    np.testing.assert_allclose(ddp_vals, single_vals, rtol=1e-5)


# ------------------------------------------------------------------------------------ CLI
def test_cli_train_then_sample(stores, tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"run_dir: {tmp_path / 'run'}\nsteps: 3\ndevice: cpu\nprecision: fp32\nsave_every: 0\neval_every: 0\n"
        f"model: {{name: GPT-Nano}}\ndata: {{codes: {stores / 'codes_train'}}}\noptim: {{batch_size: 8}}\n"
    )
    assert main(["train", "--config", str(config), "optim.lr=1e-3", "--print-config"]) == 0
    assert "lr: 0.001" in capsys.readouterr().out
    assert main(["train", "--config", str(config), "optim.lr=1e-3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["val_nll"] is None
    # --resume without --config continues with the run's own config.yaml; an override may follow --resume.
    assert main(["train", "--resume", "steps=4", f"run_dir={tmp_path / 'run'}"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 4
    assert main(["train", "--resume", str(tmp_path / "run" / "checkpoints" / "step_0000004"), "steps=5"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 5  # the run from the path
    assert main(["train", "--config", str(config), "--resume", "steps=5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 5 and summary["checkpoint"].endswith("step_0000005")
    out = tmp_path / "samples"
    assert main(["sample", "--gpt", summary["checkpoint"], "--vq", str(stores / "vq"), "--out", str(out),
                 "--per-class", "2", "--device", "cpu", "--batch-size", "4"]) == 0
    npz = np.load(out / "samples.npz")
    assert npz["arr_0"].shape == (6, 8, 8, 3) and npz["arr_0"].dtype == np.uint8
    assert npz["labels"].tolist() == [0, 0, 1, 1, 2, 2] and npz["tokens"].shape == (6, 16)
    assert (out / "grid.png").is_file() and (out / "grid.pdf").is_file()
    # The grid's row names and title come from the checkpoint: its step and its training store's classes.
    from mirai.data.codes import CodeStore
    from mirai.sampling.grid import checkpoint_details

    assert checkpoint_details(summary["checkpoint"]) == (5, CodeStore.open(stores / "codes_train").class_names)


def test_a_warmup_longer_than_the_run_is_refused(stores, tmp_path):
    with pytest.raises(ConfigError, match="foresight.warmup is 15 epoch.*never start"):
        Trainer(make_cfg(stores, tmp_path / "r", **{"foresight.source": "ema"}))  # default: 15 epochs


@pytest.mark.parametrize(("length", "unit"), [({"steps": 6}, "step"), ({"steps": 0, "epochs": 2}, "epoch")])
def test_a_warmup_as_long_as_the_run_is_refused_by_the_config_alone(stores, tmp_path, length, unit):
    """In the run's own unit the config says it before any data is read (--print-config, bench planning);
    one unit shorter is accepted."""
    run = {**length, "foresight.source": "ema", "foresight.warmup_unit": unit}
    end = length.get("steps") or length["epochs"]
    with pytest.raises(ConfigError, match=f"foresight.warmup is {end:g} {unit}.*never start"):
        make_cfg(stores, tmp_path / "r", **run, **{"foresight.warmup": end})
    assert make_cfg(stores, tmp_path / "r", **run, **{"foresight.warmup": end - 1}).foresight.warmup == end - 1


@pytest.mark.parametrize("vq_args, spec_size, differ", [
    ({"codebook_size": 32, "codebook_dim": 4}, 8, "codebook size 32 vs 64"),
    ({"codebook_size": 64, "codebook_dim": 4}, 16, "grid side 8 vs 4"),
    ({"codebook_size": 64, "codebook_dim": 4}, 8, "extracted with another tokenizer"),  # same sizes, other weights
])
def test_validation_codes_from_another_tokenizer_name_the_training_codes_tokenizer(stores, tmp_path, vq_args,
                                                                                   spec_size, differ):
    """The validation store follows the training store: the error says to re-extract it with data.codes's
    tokenizer, not to change a model size that the training codes fix (one fix, not a back-and-forth)."""
    from mirai.data.codes import extract
    from mirai.data.folders import ImageFolder
    from mirai.data.views import ViewSpec
    from mirai.models import build_vq
    from mirai.training.data import TrainingData

    torch.manual_seed(1)  # not the training stores' VQ (seed 0)
    vq = build_vq("VQ-Tiny", **vq_args).eval()
    extract(vq, ImageFolder.scan(stores / "val"), ViewSpec("ten_crop", spec_size), tmp_path / "val",
            tokenizer_path=checkpoint.save(tmp_path / "vq", vq), progress=False)
    cfg = make_cfg(stores, tmp_path / "run", **{"data.val_codes": str(tmp_path / "val")})
    with pytest.raises(DataError, match=differ) as raised:
        TrainingData(cfg)
    message = str(raised.value)
    assert f"--tokenizer {stores / 'vq'}" in message and "model." not in message, message
    assert not (tmp_path / "run").exists()
