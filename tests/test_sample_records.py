"""Sample records compare by what the settings draw: settings spelt another way that draw the same tokens
(top-p 1 is no nucleus filtering; a guidance interval spanning every pass, or any interval without
guidance, is no interval) reuse a finished set; settings that draw otherwise are still refused."""

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


def test_cli_announces_a_resume_and_says_nothing_of_decoding_before_a_refusal(tmp_path, monkeypatch, capsys):
    gpt, vq = checkpoint.save(tmp_path / "gpt", tiny_gpt()), checkpoint.save(tmp_path / "vq", tiny_vq())
    argv = [str(a) for a in ["sample", "--gpt", gpt, "--tokenizer", vq, "--out", tmp_path / "out", "--device", "cpu",
                             "--num-samples", "12", "--batch-size", "4"]]
    real = pipeline.sample_batch

    def ctrl_c_once_a_batch_is_kept(*args, **kwargs):
        if list((tmp_path / "out/samples.npz.parts").glob("0*.npz")):
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "sample_batch", ctrl_c_once_a_batch_is_kept)
    assert main(argv + ["--cfg-scale", "1"]) == 130  # Ctrl-C once the first of 3 batches is kept
    monkeypatch.undo()
    capsys.readouterr()
    assert main(argv + ["--cfg-scale", "2"]) != 0
    refused = capsys.readouterr()
    assert "--cfg-scale: 1.0 -> 2.0" in refused.err and "decoding" not in refused.out
    assert main(argv + ["--cfg-scale", "1"]) == 0
    resumed = capsys.readouterr().out
    assert "decoding 2x2 tokens in 4 forward passes" in resumed
    assert "resuming: 1 of 3 batches were finished by an earlier run" in resumed and "wrote 12 samples" in resumed
