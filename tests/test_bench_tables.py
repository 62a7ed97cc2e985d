"""The convergence bench's stored records and tables: the results file's shape, the summary and paired
tables over seeds, the steps each variant takes to reach the baseline's final FID, and the shipped bench configs'
checkpoint schedules (no training, no stores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mirai.bench.config import BenchConfig
from mirai.bench.report import (Crossing, crossing_rows, crossing_step, format_table, paired_rows,
                                summary_rows)
from mirai.bench.store import read_floors, read_results
from mirai.config import from_dict, load_config
from mirai.errors import DataError
from mirai.foresight.encoders import ASSETS


def bench_dict(**changes) -> dict:
    """A bench config that needs no files: the tables read only its variants, seeds and schedule."""
    return {"train_config": "base.yaml", "reference_codes": "codes_test", "variants": {"baseline": []},
            "seeds": [0], "steps": 4, "eval_at": [2], **changes}


@pytest.mark.parametrize("content, problem", [
    ("[1, 2]", "holds a list, not variant -> records"),
    ('{"baseline": 5}', "the records of 'baseline' are not a list of objects"),
    ('{"baseline": [{"seed": 0, "step": 3}]}', "a record of 'baseline' lacks fid"),
    ('{"baseline": [{"seed": "0", "step": 3, "fid": 1.0}]}', r"a record of 'baseline' has seed '0' \(a whole number >= 0"),
    ('{"baseline": [{"seed": 0, "step": -20, "fid": 1.0}]}', r"has step -20 \(a whole number >= 1\)"),
    ('{"baseline": [{"seed": 0, "step": 3, "fid": "abc"}]}', r"has fid 'abc' \(a finite number\)"),
    ('{"baseline": [{"seed": 0, "step": 3, "fid": null}]}', r"has fid None \(a finite number\)"),
    ('{"baseline": [{"seed": 0, "step": 3, "fid": NaN}]}', r"has fid nan \(a finite number\)"),
    ('{"baseline": [{"seed": 0, "step": 3, "fid": 1.0, "recall": "x"}]}', r"has recall 'x' \(a number or null\)"),
    ('{"b": [{"seed": 0, "step": 3, "fid": 1.0}, {"seed": 0, "step": 3, "fid": 2.0}]}',
     "holds two records of 'b' seed 0 at step 3"),
])
def test_a_results_file_of_the_wrong_shape_is_refused_before_any_work(tmp_path, content, problem):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(DataError, match=problem + ".*restore it, or delete it to score every checkpoint again"):
        read_results(tmp_path)
    assert (tmp_path / "results.json").read_text() == content  # nothing saved is touched


@pytest.mark.parametrize("content, problem", [
    ('{"noise', "is corrupt"), ("[]", "holds a list"), ("{}", "lacks its tokenizer_floor"),
    ('{"tokenizer_floor": {}, "noise_floor": {"num_images": 6}}', r"has tokenizer_floor.fid None \(a number\)"),
    ('{"tokenizer_floor": {"fid": 1}, "noise_floor": {"num_images": 6}}', "has tokenizer_floor.inception_score None"),
])
def test_a_damaged_floors_file_is_refused_naming_the_fix(tmp_path, content, problem):
    (tmp_path / "reference.json").write_text(content)
    with pytest.raises(DataError, match=problem + ".*delete it, and the next bench run or --report computes it again"):
        read_floors(tmp_path)
    assert (tmp_path / "reference.json").read_text() == content


def test_floors_an_older_version_wrote_are_to_be_recomputed(tmp_path):
    assert read_floors(tmp_path) is None
    old = {"tokenizer_floor": {"fid": 1.0}, "noise_floor": {"fid": 0.5, "half_size": 5000}}
    (tmp_path / "reference.json").write_text(json.dumps(old))
    assert read_floors(tmp_path) is None
    (tmp_path / "reference.json").write_text(json.dumps(FLOORS))
    assert read_floors(tmp_path) == FLOORS


FLOORS = {"num_images": 12, "reference_codes": "x",
          "tokenizer_floor": {"fid": 1.0, "precision": 0.9, "recall": 0.9, "inception_score": 3.0,
                              "class_accuracy": 0.95, "num_images": 12},
          "noise_floor": {"fid": 0.5, "precision": 0.8, "recall": 0.8, "inception_score": 3.5, "class_accuracy": 0.9,
                          "num_images": 6, "num_reference": 6, "capped": True}}


def test_table_reports_mean_and_spread_over_seeds():
    bench = from_dict(BenchConfig, bench_dict(seeds=[0, 1], steps=6, eval_at=[2, 4],
                                              average_last=2, variants={"a": []}))

    def record(seed, step, fid):
        return {"seed": seed, "step": step, "fid": fid, "fid_recon": fid / 2, "inception_score": 2.0,
                "precision": 0.5, "recall": 0.25, "class_accuracy": 0.9, "val_nll": None}

    results = {"a": [record(0, 2, 30.0), record(0, 4, 20.0), record(0, 6, 10.0),
                     record(1, 2, 34.0), record(1, 4, 24.0), record(1, 6, 14.0)]}
    rows = dict(summary_rows(bench, results))
    assert [r["fid"] for r in rows["a@6"]] == [10.0, 14.0]
    assert [r["fid"] for r in rows["a@last2"]] == [15.0, 19.0]  # each seed over steps 4 and 6
    table = format_table(bench, results, FLOORS)
    assert "| a@2 | 32 ± 2.8 | 16 ± 1.4 | 2 ± 0 |" in table
    assert "| a@last2 | 17 ± 2.8 |" in table
    assert table.count("| – |") == 4 + 2 * 2  # val NLL unknown in every row; the floors: no FID vs recon, no seeds
    assert "| noise floor (6 real) | 0.5 | – | 3.5 | 0.8 | 0.8 | 0.9 | – | – |" in table


def test_paired_table_compares_each_seed_with_the_baseline():
    bench = from_dict(BenchConfig, bench_dict(seeds=[0, 1, 2], steps=4, eval_at=[],
                                              variants={"baseline": [], "b": []}))

    def record(seed, fid, acc):
        return {"seed": seed, "step": 4, "fid": fid, "fid_recon": fid / 2, "inception_score": 2.0,
                "precision": 0.5, "recall": 0.25, "class_accuracy": acc, "val_nll": None}

    results = {"baseline": [record(0, 100.0, 0.5), record(1, 200.0, 0.6), record(2, 300.0, 0.7)],
               "b": [record(0, 90.0, 0.6), record(1, 190.0, 0.7), record(2, 330.0, 0.6)]}
    (name, diffs, relative), = paired_rows(bench, results)
    assert name == "b@4" and diffs["fid"] == [-10.0, -10.0, 30.0] and diffs["val_nll"] == []
    assert relative == pytest.approx([-10.0, -5.0, 10.0])
    table = format_table(bench, results, FLOORS)
    assert "| b@4 | 3.333 ± 23 (2/3) | 1.667 ± 12 (2/3) |" in table and "| – | -1.667 ± 10 |" in table


def test_every_shipped_bench_config_draws_fid_curves_of_at_least_five_checkpoints():
    shipped = sorted((Path(ASSETS).parent.parent / "configs" / "bench").glob("*.yaml"))
    assert len(shipped) >= 5
    for path in shipped:
        bench = load_config(BenchConfig, path)
        assert len(bench.schedule()) >= 5, f"{path.name} scores only steps {bench.schedule()}"


def test_crossing_step_interpolates_between_the_checkpoints_that_bracket_the_target():
    curve = [(500, 250.0), (1000, 150.0), (1500, 100.0), (2000, 90.0)]
    assert crossing_step(curve, 125.0) == Crossing(1250.0)  # halfway from 150 to 100
    assert crossing_step(curve, 150.0) == Crossing(1000.0)  # reached exactly at a checkpoint
    assert crossing_step(curve, 300.0) == Crossing(500, bound=True)  # already below at the first checkpoint
    assert crossing_step(curve, 80.0) is None
    assert crossing_step([(1000, 150.0), (2000, 160.0), (3000, 100.0)], 120.0) == Crossing(2000 + 4000 / 6)
    # A dip below the target that does not last is scoring noise: counted from the last crossing, or not at all.
    assert crossing_step([(500, 250.0), (1000, 140.0), (1500, 160.0), (2000, 90.0)], 150.0) == Crossing(1500 + 500 / 7)
    assert crossing_step([(10, 688.3), (20, 711.3)], 706.2) is None


def test_steps_to_the_baselines_final_fid_per_seed_with_their_fraction():
    bench = from_dict(BenchConfig, bench_dict(seeds=[0, 1, 2], steps=20, eval_at=[10],
                                              variants={"baseline": [], "b": [], "c": []}))

    def curve(seed, fids):
        return [{"seed": seed, "step": step, "fid": fid, "fid_recon": fid, "inception_score": 2.0, "precision": 0.5,
                 "recall": 0.25, "class_accuracy": 0.5, "val_nll": None} for step, fid in zip((10, 20), fids)]

    results = {"baseline": curve(0, [200.0, 100.0]) + curve(1, [200.0, 120.0]) + curve(2, [200.0, 100.0]),
               "b": curve(0, [150.0, 50.0]) + curve(1, [100.0, 80.0]) + curve(2, [150.0, 90.0])[1:],  # seed 2: last only
               "c": curve(0, [200.0, 110.0])}
    (b, seeds, targets, steps), (c, *_, never) = crossing_rows(bench, results)
    assert (b, seeds, targets, c) == ("b", [0, 1, 2], [100.0, 120.0, 100.0], "c")
    assert steps == [Crossing(15.0), Crossing(10, bound=True), [10]] and never == [None]
    table = format_table(bench, results, FLOORS)
    assert "| b | 106.7 ± 12 | seed 0: 15, seed 1: ≤10, seed 2: not scored at step 10 | ≤ 0.625 ± 0.18 | 2/2 |" in table
    assert "| c | 100 | seed 0: not reached | – | 0/1 |" in table
