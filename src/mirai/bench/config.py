"""The bench config and its plan: which (variant, seed) runs to train, with which training configs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence


from mirai.config import apply_overrides, check_distinct_overrides, from_dict, load_config, parse_override, read_yaml
from mirai.errors import ConfigError, refuse_under_file
from mirai.sampling.checks import SEED_LIMIT, check_int
from mirai.sampling.pipeline import SampleSettings
from mirai.training.config import TrainConfig

# Training keys the bench sets itself: equal budgets and a shared checkpoint schedule are the point.
BENCH_KEYS = ("run_dir", "seed", "steps", "epochs", "save_every", "eval_every", "keep_last")


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
    # the folder of each run under runs_dir: '{variant}' suits a one-seed bench (the demo), or runs
    # trained elsewhere in that layout
    run_layout: str = "{variant}/seed_{seed}"
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
    # Decode through torch.compile (static KV cache): in fp32 the same tokens as eager (tests/test_compile.py),
    # 1.10-1.38x the tokens/s on a free CPU core after a one-off compile per batch size (benchmarks/RESULTS.md 6);
    # in bf16/fp16 other draws (check_same_scoring keeps the two apart).
    compile_sampling: bool = False
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
        """Raise ``ConfigError`` naming the first bad setting (called by ``from_dict``/``load_config``)."""
        for name in ("out_dir", "runs_dir"):  # a file there would only be met once the first run starts
            if getattr(self, name):
                # runs_dir may be another bench's finished runs, only read (rescored, reported): not probed
                refuse_under_file(Path(getattr(self, name)), name, folder="bench output directory",
                                  probe=name == "out_dir")
        if not self.variants:
            raise ConfigError("variants is empty: name at least one, e.g. variants: {baseline: []}")
        for name in self.variants:
            if not name or "/" in name or name.startswith("."):
                raise ConfigError(f"variant name {name!r} must be a plain folder name")
        self.variant_specs()
        fault = ("is empty" if not self.seeds else "repeats a seed" if len(set(self.seeds)) != len(self.seeds)
                 else "has a negative seed" if min(self.seeds) < 0 else None)
        if fault:
            raise ConfigError(f"seeds {fault} ({self.seeds}): give a non-empty list of non-negative seeds without "
                              "repeats, e.g. seeds=[0,1,2]")
        self._check_run_layout()
        if self.steps < 1:
            raise ConfigError("steps must be positive: every variant trains for the same number of steps")
        bad = [s for s in self.eval_at if not 1 <= s <= self.steps]
        if bad:
            raise ConfigError(f"eval_at {bad} {'lies' if len(bad) == 1 else 'lie'} outside 1..steps={self.steps}: "
                              "score checkpoints within the run, or raise steps")
        if self.num_samples < 2:
            raise ConfigError(f"num_samples must be at least 2 (FID needs two samples), got {self.num_samples}")
        for name in ("sample_batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.reference_codes:
            raise ConfigError("reference_codes is empty: give the held-out code store (e.g. the test split "
                              "from `mirai extract --split test`)")
        if self.average_last < 1:
            raise ConfigError("average_last must be at least 1")
        check_int("sample_seed", self.sample_seed, 0, SEED_LIMIT - 1)  # a sampling seed, refused before training
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device {self.device!r}: choose auto, cpu or cuda")
        if self.tsne_layer is not None and self.tsne_layer < 1:
            raise ConfigError(f"tsne_layer is a 1-based GPT block, got {self.tsne_layer}")

    def _check_run_layout(self) -> None:
        try:
            folders = {self.run_layout.format(variant=name, seed=seed) for name in self.variants for seed in self.seeds}
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"run_layout {self.run_layout!r} may use only {{variant}} and {{seed}} ({err})") from None
        if len(folders) < len(self.variants) * len(self.seeds):
            raise ConfigError(f"run_layout {self.run_layout!r} puts several runs in one folder: use {{variant}}, "
                              "and {seed} when there is more than one seed")
        if any(Path(folder).is_absolute() or ".." in Path(folder).parts for folder in folders):
            raise ConfigError(f"run_layout {self.run_layout!r} must stay inside runs_dir")

    def variant_specs(self) -> dict[str, Variant]:
        """Every variant as a ``Variant``; raises ``ConfigError`` for a malformed entry."""
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
        """The folder that holds every run (``runs_dir``, default ``OUT/runs``)."""
        return Path(self.runs_dir) if self.runs_dir else Path(self.out_dir) / "runs"

    def run_dir(self, variant: str, seed: int) -> Path:
        """The training run of ``variant`` with ``seed`` (``run_layout`` under ``runs_root()``)."""
        return self.runs_root() / self.run_layout.format(variant=variant, seed=seed)

    def schedule(self) -> list[int]:
        """The scored steps: ``eval_at`` plus the final step, ascending."""
        return sorted(set(self.eval_at) | {self.steps})

    def save_every(self) -> int:
        """Steps between a run's checkpoints (and validations): the gcd of the scored steps."""
        return math.gcd(*self.schedule())


@dataclass
class Run:
    """One (variant, seed) training run of a bench, with the training config the bench resolved for it."""

    variant: str
    seed: int
    cfg: TrainConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    def checkpoint(self, step: int) -> Path:
        """The checkpoint directory the trainer writes at ``step``."""
        return self.run_dir / "checkpoints" / f"step_{step:07d}"

    @property
    def final_checkpoint(self) -> Path:
        return self.checkpoint(self.cfg.steps)


def load_bench(path: str | Path, overrides: Sequence[str] = ()) -> BenchConfig:
    """Read a bench YAML with command-line ``key=value`` overrides of the bench config (``ConfigError`` if bad).

    An override of a training key that the bench does not have (``lr=...``, ``model.name=...``) raises
    ``ConfigError`` naming the bench's ``train_overrides`` (with the list it holds now) as the way to set it
    for every variant, and one of a key the bench sets per run (``seed=...``) names the bench's own way,
    instead of a bare "unknown key". ``device``, ``sampling`` and ``steps`` are keys of both: here they are
    the bench's (scoring device and sampling; every run's steps)."""
    overrides = list(overrides)
    roots = [(text, parse_override(text)[0][0]) for text in overrides]
    own = set(BenchConfig.__dataclass_fields__)
    per_run = [text for text, root in roots if root in BENCH_KEYS and root not in own]
    if per_run:
        raise ConfigError(
            f"{', '.join(map(repr, per_run))}: the bench sets {', '.join(BENCH_KEYS)} of every run itself; choose "
            "seeds with seeds=[...] or --seed, the budget with steps=..., the checkpoints with eval_at=[...], "
            "the runs' folder with out_dir=... or runs_dir=...")
    settable = set(TrainConfig.__dataclass_fields__) - own - set(BENCH_KEYS)
    training = [text for text, root in roots if root in settable]
    if training:
        listed = load_config(BenchConfig, path, [t for t in overrides if t not in training]).train_overrides
        raise ConfigError(
            f"{', '.join(map(repr, training))} set{'s' if len(training) == 1 else ''} the training config, and "
            f"command-line overrides set the bench config ({path}); to change every variant's training, add "
            f"{'it' if len(training) == 1 else 'them'} to the bench's train_overrides, which hold {listed} now: "
            "in the YAML, or on the command line as 'train_overrides=[...]' with those entries too (an override "
            "replaces the whole list)")
    return load_config(BenchConfig, path, overrides)


def _check_overrides(overrides: list[str], where: str) -> None:
    check_distinct_overrides(overrides, where)
    for text in overrides:
        key = parse_override(text)[0]
        if key[0] in BENCH_KEYS:
            raise ConfigError(f"{where}: override {text!r} sets {key[0]!r}, which the bench controls so that "
                              f"every run has the same budget and checkpoints; set it in the bench config")


def plan_runs(bench: BenchConfig) -> list[Run]:
    """Every (variant, seed) run with its resolved training config; all configs are checked before any work.

    Raises ``ConfigError`` naming the variant whose config is bad, or that sets a key the bench controls."""
    _check_overrides(bench.train_overrides, "train_overrides")
    every = bench.save_every()  # the trainer saves (and measures val NLL) every `every` steps
    runs = []
    for name, spec in bench.variant_specs().items():
        _check_overrides(spec.overrides, f"variant {name!r}")
        path = spec.config or bench.train_config
        try:
            base = apply_overrides(read_yaml(path), [*bench.train_overrides, *spec.overrides])
        except ConfigError as err:
            raise ConfigError(f"variant {name!r}: {err}") from None
        for seed in bench.seeds:
            data = dict(base, run_dir=str(bench.run_dir(name, seed)), seed=seed,
                        steps=bench.steps, epochs=0.0, save_every=every, eval_every=every,
                        keep_last=bench.steps // every)
            try:
                cfg = from_dict(TrainConfig, data)
            except ConfigError as err:
                raise ConfigError(f"variant {name!r} (from {path}): {err}") from None
            runs.append(Run(name, seed, cfg))
    # Seed-major: a bench stopped early still compares every variant on the seeds it finished.
    return sorted(runs, key=lambda run: bench.seeds.index(run.seed))


def select_share(runs: list[Run], variants: list[str] | None, seeds: list[int] | None) -> list[Run]:
    """The runs of one process's share of the bench; None selects every variant (or seed).

    Raises ``ConfigError`` for a variant or seed the bench does not have."""
    known_variants, known_seeds = {r.variant for r in runs}, {r.seed for r in runs}
    for kind, chosen, known in (("variant", variants, known_variants), ("seed", seeds, known_seeds)):
        unknown = sorted(set(chosen or []) - known, key=str)
        if unknown:
            negative = kind == "seed" and any(not isinstance(u, int) or u < 0 for u in unknown)
            hint = (f"; to add a seed, extend the list too: 'seeds=[{', '.join(map(str, sorted(known | set(unknown))))}]'"
                    if kind == "seed" and not negative else "; seeds are integers from 0" if negative else "")
            raise ConfigError(f"{kind} {', '.join(map(str, unknown))} is not in the bench config "
                              f"(it has {', '.join(map(str, sorted(known, key=str)))}){hint}")
    return [r for r in runs if (variants is None or r.variant in variants) and (seeds is None or r.seed in seeds)]


def first_seed_runs(bench: BenchConfig, runs: list[Run]) -> list[Run]:
    """The runs of the bench's first seed: the ones drawn in the sample grids and t-SNE maps."""
    return [run for run in runs if run.seed == bench.seeds[0]]
