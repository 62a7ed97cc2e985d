"""The convergence benchmark on tiny models and stores: outputs and their schema, resumability
(no work on a rerun, exact continuation of an interrupted run), and clear config errors."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import yaml
from bench_helpers import Counter, TrainingCounter, bench_dict
from PIL import Image

from mirai import checkpoint
from mirai.bench import run as bench_run
from mirai.bench import scorer as bench_scorer
from mirai.bench.config import BenchConfig, plan_runs, select_share
from mirai.bench.run import run_convergence
from mirai.bench.store import check_same_scoring, save_bench_config
from mirai.cli.main import main
from mirai.config import from_dict, load_config
from mirai.errors import ConfigError, Interrupted
from mirai.evaluation.fashion_classifier import default_evaluator_path
from mirai.models import GPT

RECORD_KEYS = {"seed", "step", "fid", "precision", "recall", "inception_score", "class_accuracy", "val_nll",
               "fid_recon", "precision_recon", "recall_recon", "num_samples"}


def test_bench_writes_results_and_resumes_without_redoing_work(bench_stores, tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(bench_dict(bench_stores, out)))
    trained = TrainingCounter(bench_run.train)
    sampled = Counter(bench_scorer.sample_to_npz)
    monkeypatch.setattr(bench_run, "train", trained)
    monkeypatch.setattr(bench_scorer, "sample_to_npz", sampled)

    assert main(["bench", "convergence", "--config", str(config)]) == 0
    assert len(trained.calls) == 2 and len(sampled.calls) == 4  # 2 runs x checkpoints at steps 2 and 4
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"baseline", "mirai_i"}
    for records in results.values():
        assert [(r["seed"], r["step"]) for r in records] == [(0, 2), (0, 4)]
        for r in records:
            assert set(r) == RECORD_KEYS
            assert r["fid"] > 0 and r["fid_recon"] > 0 and r["inception_score"] >= 1
            assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and 0 <= r["class_accuracy"] <= 1
            assert r["val_nll"] is not None and 0 < r["val_nll"] < np.log(512) + 0.5
    # Both runs trained from the same seed: same first batch, so the same first NTP loss.
    first = [json.loads((out / "runs" / v / "seed_0" / "metrics.jsonl").read_text().splitlines()[0])["loss/ntp"]
             for v in ("baseline", "mirai_i")]
    assert first[0] == pytest.approx(first[1])
    floors = json.loads((out / "reference.json").read_text())
    assert floors["tokenizer_floor"]["fid"] >= 0 and floors["num_images"] == 12
    table = (out / "results.md").read_text()
    for row in ("| baseline@2 |", "| baseline@4 |", "| mirai_i@4 |", "| mirai_i@last2 |"):
        assert row in table
    assert "FID↓" in table and "IS↑" in table and "| tokenizer floor (12 recon) |" in table
    # The noise floor is taken at the sample count (12 test images: capped at half of them, 6 vs 6).
    assert floors["noise_floor"]["num_images"] == 6 and floors["noise_floor"]["capped"] is True
    assert "| noise floor (6 real) |" in table
    for name in ("fid_vs_steps", "grid_baseline", "grid_mirai_i", "tsne_maps", "curves"):
        assert Image.open(out / f"{name}.png").size[0] > 50
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    maps = json.loads((out / "tsne_maps.json").read_text())
    assert maps["images"] == [0] and list(maps["maps"]) == ["baseline", "mirai_i"]
    assert {m["layer"] for m in maps["maps"].values()} == {1}  # foresight default: 2/3 of GPT-Nano's 2 blocks
    assert maps["maps"]["mirai_i"]["checkpoint"].endswith("mirai_i/seed_0/checkpoints/step_0000004")
    assert not list((out / "samples").rglob("*.npz"))  # keep_samples: false

    # A rerun does nothing new: no training, no sampling, the same records.
    stamps = {name: (out / name).stat().st_mtime_ns for name in ("results.json", "tsne_maps.png", "tsne_maps.json")}
    assert main(["bench", "convergence", "--config", str(config)]) == 0
    assert len(trained.calls) == 2 and len(sampled.calls) == 4
    assert json.loads((out / "results.json").read_text()) == results
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
    # Compiled decoding draws the same tokens as eager (tests/test_compile.py), so switching it on is not a
    # change of scoring: accepted, and nothing is sampled again.
    run_convergence(from_dict(BenchConfig, bench_dict(bench_stores, out, compile_sampling=True)))
    assert len(sampled.calls) == 4 and {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps

    # Interrupted after step 2: the run resumes from its checkpoint and reproduces step 4 exactly.
    run_dir = out / "runs" / "baseline" / "seed_0"
    for name in ("step_0000004", "best"):
        shutil.rmtree(run_dir / "checkpoints" / name)
    partial = dict(results, baseline=results["baseline"][:1])
    (out / "results.json").write_text(json.dumps(partial))
    bench = load_config(BenchConfig, config)
    again = run_convergence(bench)
    assert trained.calls[-1] == {"resume": True} and len(trained.calls) == 3 and len(sampled.calls) == 5
    assert sampled.calls[-1]["compile"] is bench.compile_sampling is False  # the bench's setting reaches the sampler
    for key in ("fid", "fid_recon", "val_nll", "precision", "recall", "class_accuracy"):
        assert again["baseline"][1][key] == pytest.approx(results["baseline"][1][key], rel=1e-5, abs=1e-7), key

    # Records scored one way are never mixed with records scored another way.
    with pytest.raises(ConfigError, match="num_samples"):
        run_convergence(from_dict(BenchConfig, bench_dict(bench_stores, out, num_samples=20)))
    # A changed training config is caught before the old run is mistaken for it.
    changed = bench_dict(bench_stores, out, train_overrides=["optim.lr=1e-3"])
    with pytest.raises(ConfigError, match="optim.lr"):
        run_convergence(from_dict(BenchConfig, changed))
    # A new eval_at that asks for checkpoints the runs never saved is refused, naming an eval_at they did save,
    # by the run, by --dry-run and by --report (which would otherwise draw empty rows over the report).
    never_saved = r"saves a checkpoint every 2 steps .*so steps 1, 3 of this eval_at were never saved; .*'eval_at=\[2\]'"
    with pytest.raises(ConfigError, match=never_saved):
        run_convergence(from_dict(BenchConfig, bench_dict(bench_stores, out, eval_at=[1, 2, 3])))
    assert main(["bench", "convergence", "--config", str(config), "--dry-run", "eval_at=[1,2,3]"]) == 1
    assert re.search(never_saved, capsys.readouterr().err)
    assert main(["bench", "convergence", "--config", str(config), "--report", "eval_at=[3]"]) == 1
    assert "no chosen run was scored at step 3; the stored scores are at steps [2, 4]" in capsys.readouterr().err
    # Runs not yet scored at their last step: no eval_at helps, so the fix named is to score them.
    assert main(["bench", "convergence", "--config", str(config), "--report", "steps=6", "eval_at=[2]"]) == 1
    assert "no chosen run was scored at the last step, 6, yet: run the bench for them first" in capsys.readouterr().err
    # One whose steps the runs did save (here only the last) is accepted, and nothing is trained or sampled again.
    run_convergence(from_dict(BenchConfig, bench_dict(bench_stores, out, eval_at=[])))
    assert len(trained.calls) == 3 and len(sampled.calls) == 5

    # Another bench rescores the same runs with more samples, without training them again.
    rescored = run_convergence(from_dict(BenchConfig, bench_dict(
        bench_stores, tmp_path / "rescored", num_samples=20, runs_dir=str(out / "runs"))))
    assert len(trained.calls) == 3 and len(sampled.calls) == 9
    assert {r["num_samples"] for records in rescored.values() for r in records} == {20}
    assert not (tmp_path / "rescored" / "runs").exists()


def test_compiled_sampling_is_kept_apart_where_it_changes_the_draws(bench_stores, tmp_path):
    # fp32: compiled decoding draws eager's tokens, so scores with and without it may share an out_dir;
    # bf16: it rounds differently and draws other samples, so it is a scoring setting like num_samples.
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    for precision in ("fp32", "bf16"):
        settings = {"cfg_scale": 1.5, "precision": precision}
        save_bench_config(from_dict(BenchConfig, bench_dict(bench_stores, out, sampling=settings)), out)
        compiled = from_dict(BenchConfig, bench_dict(bench_stores, out, sampling=settings, compile_sampling=True))
        if precision == "fp32":
            check_same_scoring(compiled, out)
        else:
            with pytest.raises(ConfigError, match=r"scored with other compile_sampling \(compile_sampling: False there, True now\)"):
                check_same_scoring(compiled, out)


def test_a_run_stopped_by_a_signal_says_how_a_bench_continues(bench_stores, tmp_path, monkeypatch):
    def stopped(cfg, **kwargs):
        raise Interrupted(15, "saved CKPT at step 3", hint="continue with --resume")

    monkeypatch.setattr(bench_run, "train", stopped)
    run = plan_runs(from_dict(BenchConfig, bench_dict(bench_stores, tmp_path / "b")))[0]
    with pytest.raises(Interrupted) as info:
        bench_run.ensure_trained(run)
    assert info.value.signum == 15
    assert str(info.value) == ("variant 'baseline', seed 0: saved CKPT at step 3; "
                               "run the same bench command again to continue")


def test_bad_variants_fail_before_any_training(bench_stores, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_run, "train", lambda *a, **k: pytest.fail("trained despite a bad config"))
    out = tmp_path / "bench"
    bad_key = bench_dict(bench_stores, out, variants={"baseline": [], "broken": ["foresight.nope=1"]})
    with pytest.raises(ConfigError, match=r"variant 'broken'.*nope.*valid keys"):
        run_convergence(from_dict(BenchConfig, bad_key))
    bad_value = bench_dict(bench_stores, out, variants={"broken": ["foresight.source=dino"]})
    with pytest.raises(ConfigError, match=r"variant 'broken'.*'dino' is not one of"):
        run_convergence(from_dict(BenchConfig, bad_value))
    budget = bench_dict(bench_stores, out, variants={"longer": ["steps=8"]})
    with pytest.raises(ConfigError, match=r"variant 'longer'.*'steps', which the bench controls"):
        run_convergence(from_dict(BenchConfig, budget))
    with pytest.raises(ConfigError, match=r"eval_at \[9\] lies outside 1..steps=4: score checkpoints within the run, or raise steps"):
        from_dict(BenchConfig, bench_dict(bench_stores, out, eval_at=[9]))
    with pytest.raises(ConfigError, match="out_dir /proc/mirai_out: cannot create anything in /proc"):
        from_dict(BenchConfig, bench_dict(bench_stores, "/proc/mirai_out"))
    from_dict(BenchConfig, bench_dict(bench_stores, out, runs_dir="/proc/mirai_runs"))  # runs_dir may be read-only
    with pytest.raises(ConfigError, match="sample_seed must be an integer between 0 and 4294967295"):
        from_dict(BenchConfig, bench_dict(bench_stores, out, sample_seed=2**32))
    with pytest.raises(ConfigError, match="variants.x: unknown key"):
        from_dict(BenchConfig, bench_dict(bench_stores, out, variants={"x": {"cfg": "a.yaml"}}))
    top_k = bench_dict(bench_stores, out, sampling={"top_k": 999})  # scoring samples with it: refused before training
    with pytest.raises(ConfigError, match=r"bench's sampling \(sampling\.\* of the bench config\), for variant '\w+' .* \d+ codes.*: top_k .* between 1 and \d+, got 999"):
        run_convergence(from_dict(BenchConfig, top_k))
    # Guidance the runs cannot give: an interval between two decoding passes, or a model without class dropout.
    interval = bench_dict(bench_stores, out, sampling={"guidance_interval": [0.51, 0.511]})
    with pytest.raises(ConfigError, match=r"bench's sampling \(sampling\.\* of the bench config\), for variant .*guidance_interval \(0.51, 0.511\) holds none"):
        run_convergence(from_dict(BenchConfig, interval))
    own = bench_dict(bench_stores, out, variants={"baseline": [], "own": ["sampling.guidance_interval=[0.51,0.511]"]})
    with pytest.raises(ConfigError, match=r"the run's own sampling \(its sample grids\), for variant 'own'.*holds none"):
        run_convergence(from_dict(BenchConfig, own))
    no_null = bench_dict(bench_stores, out, variants={"baseline": [], "plain": ["dropout=false"]})
    with pytest.raises(ConfigError, match=r"bench's sampling \(sampling\.\* of the bench config\), for variant 'plain'.*without class dropout"):
        run_convergence(from_dict(BenchConfig, no_null))
    assert not out.exists()
    # An out_dir that is another folder (here a code store) is refused, not filled with the bench's files.
    store = bench_stores / "codes_test"
    with pytest.raises(ConfigError, match=r"output folder .*codes_test \(out_dir.*holds what a bench does not write \(codes.npy"):
        run_convergence(from_dict(BenchConfig, bench_dict(bench_stores, store)))
    assert not (store / "results.json").exists() and not (store / "bench.yaml").exists()


def test_an_earlier_benchs_output_folder_is_accepted_with_the_runs_it_kept(bench_stores, tmp_path):
    """Runs kept in OUT itself (as mirai demo keeps them) may belong to a variant this bench no longer has."""
    from mirai.bench.store import check_out_dir

    out = tmp_path / "demo"
    (out / "mirai_e" / "seed_0").mkdir(parents=True)  # an earlier run of a variant dropped since
    (out / "old" / "checkpoints").mkdir(parents=True)  # one in mirai demo's layout (OUT/VARIANT is the run)
    for name in ("results.json", "results.md", "bench.yaml", "grid_mirai_e.png", ".results.json.7.tmp"):
        (out / name).write_text("")
    bench = from_dict(BenchConfig, bench_dict(bench_stores, out, runs_dir=str(out)))
    check_out_dir(bench)
    (out / "notes").mkdir()
    with pytest.raises(ConfigError, match=r"holds what a bench does not write \(notes\)"):
        check_out_dir(bench)


def test_a_run_on_disk_is_the_same_run_however_its_paths_are_spelt(bench_stores, tmp_path):
    """A moved bench (its runs' recorded run_dir elsewhere), a code store named through a link or a relative
    path, or another log_every is the same run; a setting that changes the weights is refused, with both values."""
    import os
    from dataclasses import replace

    from mirai.bench.store import check_same_training
    from mirai.config import save_yaml

    bench = from_dict(BenchConfig, bench_dict(bench_stores, tmp_path / "b"))
    run = plan_runs(bench)[0]
    run.run_dir.mkdir(parents=True)
    (tmp_path / "link").symlink_to(run.cfg.data.codes)
    data = replace(run.cfg.data, codes=str(tmp_path / "link"), val_codes=os.path.relpath(run.cfg.data.val_codes))
    moved = replace(run.cfg, run_dir=str(tmp_path / "elsewhere" / "seed_0"), log_every=7, data=data)
    save_yaml(moved, run.run_dir / "config.yaml")
    assert check_same_training(run, bench.schedule()) == run
    save_yaml(replace(moved, optim=replace(moved.optim, lr=1e-2)), run.run_dir / "config.yaml")
    with pytest.raises(ConfigError, match=r"trained with another config \(optim.lr: 0.01 there, 0.003 now\); give "):
        check_same_training(run, bench.schedule())


def test_a_trained_run_knows_its_code_stores_by_their_data(bench_stores, tmp_path):
    """A run's checkpoints record its stores' data (store_digest): a copy elsewhere is the same store, and another
    store at the very path it trained on is refused, where comparing paths would accept it."""
    from dataclasses import replace

    from mirai.bench.store import check_same_training
    from mirai.training.trainer import train

    shutil.copytree(bench_stores / "codes_train", tmp_path / "codes")
    bench = from_dict(BenchConfig, bench_dict(bench_stores, tmp_path / "b", steps=2, eval_at=[]))
    run = plan_runs(bench)[0]
    run = replace(run, cfg=replace(run.cfg, data=replace(run.cfg.data, codes=str(tmp_path / "codes"))))
    train(run.cfg)
    shutil.copytree(tmp_path / "codes", tmp_path / "copy")
    moved = replace(run, cfg=replace(run.cfg, data=replace(run.cfg.data, codes=str(tmp_path / "copy"))))
    assert check_same_training(moved, bench.schedule()) == moved
    # A resume (a bench's interrupted run, or one extended) goes on from the copy too: the same data.
    assert train(replace(moved.cfg, steps=3), resume=True).step == 3
    shutil.rmtree(tmp_path / "codes")
    shutil.copytree(bench_stores / "codes_test", tmp_path / "codes")
    with pytest.raises(ConfigError, match=r"data.codes: '.*' there, '.*codes' now \(not the data the run trained on: "
                                          r"name that store, or extract it again as it was\)"):
        check_same_training(replace(run, cfg=replace(run.cfg, steps=3)), bench.schedule())


def test_plan_shares_budget_and_checkpoint_schedule(bench_stores, tmp_path, capsys):
    bench = from_dict(BenchConfig, bench_dict(bench_stores, tmp_path / "b", seeds=[1, 2], steps=12, eval_at=[4, 8]))
    runs = plan_runs(bench)
    # Seed-major: a bench stopped early has compared every variant on the seeds it finished.
    assert [(r.variant, r.seed) for r in runs] == [("baseline", 1), ("mirai_i", 1), ("baseline", 2), ("mirai_i", 2)]
    for r in runs:
        assert (r.cfg.steps, r.cfg.seed, r.cfg.save_every, r.cfg.eval_every, r.cfg.keep_last) == (12, r.seed, 4, 4, 3)
        assert r.run_dir == tmp_path / "b" / "runs" / r.variant / f"seed_{r.seed}"
    assert runs[1].cfg.foresight.source == "encoder" and runs[0].cfg.foresight.source == "none"
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(bench_dict(bench_stores, tmp_path / "b")))
    assert main(["bench", "convergence", "--config", str(config), "--dry-run", "seeds=[3]"]) == 0
    assert "2 runs x 2 checkpoints [2, 4] -> " in (plan := capsys.readouterr().out)
    assert "each run saves and validates every 2 steps" in plan and "warning" not in plan
    # A t-SNE block the models lack is refused in the plan, not when the report is drawn after all the work.
    assert main(["bench", "convergence", "--config", str(config), "--dry-run", "tsne_layer=99"]) != 0
    assert "tsne_layer=99 is outside the blocks 1..2 of the model for variant 'baseline'" in capsys.readouterr().err
    # Missing code stores are named in the plan (the real run stops on them only after loading the evaluator).
    missing = tmp_path / "no_codes"
    assert main(["bench", "convergence", "--config", str(config), "--dry-run", f"reference_codes={missing}"]) == 0
    assert f"warning: code store {missing} does not exist yet" in capsys.readouterr().out
    assert not (tmp_path / "b").exists()
    # Overrides on both sides of an option all apply; the plan names each variant's heads and lambda.
    assert main(["bench", "convergence", "--config", str(config), "seeds=[3]", "--variant", "mirai_i", "--dry-run",
                 "steps=20", "eval_at=[5]"]) == 0
    plan = capsys.readouterr().out
    assert "1 run x 2 checkpoints [5, 20]" in plan and "seed 3" in plan
    assert "foresight encoder" in plan and "1 head (0,0) at block" in plan and "lambda const" in plan
    assert "warning" not in plan
    # A setting a variant's source never reads is named in the plan, before any run starts.
    assert main(["bench", "convergence", "--config", str(config), "--dry-run",
                 "train_overrides=[foresight.teacher_decay=0.9]"]) == 0
    plan = capsys.readouterr().out
    assert plan.count("warning: foresight.teacher_decay is set but") == 2  # baseline (none) and Mirai-I


def test_parallel_shares_merge_their_records_and_a_plain_run_writes_the_report(bench_stores, tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(bench_dict(bench_stores, out, steps=2, eval_at=[])))
    trained = TrainingCounter(bench_run.train)
    sampled = Counter(bench_scorer.sample_to_npz)
    monkeypatch.setattr(bench_run, "train", trained)
    monkeypatch.setattr(bench_scorer, "sample_to_npz", sampled)

    # The baseline's share finishes while the Mirai-I share is training: its record must survive
    # the Mirai-I share's write, although that process read results.json before it existed.
    real_ensure_trained = bench_run.ensure_trained

    def other_share_finishes_meanwhile(run):
        if run.variant == "mirai_i":
            assert main(["bench", "convergence", "--config", str(config), "--variant", "baseline"]) == 0
        return real_ensure_trained(run)

    monkeypatch.setattr(bench_run, "ensure_trained", other_share_finishes_meanwhile)
    assert main(["bench", "convergence", "--config", str(config), "--variant", "mirai_i", "--seed", "0"]) == 0
    assert "run the command once more without --variant/--seed" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert {v: [(r["seed"], r["step"]) for r in records] for v, records in results.items()} == {
        "baseline": [(0, 2)], "mirai_i": [(0, 2)]}
    assert len(trained.calls) == 2 and len(sampled.calls) == 2
    assert (out / "grid_baseline.png").is_file() and (out / "grid_mirai_i.png").is_file()
    assert not any((out / name).exists() for name in ("results.md", "tsne_maps.png", "fid_vs_steps.png"))

    # The plain run trains and samples nothing more; it writes the report over both shares.
    monkeypatch.setattr(bench_run, "ensure_trained", real_ensure_trained)
    assert main(["bench", "convergence", "--config", str(config)]) == 0
    assert len(trained.calls) == 2 and len(sampled.calls) == 2
    assert "| baseline@2 |" in (out / "results.md").read_text() and "| mirai_i@2 |" in (out / "results.md").read_text()
    assert list(json.loads((out / "tsne_maps.json").read_text())["maps"]) == ["baseline", "mirai_i"]

    with pytest.raises(ConfigError, match=r"variant mirai_e is not in the bench config \(it has baseline, mirai_i\)"):
        select_share(plan_runs(load_config(BenchConfig, config)), ["mirai_e"], None)
    with pytest.raises(ConfigError, match=r"seed 5 is not in the bench config \(it has 0\); to add a seed, "
                                          r"extend the list too: 'seeds=\[0, 5\]'"):
        select_share(plan_runs(load_config(BenchConfig, config)), None, [5])
    with pytest.raises(ConfigError, match=r"seed -1 is not in the bench config \(it has 0\); seeds are integers from 0$"):
        select_share(plan_runs(load_config(BenchConfig, config)), None, [-1])


@pytest.mark.parametrize("seeds, fault", [([], "is empty"), ([0, 1, 0], "repeats a seed"),
                                          ([0, -1], "has a negative seed")])
def test_a_bad_seed_list_names_its_fault(bench_stores, tmp_path, seeds, fault):
    with pytest.raises(ConfigError, match=rf"seeds {fault} \(.*\): give a non-empty list of non-negative seeds"):
        from_dict(BenchConfig, bench_dict(bench_stores, tmp_path / "b", seeds=seeds))


def test_the_same_reference_store_spelt_another_way_scores_alike(bench_stores, tmp_path, monkeypatch):
    # The records' bench.yaml names the store relative to the working directory; a rerun that names it by its
    # absolute path (or through a link) adds to them, and another store is refused naming both values.
    monkeypatch.chdir(bench_stores)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    save_bench_config(from_dict(BenchConfig, bench_dict(bench_stores, out, reference_codes="codes_test")), out)
    check_same_scoring(from_dict(BenchConfig, bench_dict(bench_stores, out, reference_codes=str(bench_stores / "codes_test"))), out)
    (tmp_path / "link").symlink_to(bench_stores / "codes_test")
    check_same_scoring(from_dict(BenchConfig, bench_dict(bench_stores, out, reference_codes=str(tmp_path / "link"))), out)
    other = from_dict(BenchConfig, bench_dict(bench_stores, out, reference_codes=str(tmp_path / "other")))
    with pytest.raises(ConfigError, match=r"scored with other reference_codes \(reference_codes: 'codes_test' "
                                          r"there, '.*other' now\); give the values it was scored with"):
        check_same_scoring(other, out)
    # A committed evaluator named by its asset name or by its folder is one evaluator.
    save_bench_config(from_dict(BenchConfig, bench_dict(bench_stores, out, reference_codes="codes_test",
                                                        evaluator="fashion/evaluator")), out)
    check_same_scoring(from_dict(BenchConfig, bench_dict(bench_stores, out, reference_codes="codes_test",
                                                         evaluator=str(default_evaluator_path()))), out)
    with pytest.raises(ConfigError, match=r"scored with other evaluator \(evaluator: 'fashion/evaluator' there, "
                                          r"'hf://me/evaluator' now\)"):
        check_same_scoring(from_dict(BenchConfig, bench_dict(bench_stores, out, reference_codes="codes_test",
                                                             evaluator="hf://me/evaluator")), out)
    # Sampling spelt another way that draws the same (top-p 1 is no top-p) adds to the records; top-p 0.9 does not.
    save_bench_config(from_dict(BenchConfig, bench_dict(bench_stores, out, sampling={"top_p": 1.0})), out)
    check_same_scoring(from_dict(BenchConfig, bench_dict(bench_stores, out, sampling={"top_p": None})), out)
    # The refusal shows the saved value as written (1.0), though it compares as None.
    with pytest.raises(ConfigError, match=r"scored with other sampling \(sampling.top_p: 1.0 there, 0.9 now\); give"):
        check_same_scoring(from_dict(BenchConfig, bench_dict(bench_stores, out, sampling={"top_p": 0.9})), out)
    # A bench.yaml written before a sampling key existed drew with its default (an empty "()" refusal before).
    saved = yaml.safe_load((out / "bench.yaml").read_text())
    del saved["sampling"]["image_size_eval"]
    (out / "bench.yaml").write_text(yaml.safe_dump(saved))
    check_same_scoring(from_dict(BenchConfig, bench_dict(bench_stores, out, sampling={"top_p": 1.0})), out)


def test_par_variants_run_beside_raster_ones(bench_stores, tmp_path):
    par = ['model.overrides={order: par, regions_per_side: 2}']
    bench = from_dict(BenchConfig, bench_dict(bench_stores, tmp_path / "bench", steps=2, eval_at=[],
                                              variants={"baseline": [], "par": par,
                                                        "par_mirai_e": [*par, "foresight.source=ema",
                                                                        "foresight.warmup=0"]}))
    results = run_convergence(bench)
    assert set(results) == {"baseline", "par", "par_mirai_e"}
    assert all(records[0]["fid"] > 0 for records in results.values())
    gpt = checkpoint.load(tmp_path / "bench" / "runs" / "par" / "seed_0" / "checkpoints" / "step_0000002", GPT)
    assert gpt.args.order == "par" and len(gpt.decode_schedule()) == 4 + 64 // 4 - 1
    maps = json.loads((tmp_path / "bench" / "tsne_maps.json").read_text())
    assert list(maps["maps"]) == ["baseline", "par", "par_mirai_e"]  # PAR maps drawn on the grid cells too
    assert "| par@2 |" in (tmp_path / "bench" / "results.md").read_text()
