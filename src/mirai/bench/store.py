"""The bench's records on disk: ``OUT/results.json`` under a file lock, and the checks that keep them comparable."""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from mirai.bench.config import BenchConfig, Run
from mirai.config import flatten, read_yaml, save_yaml, to_dict, write_text_atomic
from mirai.errors import ConfigError, DataError, MiraiError
from mirai.hub.resolve import HF_SCHEME, RELEASED_PREFIXES, resolve
from mirai.sampling.pipeline import SampleSettings
from mirai.sampling.record import compile_changes_draws, draws_as
from mirai.training.state import latest_checkpoint, recorded_data_matches

# Bench keys that change what a stored record means; a rerun must not mix records made differently.
RECORD_KEYS = ("seed", "step", "fid")  # what every record has; the report reads them
SCORING_KEYS = ("num_samples", "class_sampling", "sample_seed", "sample_batch_size", "sampling",
                "reference_codes", "evaluator")
PATH_KEYS = ("reference_codes", "evaluator")  # compared as the files they name (_setting)
# Training keys the bench derives from eval_at alone (plan_runs): they change which checkpoints exist, not the weights.
CHECKPOINT_KEYS = {"save_every", "eval_every", "keep_last"}
# Training keys that change neither the weights nor the checkpoints: a run on disk trained with other values is the
# same run (its folder, wherever it now lies, is the run_dir; a resume accepts the others, RESUMABLE_KEYS).
UNWEIGHED_KEYS = ("run_dir", "log_every", "sample_every", "tensorboard", "wandb", "data.workers", "data.prefetch")
TRAINING_PATH_KEYS = ("data.codes", "data.val_codes")  # compared as the folders they name


# What a bench (and mirai demo, a bench with its runs and codes in OUT) writes at the top of OUT; hidden names are its
# lock and atomic writes' temporary files.
OWN_NAMES = re.compile(r"\..*|bench\.yaml|results\.(json|md)|reference(\.json)?|runs|samples|codes|tsne_maps\.json"
                       r"|(fid_vs_steps|curves|tsne_maps|grid_.+)\.(png|pdf)")


SEED_RUN = re.compile(r"seed_\d+")


def check_out_dir(bench: BenchConfig) -> None:
    """``ConfigError`` when ``out_dir`` holds what no bench writes there (a code store, a training run, notes):
    the bench's records, samples and runs would be mixed into another tool's folder. Runs kept in OUT itself
    (``runs_dir`` = ``out_dir``, as ``mirai demo`` does) may sit there under their variants' names."""
    out = Path(bench.out_dir)
    if not out.is_dir():  # missing (made later), or a file, which the config's own check refuses
        return
    runs_here = bench.runs_root().resolve() == out.resolve()
    foreign = sorted(p.name for p in out.iterdir() if not OWN_NAMES.fullmatch(p.name)
                     and not (runs_here and (p.name in bench.variants or _holds_runs(p))))
    if foreign:
        raise ConfigError(f"output folder {out} (out_dir; mirai demo's --out) holds what a bench does not write "
                          f"({', '.join(foreign[:4])}): a code store, a training run or other work; give a new folder "
                          "or one an earlier bench wrote")


def _holds_runs(path: Path) -> bool:
    """A variant's runs kept in OUT by an earlier bench or demo with other variants (a rerun with fewer keeps the
    others'): a training run (``VARIANT``, mirai demo's layout) or a folder of them (``VARIANT/seed_S``)."""
    if not path.is_dir():
        return False
    if (path / "config.yaml").is_file() or (path / "checkpoints").is_dir():
        return True
    return any(path.iterdir()) and all(SEED_RUN.fullmatch(p.name) for p in path.iterdir())


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_results(out_dir: Path) -> dict[str, list[dict]]:
    """variant -> its records in ``out_dir/results.json`` ({} before the first); ``DataError`` if corrupt."""
    path = out_dir / "results.json"
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is corrupt ({err}); delete it to score every checkpoint again") from None
    fix = "it is not a bench's records; restore it, or delete it to score every checkpoint again"
    if not isinstance(results, dict):
        raise DataError(f"{path} holds a {type(results).__name__}, not variant -> records: {fix}")
    for variant, records in results.items():
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise DataError(f"{path}: the records of {variant!r} are not a list of objects: {fix}")
        seen = set()
        for record in records:
            missing = [k for k in RECORD_KEYS if k not in record]
            if missing:
                raise DataError(f"{path}: a record of {variant!r} lacks {', '.join(missing)}: {fix}")
            bad = _bad_record_value(record)
            if bad:
                raise DataError(f"{path}: a record of {variant!r} has {bad}: {fix}")
            if (record["seed"], record["step"]) in seen:  # it would count as a second seed in every table
                raise DataError(f"{path} holds two records of {variant!r} seed {record['seed']} at step "
                                f"{record['step']}: {fix}")
            seen.add((record["seed"], record["step"]))
    return results


def _bad_record_value(record: dict) -> str | None:
    """What is wrong with a record's values, if anything: seed and step are whole numbers (seed >= 0, step >= 1),
    FID a finite number, every other score a number or null."""
    for key, least in (("seed", 0), ("step", 1)):
        value = record[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            return f"{key} {value!r} (a whole number >= {least})"
    for key, value in record.items():
        if key in ("seed", "step") or value is None and key != "fid":
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or key == "fid" and not math.isfinite(value):
            return f"{key} {value!r} (a {'finite ' if key == 'fid' else ''}number{'' if key == 'fid' else ' or null'})"
    return None


FLOOR_SCORES = ("fid", "inception_score", "precision", "recall", "class_accuracy")  # what the report shows of a floor


def read_floors(out_dir: Path) -> dict | None:
    """The floors in ``OUT/reference.json`` (``Scorer.floors``); None when there are none yet or an older version
    wrote them (no sample count for the noise floor: to be recomputed); ``DataError`` if the file is damaged."""
    path = out_dir / "reference.json"
    if not path.is_file():
        return None
    fix = "delete it, and the next bench run or --report computes it again (the scores in results.json are kept)"
    try:
        floors = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is corrupt ({err}); {fix}") from None
    parts = ("tokenizer_floor", "noise_floor")
    if isinstance(floors, dict) and all(isinstance(floors.get(k), dict) for k in parts) \
            and "num_images" not in floors["noise_floor"]:
        return None
    problem = _bad_floors(floors, parts)
    if problem:
        raise DataError(f"{path} {problem}, not the floors a bench writes; {fix}")
    return floors


def _bad_floors(floors: Any, parts: tuple[str, ...]) -> str | None:
    if not isinstance(floors, dict):
        return f"holds a {type(floors).__name__}"
    for name in parts:
        floor = floors.get(name)
        if not isinstance(floor, dict):
            return f"lacks its {name}"
        for key in (*FLOOR_SCORES, "num_images"):
            value = floor.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                return f"has {name}.{key} {value!r} (a number)"
    if not isinstance(floors.get("num_images"), int) or not isinstance(floors.get("reference_codes"), str):
        return "lacks its num_images or reference_codes"
    return None


def store_record(out_dir: Path, variant: str, record: dict) -> None:
    """Add (or replace) one record in ``OUT/results.json``.

    The file is read again under an exclusive lock, so processes scoring different shares of
    one bench into the same ``OUT`` never overwrite each other's records."""
    with open(out_dir / ".results.json.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = read_results(out_dir)
        key = (record["seed"], record["step"])
        records = [r for r in results.get(variant, []) if (r["seed"], r["step"]) != key]
        results[variant] = sorted(records + [record], key=lambda r: (r["seed"], r["step"]))
        write_json(out_dir / "results.json", results)


def save_bench_config(bench: BenchConfig, out_dir: Path) -> None:
    """Record the resolved config in ``out_dir/bench.yaml``, which ``check_same_scoring`` reads on the next run.

    An unchanged file is left alone, so a rerun that finds everything done writes nothing."""
    path = out_dir / "bench.yaml"
    if not (path.is_file() and read_yaml(path) == to_dict(bench)):
        save_yaml(bench, path)


def check_same_scoring(bench: BenchConfig, out_dir: Path) -> None:
    """Refuse (``ConfigError``) to add records scored differently from the ones already in ``out_dir``."""
    previous = out_dir / "bench.yaml"
    scored = [out_dir / name for name in ("results.json", "reference.json", "reference")]
    if not previous.is_file() or not any(p.exists() for p in scored):
        return
    old, new = read_yaml(previous), to_dict(bench)
    changed = [k for k in SCORING_KEYS if _setting(k, old.get(k)) != _setting(k, new[k])]
    switched = bool(old.get("compile_sampling")) != new["compile_sampling"]
    if switched and compile_changes_draws(new["sampling"]["precision"]):
        changed.append("compile_sampling")
    if changed:
        raise ConfigError(f"{out_dir} holds results scored with other {', '.join(changed)} "
                          f"({'; '.join(_difference(k, old.get(k), new[k]) for k in changed)}); give "
                          "the values it was scored with, use another out_dir, or delete results.json, "
                          "reference.json, reference/ and grid_*.png/.pdf there to rescore everything (the "
                          "training runs are kept)")


def _difference(key: str, old: Any, new: Any) -> str:
    """``key: old there, new now``; for a section (sampling), only its keys that draw differently, each
    shown as written."""
    if isinstance(old, dict) and isinstance(new, dict):
        old_means, new_means = _setting(key, old), _setting(key, new)
        return "; ".join(f"{key}.{k}: {old.get(k)!r} there, {new.get(k)!r} now"
                         for k in sorted(old_means.keys() | new_means.keys()) if old_means.get(k) != new_means.get(k))
    return f"{key}: {old!r} there, {new!r} now"


def _setting(key: str, value: Any) -> Any:
    """What a scoring setting means: a path key's string as the local file it names (through the resolver
    the scorer uses, so a committed asset's name is its folder), so another spelling of the same store is the
    same setting, and the sampling settings as they draw (``draws_as``: top-p 1 is no top-p). Hub addresses
    stay text: a check must not download."""
    if key == "sampling" and isinstance(value, dict):  # a key added since drew as its default before
        return draws_as({**to_dict(SampleSettings()), **value})
    if key in PATH_KEYS and isinstance(value, str) and value.strip() \
            and not value.startswith((HF_SCHEME, *RELEASED_PREFIXES)):
        return os.path.realpath(resolve(value, key))
    return value


def check_same_training(run: Run, schedule: list[int]) -> Run:
    """The run to train and score: a run on disk must have been trained with the config the bench would use
    now (else ``ConfigError``), except for the checkpoint spacing that ``eval_at`` sets.

    With another ``eval_at``, the weights are the same; the run keeps its own spacing (so a resumed run
    goes on as it started) if it saves every step of ``schedule``, else ``ConfigError`` names the steps it
    never saved and an ``eval_at`` that it does."""
    path = run.run_dir / "config.yaml"
    if not path.is_file():
        return run
    old, new = flatten(read_yaml(path)), flatten(to_dict(run.cfg))
    by_content = _same_stores(run)  # a store recorded by its data is compared by it, not by how its path is spelt
    changed = sorted(k for k in old.keys() | new.keys() if not k.startswith(UNWEIGHED_KEYS) and (
        not by_content[k] if k in by_content else _training_setting(k, old.get(k)) != _training_setting(k, new.get(k))))
    if not changed:
        return run
    every = old.get("save_every")
    if set(changed) <= CHECKPOINT_KEYS and isinstance(every, int) and every > 0:
        unsaved = [step for step in schedule if step % every and step != run.cfg.steps]
        if not unsaved:
            return replace(run, cfg=replace(run.cfg, **{key: old[key] for key in CHECKPOINT_KEYS}))
        saved = list(range(every, run.cfg.steps, every))
        fits = f"'eval_at={saved}'".replace(" ", "") if len(saved) <= 20 else f"an eval_at of multiples of {every}"
        raise ConfigError(f"{run.run_dir} saves a checkpoint every {every} steps (the eval_at it was started "
                          f"with), so step{'s' * (len(unsaved) > 1)} {', '.join(map(str, unsaved))} of this "
                          f"eval_at {'were' if len(unsaved) > 1 else 'was'} never saved; score the steps it saves "
                          f"(e.g. {fits}), or delete that run to retrain it")
    detail = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" + (
        " (not the data the run trained on: name that store, or extract it again as it was)"
        if k in by_content else "") for k in changed)
    raise ConfigError(f"{run.run_dir} was trained with another config ({detail}); give the values it was trained "
                      "with, use another out_dir, or delete that run to retrain it")


def _same_stores(run: Run) -> dict[str, bool]:
    """``recorded_data_matches`` of the run's latest checkpoint against the stores the bench names, by dotted key
    ({"data.codes": True, ...}); {} for a run without checkpoints."""
    try:
        latest = latest_checkpoint(run.run_dir)
    except MiraiError:
        return {}
    return {f"data.{key}": same for key, same in recorded_data_matches(latest, run.cfg).items()}


def _training_setting(key: str, value: Any) -> Any:
    """What a training setting means to the weights: a code store's path as the folder it names, so that another
    spelling of it (relative, absolute, through a link) is the same setting."""
    if key in TRAINING_PATH_KEYS and isinstance(value, str) and value.strip():
        return os.path.realpath(value)
    return value
