"""The convergence benchmark (``mirai bench convergence``): FID against training steps, per variant.

The paper's headline claim is about convergence speed (Mirai-I at 40 epochs matches the
baseline at 400, method.md §8), so one final number per run is not enough: every variant is
trained from the same seeds, data order and step budget, and each run's EMA weights are
scored at the same checkpoints with the same sample count, labels and sampling settings.
A variant is a training config plus ``key=value`` overrides, so an ablation is just one
more variant.

Scores use the Fashion-MNIST evaluator (``mirai.evaluation.suite``) against two references
built once from the test code store: the real test images, and the tokenizer's
reconstructions of them (decoded codes). The generator cannot beat the tokenizer, so FID
against reconstructions isolates what the GPT learned, and FD(reconstructions, real) — the
tokenizer floor — says how much of the FID against real images no GPT could remove.

Everything is resumable: finished records live in ``OUT/results.json`` and are skipped, an
interrupted training run continues from its latest checkpoint, and sample files resume
batch by batch. The work splits across processes (cores, GPUs, machines sharing a file
system): each process given a share (``variants``/``seeds`` of ``run_convergence``, ``--variant``
and ``--seed`` on the command line) trains and scores only that share and merges its records
into the shared ``results.json`` under a file lock; one plain run afterwards writes the report.
Layout of ``OUT``::

    bench.yaml            the resolved bench config (a rerun must agree on how records were scored)
    runs/VARIANT/seed_S/  training runs (config.yaml, metrics.jsonl, checkpoints/step_*); ``runs_dir``
                          puts them elsewhere, e.g. another bench's runs, to rescore those with
                          other scoring settings (more samples) without training again
    reference/            real.npz, recon.npz: reference batches (ADM layout, with evaluator features)
    reference.json        tokenizer floor and evaluator noise floor
    results.json          variant -> [{seed, step, fid, precision, recall, ...}]
    results.md            the table (mean ± std over seeds), fid_vs_steps.png, grid_VARIANT.png
    tsne_maps.png, .json  t-SNE token maps of one test image (paper Fig. 9) by each variant's final
                          checkpoint of the first seed, with their smoothness scores
    curves.png            training curves of every run: NTP loss, foresight head losses, validation NLL
"""

from __future__ import annotations

import fcntl
import json
import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from mirai import checkpoint
from mirai.analysis.curves import plot_curves
from mirai.analysis.tsne import tsne_maps
from mirai.config import (
    apply_overrides, from_dict, parse_override, read_yaml, save_yaml, to_dict, write_text_atomic,
)
from mirai.data.codes import CodeStore
from mirai.data.images import save_image_grid
from mirai.data.transforms import to_uint8_hwc
from mirai.errors import CheckpointError, ConfigError, DataError, MiraiError
from mirai.evaluation.reference import FeatureSet, read_reference, write_reference
from mirai.evaluation.suite import extract_features, load_network, noise_floor, reference_features, score
from mirai.sampling.pipeline import SampleSettings, class_labels, sample_batch, sample_to_npz
from mirai.training.config import TrainConfig
from mirai.training.metrics import read_metrics, truncate_metrics
from mirai.training.state import STEP_DIR, latest_checkpoint
from mirai.training.trainer import train

# Training keys the bench sets itself: equal budgets and a shared checkpoint schedule are the point.
BENCH_KEYS = ("run_dir", "seed", "steps", "epochs", "save_every", "eval_every", "keep_last")
# Bench keys that change what a stored record means; a rerun must not mix records made differently.
SCORING_KEYS = ("num_samples", "class_sampling", "sample_seed", "sample_batch_size", "sampling",
                "reference_codes", "evaluator")
METRICS = ("fid", "precision", "recall", "inception_score", "class_accuracy")
EVALUATOR_RESOLUTION = (32, 32)
TSNE_IMAGE = 0  # the test image of tsne_maps.png


@dataclass
class Variant:
    """One arm of the comparison: a training YAML (default: the bench's ``train_config``) plus overrides."""

    config: str | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class BenchConfig:
    """What to train, when to score it and how. Paths are relative to the working directory."""

    out_dir: str = "runs/bench/convergence"
    runs_dir: str | None = None  # where the training runs live; None: OUT/runs
    train_config: str | None = None  # training YAML that variants given as plain override lists start from
    train_overrides: list[str] = field(default_factory=list)  # applied to every variant, before its own
    # name -> list of overrides, or {config: YAML, overrides: [...]} (see ``Variant``)
    variants: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 0  # optimizer steps of every run
    eval_at: list[int] = field(default_factory=list)  # checkpoints to score; the final step always is
    num_samples: int = 2000
    class_sampling: Literal["balanced", "uniform"] = "balanced"
    sample_seed: int = 0  # the same labels and noise for every checkpoint: variants differ only by weights
    sample_batch_size: int = 250
    sampling: SampleSettings = field(default_factory=SampleSettings)
    reference_codes: str = ""  # held-out code store: its images and their reconstructions are the references
    evaluator: str | None = None  # Fashion-MNIST evaluator checkpoint; None: the committed one
    eval_batch_size: int = 250
    device: str = "auto"  # sampling and scoring: auto (cuda when available) | cpu | cuda
    average_last: int = 3  # the table's summary row averages each seed over its last N scored checkpoints
    keep_samples: bool = False  # keep each checkpoint's sample .npz (ADM layout) after scoring
    # GPT block of tsne_maps.png; None: each variant's foresight layer (default 2/3 of the depth).
    # The map is drawn once: delete tsne_maps.png after changing this.
    tsne_layer: int | None = None

    def validate(self) -> None:
        if not self.variants:
            raise ConfigError("variants is empty: name at least one, e.g. variants: {baseline: []}")
        for name in self.variants:
            if not name or "/" in name or name.startswith("."):
                raise ConfigError(f"variant name {name!r} must be a plain folder name")
        self.variant_specs()
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be a non-empty list without repeats, got {self.seeds}")
        if self.steps < 1:
            raise ConfigError("steps must be positive: every variant trains for the same number of steps")
        bad = [s for s in self.eval_at if not 1 <= s <= self.steps]
        if bad:
            raise ConfigError(f"eval_at {bad} lie outside 1..steps={self.steps}")
        if self.num_samples < 2 or self.sample_batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("num_samples must be at least 2, the batch sizes positive")
        if not self.reference_codes:
            raise ConfigError("reference_codes is empty: give the held-out code store (e.g. the test split "
                              "from `mirai extract --split test`)")
        if self.average_last < 1:
            raise ConfigError("average_last must be at least 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device {self.device!r}: choose auto, cpu or cuda")
        if self.tsne_layer is not None and self.tsne_layer < 1:
            raise ConfigError(f"tsne_layer is a 1-based GPT block, got {self.tsne_layer}")

    def variant_specs(self) -> dict[str, Variant]:
        specs = {}
        for name, value in self.variants.items():
            where = f"variants.{name}"
            if value is None or isinstance(value, list):
                value = {"overrides": value or []}
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: give a list of key=value overrides or a mapping "
                                  f"{{config: FILE, overrides: [...]}}, got {value!r}")
            spec = from_dict(Variant, value, where)
            if any(not isinstance(text, str) for text in spec.overrides):
                raise ConfigError(f"{where}: overrides must be strings of the form key=value, got {spec.overrides}")
            if spec.config is None and self.train_config is None:
                raise ConfigError(f"{where} names no config and train_config is not set")
            specs[name] = spec
        return specs

    def reference_variant(self) -> str:
        """What the paired table compares against: ``baseline`` if there is one, else the first variant."""
        return "baseline" if "baseline" in self.variants else next(iter(self.variants))

    def runs_root(self) -> Path:
        return Path(self.runs_dir) if self.runs_dir else Path(self.out_dir) / "runs"

    def schedule(self) -> list[int]:
        """The scored steps: ``eval_at`` plus the final step, ascending."""
        return sorted(set(self.eval_at) | {self.steps})


@dataclass
class Run:
    variant: str
    seed: int
    cfg: TrainConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def final_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / f"step_{self.cfg.steps:07d}"


def _check_overrides(overrides: list[str], where: str) -> None:
    for text in overrides:
        key = parse_override(text)[0]
        if key[0] in BENCH_KEYS:
            raise ConfigError(f"{where}: override {text!r} sets {key[0]!r}, which the bench controls so that "
                              f"every run has the same budget and checkpoints; set it in the bench config")


def plan_runs(bench: BenchConfig) -> list[Run]:
    """Every (variant, seed) run with its resolved training config; all configs are checked before any work."""
    _check_overrides(bench.train_overrides, "train_overrides")
    schedule = bench.schedule()
    every = math.gcd(*schedule)  # the trainer saves (and measures val NLL) every `every` steps
    runs = []
    for name, spec in bench.variant_specs().items():
        _check_overrides(spec.overrides, f"variant {name!r}")
        path = spec.config or bench.train_config
        try:
            base = apply_overrides(read_yaml(path), [*bench.train_overrides, *spec.overrides])
        except ConfigError as err:
            raise ConfigError(f"variant {name!r}: {err}") from None
        for seed in bench.seeds:
            data = dict(base, run_dir=str(bench.runs_root() / name / f"seed_{seed}"), seed=seed,
                        steps=bench.steps, epochs=0.0, save_every=every, eval_every=every,
                        keep_last=bench.steps // every)
            try:
                cfg = from_dict(TrainConfig, data)
            except ConfigError as err:
                raise ConfigError(f"variant {name!r} (from {path}): {err}") from None
            runs.append(Run(name, seed, cfg))
    # Seed-major: a bench stopped early still compares every variant on the seeds it finished.
    return sorted(runs, key=lambda run: bench.seeds.index(run.seed))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu")
    return torch.device(name)


class Scorer:
    """The Fashion-MNIST evaluator, the tokenizer and the two references, built once per bench."""

    def __init__(self, bench: BenchConfig, out_dir: Path):
        self.bench, self.out_dir = bench, out_dir
        self.device = _device(bench.device)
        self.store = CodeStore.open(bench.reference_codes)
        size = self.store.view_spec.image_size
        if (size, size) != EVALUATOR_RESOLUTION:
            raise DataError(f"the Fashion-MNIST evaluator scores 32×32 images; {bench.reference_codes} holds "
                            f"{size}×{size} views")
        self.vq = self.store.load_tokenizer(strict=True).to(self.device)
        self.network, self.info = load_network("fashion", fashion_evaluator=bench.evaluator, device=str(self.device))
        self.num_classes = self.network.num_classes

    def check_store(self, path: str) -> None:
        """A run's training store must come from the tokenizer that decodes its samples."""
        theirs = CodeStore.open(path).manifest["tokenizer"]["sha256"]
        if theirs != self.store.manifest["tokenizer"]["sha256"]:
            raise DataError(f"{path} and the reference store {self.bench.reference_codes} were extracted with "
                            "different tokenizers: extract both with the same one")

    def _reference(self, name: str, make_images) -> FeatureSet:
        """The evaluator's features of one reference, computed once and kept as an ADM-layout batch."""
        path = self.out_dir / "reference" / f"{name}.npz"
        if not path.is_file():
            images = make_images()
            features = FeatureSet.from_features(extract_features(self.network, images, self.bench.eval_batch_size,
                                                                 desc=f"reference {name}"))
            write_reference(path, {"fashion": features}, {"fashion": self.info}, images=images,
                            labels=self.store.labels)
        return reference_features(read_reference(path), self.network, self.info, self.bench.eval_batch_size)

    def _real_images(self) -> np.ndarray:
        return np.stack([self.store.source_image(i, 0) for i in tqdm(range(len(self.store)), desc="real images")])

    @torch.no_grad()
    def _reconstructions(self) -> np.ndarray:
        codes, out = self.store.codes, []
        for start in tqdm(range(0, len(codes), self.bench.eval_batch_size), desc="reconstructions"):
            chunk = torch.from_numpy(np.asarray(codes[start:start + self.bench.eval_batch_size, 0], dtype=np.int64))
            out.append(to_uint8_hwc(self.vq.decode_indices(chunk.to(self.device))))
        return np.concatenate(out)

    @cached_property
    def references(self) -> dict[str, FeatureSet]:
        return {"real": self._reference("real", self._real_images),
                "recon": self._reference("recon", self._reconstructions)}

    def floors(self) -> dict:
        """The tokenizer floor (reconstructions scored like samples, at the samples' count) and the
        evaluator's noise floor (one half of the real images against the other)."""
        refs, labels = self.references, self.store.labels
        count = min(self.bench.num_samples, len(labels))
        pick = np.sort(np.random.default_rng(0).permutation(len(labels))[:count])
        recon = {"pool": refs["recon"].pool[pick], "logits": refs["recon"].logits[pick]}
        return {
            "reference_codes": self.bench.reference_codes, "num_images": int(len(labels)),
            "evaluator": self.info,
            "tokenizer_floor": dict(score(recon, refs["real"], labels[pick], self.num_classes, str(self.device)),
                                    num_images=count),
            "noise_floor": noise_floor(refs["real"], labels, self.num_classes, str(self.device)),
        }

    def score_checkpoint(self, path: Path, samples: Path) -> dict:
        """Sample ``num_samples`` images from the checkpoint's EMA weights and score them against both references."""
        b = self.bench
        if not samples.is_file():  # else a previous attempt sampled them and stopped before scoring
            gpt = checkpoint.load(path, use_ema=True, kind="gpt").to(self.device)
            labels = class_labels(gpt.args.num_classes, b.num_samples, b.class_sampling, seed=b.sample_seed)
            sample_to_npz(gpt, self.vq, labels, samples, b.sampling, seed=b.sample_seed,
                          batch_size=b.sample_batch_size)
        with np.load(samples) as data:
            images, labels = data["arr_0"], data["labels"]
        features = extract_features(self.network, images, b.eval_batch_size, desc="sample features")
        real = score(features, self.references["real"], labels, self.num_classes, str(self.device))
        recon = score({"pool": features["pool"]}, self.references["recon"], device=str(self.device))
        if not b.keep_samples:
            samples.unlink()
        return {**{k: real[k] for k in METRICS},
                **{f"{k}_recon": recon[k] for k in ("fid", "precision", "recall")}}

    def grid(self, path: Path, out: Path) -> None:
        """Ten samples per class (at most ten classes), one row each, from a checkpoint's EMA weights."""
        gpt = checkpoint.load(path, use_ema=True, kind="gpt").to(self.device)
        labels = torch.arange(min(10, gpt.args.num_classes), device=self.device).repeat_interleave(10)
        images, _ = sample_batch(gpt, self.vq, labels, self.bench.sampling, seed=self.bench.sample_seed)
        save_image_grid(images, 10, out)


def checkpoint_step(path: Path) -> int:
    return int(STEP_DIR.match(path.name).group(1))


def ensure_trained(run: Run) -> bool:
    """Train ``run`` to its last step: from scratch, or resumed from its latest checkpoint.
    Returns whether any training happened."""
    try:
        latest = latest_checkpoint(run.run_dir)
    except CheckpointError:
        latest = None
    if latest is not None and checkpoint_step(latest) >= run.cfg.steps:
        return False
    if latest is None:
        truncate_metrics(run.run_dir, 0)  # a run killed before its first checkpoint logged steps it will redo
    try:
        train(run.cfg, resume=latest is not None)
    except MiraiError as err:
        raise type(err)(f"variant {run.variant!r}, seed {run.seed}: {err}") from err
    return True


def val_nll(run_dir: Path, step: int) -> float | None:
    """The EMA's validation NLL the trainer logged at ``step`` (None without a validation store)."""
    values = [r["val/nll_ema"] for r in read_metrics(run_dir) if r["step"] == step and "val/nll_ema" in r]
    return values[-1] if values else None


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_results(out_dir: Path) -> dict[str, list[dict]]:
    path = out_dir / "results.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is corrupt ({err}); delete it to score every checkpoint again") from None


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
        _write_json(out_dir / "results.json", results)


def _check_same_scoring(bench: BenchConfig, out_dir: Path) -> None:
    """Refuse to add records scored differently from the ones already in ``out_dir``."""
    previous = out_dir / "bench.yaml"
    scored = [out_dir / name for name in ("results.json", "reference.json", "reference")]
    if not previous.is_file() or not any(p.exists() for p in scored):
        return
    old, new = read_yaml(previous), to_dict(bench)
    changed = [k for k in SCORING_KEYS if old.get(k) != new[k]]
    if changed:
        raise ConfigError(f"{out_dir} holds results scored with other {', '.join(changed)} "
                          f"({', '.join(f'{k}: {old.get(k)!r}' for k in changed)}); use another out_dir, or "
                          "delete results.json, reference.json, reference/ and grid_*.png there to rescore "
                          "everything (the training runs are kept)")


def _check_same_training(run: Run) -> None:
    """A run on disk must have been trained with the config the bench would use now."""
    path = run.run_dir / "config.yaml"
    if not path.is_file():
        return
    old, new = _flatten(read_yaml(path)), _flatten(to_dict(run.cfg))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        raise ConfigError(f"{run.run_dir} was trained with another config (differs in {', '.join(changed)}); "
                          "use another out_dir, or delete that run to retrain it")


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def select_share(runs: list[Run], variants: list[str] | None, seeds: list[int] | None) -> list[Run]:
    """The runs of one process's share of the bench; None selects every variant (or seed)."""
    known_variants, known_seeds = {r.variant for r in runs}, {r.seed for r in runs}
    for kind, chosen, known in (("variant", variants, known_variants), ("seed", seeds, known_seeds)):
        unknown = sorted(set(chosen or []) - known, key=str)
        if unknown:
            raise ConfigError(f"{kind} {', '.join(map(str, unknown))} is not in the bench config "
                              f"(it has {', '.join(map(str, sorted(known, key=str)))})")
    return [r for r in runs if (variants is None or r.variant in variants) and (seeds is None or r.seed in seeds)]


def run_convergence(bench: BenchConfig, variants: list[str] | None = None,
                    seeds: list[int] | None = None) -> dict[str, list[dict]]:
    """Train, score and report every (variant, seed, checkpoint) not yet in ``OUT/results.json``.

    ``variants``/``seeds`` restrict this process to a share of the work (None: all of it). A share
    trains and scores its runs and draws their sample grids, but writes no report (tables, plots,
    t-SNE maps), which needs every variant: run once more without a share when all have finished."""
    out = Path(bench.out_dir)
    runs = select_share(plan_runs(bench), variants, seeds)
    shared = variants is not None or seeds is not None
    _check_same_scoring(bench, out)
    for run in runs:
        _check_same_training(run)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(bench, out / "bench.yaml")
    schedule = bench.schedule()
    results = read_results(out)
    todo = []
    for run in runs:
        done = {r["step"] for r in results.get(run.variant, []) if r["seed"] == run.seed}
        missing = [s for s in schedule if s not in done]
        if missing:
            todo.append((run, missing))
    scorer: Scorer | None = None

    def get_scorer() -> Scorer:
        nonlocal scorer
        if scorer is None:
            scorer = Scorer(bench, out)
            for run in runs:
                scorer.check_store(run.cfg.data.codes)
        return scorer

    bar = tqdm(total=sum(len(m) for _, m in todo), desc="bench checkpoints", unit="ckpt", dynamic_ncols=True)
    try:
        for run, missing in todo:
            get_scorer()  # check stores and tokenizers before spending time on training
            bar.set_postfix_str(f"{run.variant} seed {run.seed}")
            ensure_trained(run)
            for step in missing:
                path = run.run_dir / "checkpoints" / f"step_{step:07d}"
                if not path.is_dir():
                    raise CheckpointError(f"{path} is missing (pruned or deleted), so step {step} of "
                                          f"{run.variant} seed {run.seed} cannot be scored; delete "
                                          f"{run.run_dir} to retrain it")
                samples = out / "samples" / run.variant / f"seed_{run.seed}" / f"step_{step:07d}.npz"
                record = {"seed": run.seed, "step": step, **get_scorer().score_checkpoint(path, samples),
                          "val_nll": val_nll(run.run_dir, step), "num_samples": bench.num_samples}
                store_record(out, run.variant, record)
                bar.update(1)
    finally:
        bar.close()
    floors_path = out / "reference.json"
    if not floors_path.is_file():
        _write_json(floors_path, get_scorer().floors())
    first_seed = [run for run in runs if run.seed == bench.seeds[0]]
    for run in first_seed:
        grid = out / f"grid_{run.variant}.png"
        if not grid.is_file():
            get_scorer().grid(run.final_checkpoint, grid)
    results = read_results(out)  # with the records other shares added meanwhile
    if shared:
        return results
    maps = out / "tsne_maps.png"
    if not (maps.is_file() and maps.with_suffix(".json").is_file()):
        layers = [bench.tsne_layer if bench.tsne_layer is not None else run.cfg.foresight.layer for run in first_seed]
        tsne_maps([run.final_checkpoint for run in first_seed], bench.reference_codes, maps, layers=layers,
                  image_indices=[TSNE_IMAGE], labels=[run.variant for run in first_seed],
                  device=_device(bench.device))
    floors = json.loads(floors_path.read_text())
    (out / "results.md").write_text(format_table(bench, results, floors))
    plot_fid(bench, results, floors, out / "fid_vs_steps.png")
    plot_curves([run.run_dir for run in runs], out / "curves.png")
    return results


# ---------------------------------------------------------------------------- reporting
COLUMNS = (("fid", "FID↓"), ("fid_recon", "FID vs recon↓"), ("inception_score", "IS↑"), ("precision", "Pre↑"),
           ("recall", "Rec↑"), ("class_accuracy", "class acc↑"), ("val_nll", "val NLL↓"))


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def _cell(records: list[dict], key: str) -> str:
    return _mean_std([r[key] for r in records if r.get(key) is not None])


def summary_rows(bench: BenchConfig, results: dict[str, list[dict]]) -> list[tuple[str, list[dict]]]:
    """(row name, one record per seed) for every variant@step, then each variant's last-N average.

    The average row first averages each seed over its last ``average_last`` scored checkpoints
    (late FID is noisy from checkpoint to checkpoint), then spreads those over seeds.
    """
    rows = []
    last = bench.schedule()[-bench.average_last:]
    for name in bench.variants:
        records = [r for r in results.get(name, []) if r["seed"] in bench.seeds]
        for step in bench.schedule():
            rows.append((f"{name}@{step}", [r for r in records if r["step"] == step]))
        averaged = []
        for seed in bench.seeds:
            mine = [r for r in records if r["seed"] == seed and r["step"] in last]
            if mine:
                averaged.append({k: statistics.mean(r[k] for r in mine) if all(r.get(k) is not None for r in mine)
                                 else None for k, _ in COLUMNS})
        rows.append((f"{name}@last{len(last)}", averaged))
    return rows


def format_table(bench: BenchConfig, results: dict[str, list[dict]], floors: dict) -> str:
    """The results as markdown in the paper's layout (rows = model@step, metrics across), mean ± std over seeds."""
    s = bench.sampling
    tok, noise = floors["tokenizer_floor"], floors["noise_floor"]
    lines = [
        "# Convergence benchmark", "",
        f"{len(bench.seeds)} seed(s) {bench.seeds}, {bench.steps} steps, {bench.num_samples} samples per checkpoint "
        f"({bench.class_sampling} labels, sample seed {bench.sample_seed}), cfg scale {s.cfg_scale}, "
        f"temperature {s.temperature}, top-k {s.top_k}, top-p {s.top_p}, EMA weights.",
        f"Fashion-MNIST evaluator features against {floors['num_images']} real test images "
        f"({floors['reference_codes']}); \"vs recon\" = against the tokenizer's reconstructions of them.",
        f"Tokenizer floor (reconstructions vs real, {tok['num_images']} images): FID {tok['fid']:.4g}, "
        f"Pre {tok['precision']:.3g}, Rec {tok['recall']:.3g}, IS {tok['inception_score']:.4g}, "
        f"class acc {tok['class_accuracy']:.3g}. Evaluator noise floor (half vs half of the real images, "
        f"{noise['half_size']} each): FID {noise['fid']:.4g}.", "",
        "| run | " + " | ".join(label for _, label in COLUMNS) + " | seeds |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for name, records in summary_rows(bench, results):
        lines.append(f"| {name} | " + " | ".join(_cell(records, k) for k, _ in COLUMNS) + f" | {len(records)} |")
    paired = paired_rows(bench, results)
    if paired:
        reference = bench.reference_variant()
        lines += ["", f"Paired by seed against {reference} (same initialisation, data order and sampling noise, so "
                  "seed-to-seed variation largely cancels): mean ± std of the per-seed differences, and in how "
                  "many seeds the variant was better.", "",
                  "| run | " + " | ".join(f"Δ {label}" for _, label in PAIRED) + " | ΔFID % |",
                  "|---|" + "---|" * (len(PAIRED) + 1)]
        for name, diffs, relative in paired:
            cells = [f"{_mean_std(diffs[k])} ({sum(map(_BETTER[k], diffs[k]))}/{len(diffs[k])})"
                     if diffs[k] else "–" for k, _ in PAIRED]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_mean_std(relative)} |")
    return "\n".join(lines) + "\n"


PAIRED = (("fid", "FID"), ("fid_recon", "FID vs recon"), ("class_accuracy", "class acc"), ("val_nll", "val NLL"))
_BETTER = {"fid": lambda d: d < 0, "fid_recon": lambda d: d < 0, "class_accuracy": lambda d: d > 0,
           "val_nll": lambda d: d < 0}


def paired_rows(
    bench: BenchConfig, results: dict[str, list[dict]]
) -> list[tuple[str, dict[str, list[float]], list[float]]]:
    """(variant@step, metric -> per-seed differences to the reference variant, per-seed relative FID change in %)
    for every other variant and scored step, over the seeds both have."""
    reference = bench.reference_variant()
    ref = {(r["seed"], r["step"]): r for r in results.get(reference, []) if r["seed"] in bench.seeds}
    rows = []
    for name in bench.variants:
        if name == reference:
            continue
        for step in bench.schedule():
            pairs = [(r, ref[(r["seed"], step)]) for r in results.get(name, [])
                     if r["step"] == step and (r["seed"], step) in ref]
            if not pairs:
                continue
            diffs = {k: [r[k] - b[k] for r, b in pairs if r.get(k) is not None and b.get(k) is not None]
                     for k, _ in PAIRED}
            relative = [100 * (r["fid"] / b["fid"] - 1) for r, b in pairs]
            rows.append((f"{name}@{step}", diffs, relative))
    return rows


def plot_fid(bench: BenchConfig, results: dict[str, list[dict]], floors: dict, path: Path) -> None:
    """FID against steps: one line per variant (mean over seeds), shaded from the lowest seed to the highest."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for name in bench.variants:
        steps, means, lows, highs = [], [], [], []
        for step in bench.schedule():
            values = [r["fid"] for r in results.get(name, []) if r["step"] == step and r["seed"] in bench.seeds]
            if values:
                steps.append(step)
                means.append(statistics.mean(values))
                lows.append(min(values))
                highs.append(max(values))
        line, = ax.plot(steps, means, marker="o", label=name)
        ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2)
    ax.axhline(floors["tokenizer_floor"]["fid"], color="grey", linestyle="--", label="tokenizer floor")
    ax.set_xlabel("training step")
    ax.set_ylabel("FID (Fashion-MNIST evaluator) ↓")
    ax.set_title(f"{bench.num_samples} samples, {len(bench.seeds)} seed(s): mean, min–max shaded")
    ax.legend()
    fig.savefig(path, dpi=120)
