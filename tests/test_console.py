"""The training console (issue 17, item 5): banner, config warnings, log lines with validation
NLL, RUN_DIR/log.txt, the closing summary, and progress bars only on a terminal. CPU, offline."""

from __future__ import annotations

import re

import pytest

from mirai.cli.main import main
from mirai.training.console import config_warnings
from mirai.training.trainer import train

from helpers import make_cfg


def warnings_for(stores, tmp_path, total=12, steps_per_epoch=3, images=24, has_val=True, has_tokenizer=True,
                 **overrides) -> list[str]:
    cfg = make_cfg(stores, tmp_path / "run", steps=total, **overrides)
    return config_warnings(cfg, total, steps_per_epoch, images, has_val, has_tokenizer)


@pytest.mark.parametrize("overrides, kwargs, expected", [
    ({"optim.warmup_steps": 12}, {}, r"optim.warmup_steps=12 >= the run's 12 steps"),
    ({"eval_every": 50}, {}, r"eval_every=50 is longer than the run \(12 steps\)"),
    ({"sample_every": 13}, {}, r"sample_every=13 is longer"),
    ({"save_every": 100}, {}, r"save_every=100 is longer"),
    ({"eval_every": 5}, {"has_val": False}, r"data.val_codes is not set.*or eval_every=0"),
    ({"eval_every": 500}, {"has_val": False}, r"eval_every=500 but data.val_codes is not set"),  # once, not twice
    ({"optim.batch_size": 9}, {"steps_per_epoch": 2}, r"leaves 6 of the 24 training images out"),
    ({"ema.warmup": False, "ema.decay": 0.99}, {}, r"ema.decay=0.99 averages over ~100 steps"),
    ({}, {"has_tokenizer": False}, r"no sample grids"),
    ({"dropout": False}, {}, r"no classifier-free guidance"),
    ({"foresight.source": "ema", "foresight.encoder": "fashion8_ssl"}, {},
     r"foresight.encoder is set but read only by Mirai-I .*this run's source is 'ema'.*set foresight.source=encoder"),
    ({"foresight.offsets": [[1, 0]]}, {},  # any foresight setting on a run without foresight
     r"foresight.offsets is set but this run trains without foresight \(foresight.source=none\).*or ema"),
    ({"foresight.warmup": 0}, {}, r"foresight.warmup is set but this run trains without foresight"),
    ({"foresight.source": "ema", "foresight.layout": "reference", "foresight.k": 18}, {},
     r"layout=reference with k=18: .*head 16 repeats head 2's shift 16, head 17 repeats head 3's shift 17: .*k<=16"),
    ({"foresight.source": "encoder", "foresight.teacher_decay": 0.9}, {},  # and the other way round
     r"foresight.teacher_decay is set but read only by Mirai-E .*source is 'encoder'.*set foresight.source=ema"),
    ({"foresight.cache_features": True}, {},  # without foresight, the fix names the one source that reads it
     r"foresight.cache_features is set but this run trains without .*source=encoder \(Mirai-I\)$"),
])
def test_each_config_smell_is_named_with_its_fix(stores, tmp_path, overrides, kwargs, expected):
    found = warnings_for(stores, tmp_path, **kwargs, **overrides)
    assert len(found) == 1 and re.search(expected, found[0]), found  # one smell, one warning naming it


def test_validating_on_the_training_codes_is_named(stores, tmp_path):
    codes = make_cfg(stores, tmp_path / "run").data.codes
    found = warnings_for(stores, tmp_path, eval_every=6, save_every=6, **{"data.val_codes": codes})
    assert len(found) == 1 and "data.val_codes is data.codes" in found[0] and "measured on training" in found[0]


def test_a_sound_config_gets_no_warning(stores, tmp_path):
    assert warnings_for(stores, tmp_path, eval_every=6, save_every=6) == []


def test_a_run_prints_and_logs_what_it_does_and_where_it_wrote(stores, tmp_path, capsys):
    run = tmp_path / "run"
    result = train(make_cfg(stores, run, steps=6, log_every=2, eval_every=3, **{"optim.warmup_steps": 10}))
    out, err = capsys.readouterr()
    log = (run / "log.txt").read_text()
    assert "\r" not in out + err and "train run" not in err  # not a terminal: no bar frames
    for text in (out, log):
        assert "GPT-Nano, 139.8k parameters" in text and "precision fp32" in text
        assert "schedule   6 steps = 2.00 epochs of 3 steps" in text
        assert "warning: optim.warmup_steps=10 >= the run's 6 steps" in text
        assert [line.split(" | ")[0] for line in text.splitlines() if " | lr " in line] == [
            "step 2/6", "step 4/6", "step 6/6"]
        assert "step 3 | validation NLL" in text and "step 6 | validation NLL" in text
        assert "final validation" in text and "drawing the final sample grid" in text
        summary = text[text.index("done: step 6"):]
        for path in (result.checkpoint, run / "checkpoints" / "best", result.samples, run / "metrics.jsonl",
                     run / "log.txt"):
            assert str(path) in summary
    assert result.samples == run / "samples" / "final.png" and result.samples.is_file()
    # A resumed run appends to the same log.
    train(make_cfg(stores, run, steps=8, log_every=2, eval_every=3, **{"optim.warmup_steps": 10}), resume=True)
    log = (run / "log.txt").read_text()
    assert log.count("done: step") == 2 and "resuming at step 6" in log and "step 8/8" in log


def test_the_banner_names_the_foresight_heads_block_lambda_and_warmup(stores, tmp_path, capsys):
    overrides = {"foresight.source": "ema", "foresight.offsets": [[1, 0], [1, 1]], "foresight.warmup": 1,
                 "foresight.warmup_unit": "step", "foresight.lambdas": [{"kind": "step", "values": [1, 0.5], "at": [0.5]}]}
    train(make_cfg(stores, tmp_path / "run", steps=2, log_every=1, **overrides))
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("  foresight  "))
    assert line == "  foresight  ema, 2 heads (1,0) (1,1) at block 1, lambda step 1->0.5 at 0.5 (fraction), warm-up 1 step"
    assert "; foresight alignment (Mirai-E)" in out


def test_overrides_may_follow_an_option(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data: {codes: somewhere}\n")
    assert main(["train", "--config", str(config), "steps=5", "--print-config", "seed=3"]) == 0
    printed = capsys.readouterr().out
    assert "steps: 5" in printed and "seed: 3" in printed  # both sides of the option are read
    assert main(["train", "--config", str(config), "steps=5", "--print-config", "steps=7"]) == 1
    assert "steps is set twice ('steps=5' and 'steps=7')" in capsys.readouterr().err  # not a silent last-one-wins
    assert main(["train", "--config", str(config), "--print-config", "--", "steps=9"]) == 0
    assert "steps: 9" in capsys.readouterr().out  # "--" ends the options; what follows are overrides
    # A setting the source never reads is named on stderr; the printed YAML stays a valid config.
    assert main(["train", "--config", str(config), "--print-config", "steps=5", "foresight.teacher_decay=0.9"]) == 0
    out, err = capsys.readouterr()
    assert "teacher_decay: 0.9" in out and "warning" not in out
    assert err.startswith("warning: foresight.teacher_decay is set but this run trains without foresight")
    # Only the words at fault are named, with the command's own help.
    for words, bad in ((["foo", "steps=7"], "foo"), (["--bogus", "steps=7"], "--bogus")):
        with pytest.raises(SystemExit):
            main(["train", "--config", str(config), "steps=5", "--print-config", *words])
        assert (f"mirai train: error: unrecognized arguments: {bad}; config overrides are key=value words "
                "(see mirai train --help)") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["flops", "--bogus"])  # a command without overrides
    assert "mirai flops: error: unrecognized arguments: --bogus (see mirai flops --help)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, prefix", [
    (["convert", "llamagen", "{tmp}/missing.pt", "{tmp}/out"], "mirai convert llamagen: error: input"),
    (["encoder", "train-fashion", "--out", "{tmp}/enc", "--epochs", "-1"], "mirai encoder train-fashion: error: epochs"),
    (["train", "--config", "{tmp}/missing.yaml"], "mirai train: error: config file"),
])
def test_an_error_names_the_subcommand_as_typed(argv, prefix, tmp_path, capsys):
    """The prefix argparse gives its own errors (``mirai convert llamagen: error:``), for the command's too."""
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 1
    assert capsys.readouterr().err.startswith(prefix)
