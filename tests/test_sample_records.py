"""Sample records compare by what the settings draw: settings spelt another way that draw the same tokens
(top-p 1 is no nucleus filtering; a guidance interval spanning every pass, or any interval without
guidance, is no interval) reuse a finished set; settings that draw otherwise are still refused."""

import os
import signal

import pytest
import torch
from helpers import assert_cli_refuses
from test_sampling import BASE, LABELS, tiny_gpt, tiny_vq

from mirai import checkpoint
from mirai.cli.main import main
from mirai.sampling import generate, pipeline
from mirai.sampling.pipeline import SampleSettings, sample_to_npz
from mirai.sampling.record import differences, draws_as

SAME = [  # (settings of the saved set, settings of the rerun): each pair draws the same tokens
    (dict(cfg_scale=1.5, top_p=1.0), dict(cfg_scale=1.5, top_p=None)),
    (dict(cfg_scale=1.5, guidance_interval=(0.0, 1.0)), dict(cfg_scale=1.5)),
    (dict(cfg_scale=1.0, guidance_interval=(0.2, 0.5)), dict(cfg_scale=1.0)),
    (dict(cfg_scale=1.5, top_k=16), dict(cfg_scale=1.5)),  # the whole vocabulary of tiny_gpt
]


@pytest.mark.parametrize("saved, now", SAME)
def test_settings_that_draw_alike_draw_the_same_tokens(saved, now):
    gpt = tiny_gpt()
    labels = torch.tensor([0, 1, 2, 1])
    tokens = [generate(gpt, labels, generator=torch.Generator().manual_seed(3), **kw) for kw in (saved, now)]
    assert torch.equal(*tokens)
    assert draws_as(vars(SampleSettings(**saved)), 16) == draws_as(vars(SampleSettings(**now)), 16)


@pytest.mark.parametrize("saved, now", SAME)
def test_a_finished_set_is_reused_under_settings_that_draw_alike(tmp_path, monkeypatch, saved, now):
    gpt, vq = tiny_gpt(), tiny_vq()
    out = sample_to_npz(gpt, vq, LABELS, tmp_path / "s.npz", **{**BASE, "settings": SampleSettings(**saved)})
    monkeypatch.setattr(pipeline, "sample_batch", lambda *a, **k: pytest.fail("sampled again"))
    assert sample_to_npz(gpt, vq, LABELS, out, **{**BASE, "settings": SampleSettings(**now)}) == out


def test_settings_that_draw_otherwise_still_differ():
    base = vars(SampleSettings(cfg_scale=1.5))
    assert differences({"settings": base}, {"settings": {**base, "top_p": 0.9}}) == ["settings.top_p: None -> 0.9"]
    assert differences({"settings": base}, {"settings": {**base, "top_k": 15}}, 16) == ["settings.top_k: None -> 15"]
    guided = {"settings": {**base, "guidance_interval": [0.0, 0.5]}}
    assert differences({"settings": base}, guided) == ["settings.guidance_interval: None -> [0.0, 0.5]"]
    # Compared as they draw, shown as written: a saved top-p of 1 is 1.0 in the refusal, not None.
    assert differences({"settings": {**base, "top_p": 1.0}}, {"settings": {**base, "top_p": 0.9}}) == \
        ["settings.top_p: 1.0 -> 0.9"]


def test_cli_rerun_says_it_reuses_the_set_and_prints_no_decoding_plan(tmp_path, monkeypatch, capsys):
    gpt, vq = checkpoint.save(tmp_path / "gpt", tiny_gpt()), checkpoint.save(tmp_path / "vq", tiny_vq())
    argv = [str(a) for a in ["sample", "--gpt", gpt, "--tokenizer", vq, "--out", tmp_path / "out", "--device", "cpu",
                             "--num-samples", "6", "--cfg-scale", "1.5"]]
    assert main(argv + ["--top-p", "1"]) == 0
    first = capsys.readouterr().out
    assert "decoding 2x2 tokens in 4 forward passes" in first and "wrote 6 samples" in first
    monkeypatch.setattr(pipeline, "sample_batch", lambda *a, **k: pytest.fail("sampled again"))
    assert main(argv) == 0  # no --top-p draws as --top-p 1
    again = capsys.readouterr().out
    assert "decoding" not in again and "reused the 6 samples in" in again


def test_cli_rerun_refusals_name_the_flags_that_differ(tmp_path):
    gpt, vq = checkpoint.save(tmp_path / "gpt", tiny_gpt()), checkpoint.save(tmp_path / "vq", tiny_vq())
    out = tmp_path / "out"
    argv = [str(a) for a in ["sample", "--gpt", gpt, "--tokenizer", vq, "--out", out, "--device", "cpu"]]
    assert main(argv + ["--per-class", "1", "--top-p", "1"]) == 0
    # Grid mode: the count is classes x --per-class, not a --num-samples the user never gave; digests are words.
    assert_cli_refuses(argv + ["--per-class", "2", "--top-p", "0.9", "--seed", "1"], tmp_path, output=out, match=(
        r"sampled differently \(the class labels differ; number of images \(--classes x --per-class\): 3 -> 6; "
        r"--seed: 0 -> 1; --top-p: 1.0 -> 0.9\): use a new --out"))
    # A flag left out reads as off, not as Python's None.
    assert_cli_refuses(argv + ["--per-class", "1", "--top-k", "5"], tmp_path, output=out,
                       match=r"sampled differently \(--top-k: off -> 5\)")


def test_cli_stopped_by_sigterm_announces_the_resume_and_no_decoding_before_a_refusal(tmp_path, monkeypatch, capsys):
    gpt, vq = checkpoint.save(tmp_path / "gpt", tiny_gpt()), checkpoint.save(tmp_path / "vq", tiny_vq())
    argv = [str(a) for a in ["sample", "--gpt", gpt, "--tokenizer", vq, "--out", tmp_path / "out", "--device", "cpu",
                             "--num-samples", "12", "--batch-size", "4"]]
    real = pipeline.sample_batch

    def sigterm_once_a_batch_is_kept(*args, **kwargs):  # as a job scheduler stops a job
        if list((tmp_path / "out/samples.npz.parts").glob("0*.npz")):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "sample_batch", sigterm_once_a_batch_is_kept)
    assert main(argv + ["--cfg-scale", "1"]) == 143
    assert "stopped by SIGTERM: the 1 finished batch is kept in" in capsys.readouterr().err
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was only the command's
    assert main(argv + ["--cfg-scale", "2"]) != 0
    refused = capsys.readouterr()
    assert "--cfg-scale: 1.0 -> 2.0" in refused.err and "decoding" not in refused.out
    assert main(argv + ["--cfg-scale", "1"]) == 0
    resumed = capsys.readouterr().out
    assert "decoding 2x2 tokens in 4 forward passes" in resumed
    assert "resuming: 1 of 3 batches were finished by an earlier run" in resumed and "wrote 12 samples" in resumed


def test_a_full_disk_is_a_one_line_error_and_the_finished_batches_resume(tmp_path, monkeypatch, capsys):
    import errno

    gpt, vq = checkpoint.save(tmp_path / "gpt", tiny_gpt()), checkpoint.save(tmp_path / "vq", tiny_vq())
    argv = [str(a) for a in ["sample", "--gpt", gpt, "--tokenizer", vq, "--out", tmp_path / "out", "--device", "cpu",
                             "--num-samples", "8", "--batch-size", "4", "--cfg-scale", "1.5"]]
    real = pipeline._save_part

    def disk_full_after_one_batch(path, **arrays):
        if list(path.parent.glob("0*.npz")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, **arrays)

    monkeypatch.setattr(pipeline, "_save_part", disk_full_after_one_batch)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("mirai sample: error: No space left on device while writing ") and "000001.npz" in err
    monkeypatch.undo()
    assert main(argv) == 0
    assert "resuming: 1 of 2 batches were finished by an earlier run" in capsys.readouterr().out


def test_ctrl_c_after_the_samples_are_complete_says_they_are(tmp_path, monkeypatch, capsys):
    from mirai.sampling import grid

    gpt, vq = checkpoint.save(tmp_path / "gpt", tiny_gpt()), checkpoint.save(tmp_path / "vq", tiny_vq())
    argv = [str(a) for a in ["sample", "--gpt", gpt, "--tokenizer", vq, "--out", tmp_path / "out", "--device", "cpu",
                             "--num-samples", "4", "--cfg-scale", "1.5"]]
    def ctrl_c(*args, **kwargs):  # while the grid of finished samples is drawn
        raise KeyboardInterrupt

    monkeypatch.setattr(grid, "write_sample_grid", ctrl_c)
    assert main(argv) == 130
    assert "the samples are complete in" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(argv) == 0 and "reused the 4 samples" in capsys.readouterr().out


@pytest.mark.parametrize("replacement", ["other labels", "other tokens", "fewer samples", "not an npz"])
def test_a_finished_set_replaced_after_sampling_is_refused_not_reused(tmp_path, monkeypatch, replacement):
    """The record beside samples.npz describes what was sampled; a file copied or written over it since (another
    set, a reference batch) is not reused as if it were that set."""
    import numpy as np

    from mirai.errors import DataError

    gpt, vq = tiny_gpt(), tiny_vq()
    out = sample_to_npz(gpt, vq, LABELS, tmp_path / "s.npz", **BASE)
    with np.load(out) as data:
        arrays = {key: data[key] for key in data.files}
    if replacement == "other labels":
        arrays["labels"] = np.roll(arrays["labels"], 1)
    elif replacement == "other tokens":  # another set of the same size (balanced labels depend on the size only)
        arrays["tokens"] = (arrays["tokens"] + 1) % 16
    elif replacement == "fewer samples":
        arrays = {key: value[:5] for key, value in arrays.items()}
    if replacement == "not an npz":
        out.write_bytes(b"notes")
    else:
        np.savez(out, **arrays)
    monkeypatch.setattr(pipeline, "sample_batch", lambda *a, **k: pytest.fail("sampled again"))
    match = "cannot be read" if replacement == "not an npz" else "samples that are not the ones its record .* lists.*replaced"
    with pytest.raises(DataError, match=match + ".*delete"):
        sample_to_npz(gpt, vq, LABELS, out, **BASE)
