"""The convergence bench's report from stored scores: t-SNE maps redrawn when a run joins, scores kept when
run folders are gone (records merged from another machine), ``--report`` for chosen variants only, and floors
that an older version wrote recomputed."""

from __future__ import annotations

import json
import shutil

import yaml
from bench_helpers import TrainingCounter, bench_dict

from mirai.bench import run as bench_run
from mirai.bench.config import BenchConfig, plan_runs
from mirai.bench.run import report_stored, run_convergence
from mirai.cli.main import main
from mirai.config import from_dict, load_config


def test_report_redraws_tsne_maps_that_lack_a_run(bench_stores, tmp_path):
    """A report of fewer variants draws their maps only; a later report, with another run on disk, redraws them."""
    out = tmp_path / "bench"
    bench = from_dict(BenchConfig, bench_dict(bench_stores, out, steps=2, eval_at=[]))
    run_convergence(bench, ["baseline"])
    report_stored(bench, ["baseline"])
    assert list(json.loads((out / "tsne_maps.json").read_text())["maps"]) == ["baseline"]
    run_convergence(bench)
    assert list(json.loads((out / "tsne_maps.json").read_text())["maps"]) == ["baseline", "mirai_i"]


def test_report_keeps_the_scores_of_runs_whose_folders_are_gone(bench_stores, tmp_path, monkeypatch, capsys):
    """Records merged from another machine (no run folder here) still fill the table and the FID figure;
    curves and t-SNE maps are drawn from the runs on disk, and the command names the runs left out."""
    out = tmp_path / "bench"
    bench = from_dict(BenchConfig, bench_dict(bench_stores, out, steps=2, eval_at=[]))
    run_convergence(bench)
    baseline_dir = next(run.run_dir for run in plan_runs(bench) if run.variant == "baseline")
    for name in ("results.md", "tsne_maps.png", "tsne_maps.json", "curves.png"):
        (out / name).unlink()
    shutil.rmtree(baseline_dir)
    trained = TrainingCounter(bench_run.train)
    monkeypatch.setattr(bench_run, "train", trained)
    capsys.readouterr()
    run_convergence(bench)
    assert trained.calls == []  # scored records mean done: nothing retrained
    assert "| baseline@2 |" in (out / "results.md").read_text()
    assert list(json.loads((out / "tsne_maps.json").read_text())["maps"]) == ["mirai_i"]
    assert (out / "curves.png").is_file()
    assert "1 run folder is gone (baseline seed 0)" in capsys.readouterr().out
    # A curves figure already there is not replaced by one lacking the gone runs.
    (out / "curves.png").write_bytes(b"drawn while every run was on disk")
    run_convergence(bench)
    assert (out / "curves.png").read_bytes() == b"drawn while every run was on disk"


def test_report_only_draws_the_chosen_variants_from_stored_scores(bench_stores, tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(bench_dict(bench_stores, out, steps=2, eval_at=[])))
    assert main(["bench", "convergence", "--config", str(config), "--report"]) != 0
    assert "holds no scores yet (no records in results.json): run the bench before" in capsys.readouterr().err
    # A misspelt name is named before the missing scores, which it would otherwise hide.
    assert main(["bench", "convergence", "--config", str(config), "--report", "--variant", "basline"]) != 0
    assert "variant basline is not in the bench config" in capsys.readouterr().err
    run_convergence(load_config(BenchConfig, config))
    (out / "results.md").unlink()
    # The report's header states the scoring settings: other ones than the scores' are refused, not printed.
    for override, shown in [("num_samples=60", "num_samples: 12 there, 60 now"),
                            ("sampling.cfg_scale=3.0", "sampling.cfg_scale: 1.5 there, 3.0 now")]:
        assert main(["bench", "convergence", "--config", str(config), "--report", override]) != 0
        assert f"scored with other {override.split('=')[0].split('.')[0]} ({shown})" in capsys.readouterr().err
    assert not (out / "results.md").exists()
    # A variant added to the config later, never run: the report of the others needs no training.
    grown = bench_dict(bench_stores, out, steps=2, eval_at=[])
    grown["variants"]["mirai_e"] = ["foresight.source=ema", "foresight.warmup=0"]
    config.write_text(yaml.safe_dump(grown))
    trained = TrainingCounter(bench_run.train)
    monkeypatch.setattr(bench_run, "train", trained)
    assert main(["bench", "convergence", "--config", str(config), "--report"]) != 0
    assert "no scores for mirai_e seed 0: run the bench for them first" in capsys.readouterr().err
    assert main(["bench", "convergence", "--config", str(config), "--report", "--variant", "baseline",
                 "--variant", "mirai_i"]) == 0
    table = (out / "results.md").read_text()
    assert "| baseline@2 |" in table and "| mirai_i@2 |" in table and "mirai_e" not in table
    assert trained.calls == []
    assert "the t-SNE maps and curves of the 2 run(s) on disk" in capsys.readouterr().out
    # Scores merged from elsewhere, no run folder here: the report says it drew no maps or curves.
    shutil.rmtree(out / "runs")
    assert main(["bench", "convergence", "--config", str(config), "--report", "--variant", "baseline"]) == 0
    assert "no t-SNE maps or curves (no run folder on disk" in capsys.readouterr().out
    # Floors an older version wrote (no sample counts, which the header states) are recomputed, not a KeyError.
    floors = json.loads((out / "reference.json").read_text())
    count = floors["noise_floor"].pop("num_images")
    (out / "reference.json").write_text(json.dumps(floors))
    assert main(["bench", "convergence", "--config", str(config), "--report", "--variant", "baseline"]) == 0
    assert json.loads((out / "reference.json").read_text())["noise_floor"]["num_images"] == count


def test_a_report_names_runs_scored_at_only_some_of_its_steps(bench_stores, tmp_path, capsys):
    """A run that never saved a step (trained with another eval_at) or a share stopped while scoring leaves a run
    with fewer scored steps than the schedule: the report is written, says so, and names it in the steps table."""
    out = tmp_path / "bench"
    out.mkdir()
    record = {"fid": 100.0, "fid_recon": 50.0, "inception_score": 2.0, "precision": 0.5, "recall": 0.5,
              "class_accuracy": 0.5, "val_nll": None}
    results = {"baseline": [{"seed": 0, "step": 2, **record}, {"seed": 0, "step": 4, **record}],
               "mirai_i": [{"seed": 0, "step": 4, **record}]}
    (out / "results.json").write_text(json.dumps(results))
    floor = {"fid": 1.0, "inception_score": 3.0, "precision": 0.9, "recall": 0.9, "class_accuracy": 0.9,
             "num_images": 12}
    (out / "reference.json").write_text(json.dumps({"num_images": 12, "reference_codes": "x", "tokenizer_floor": floor,
                                                    "noise_floor": {**floor, "num_reference": 6}}))
    report_stored(from_dict(BenchConfig, bench_dict(bench_stores, out, steps=4, eval_at=[2])))
    assert "note: no scores for mirai_i seed 0 at step 2: those rows average fewer seeds" in capsys.readouterr().out
    assert "| mirai_i | 100 | seed 0: not scored at step 2 | – | 0/0 |" in (out / "results.md").read_text()
