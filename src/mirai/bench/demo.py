"""The end-to-end demo (``mirai demo``): Fashion-MNIST on a CPU, from raw images to scored samples.

1. tokenize the training and test sets with the committed 8x8 tokenizer (once);
2. train each variant (default: the baseline and Mirai-I) from the shipped configs;
3. sample from each EMA model and score the samples with the committed Fashion-MNIST
   evaluator (FID, precision/recall, class accuracy, beside the tokenizer and noise floors).

Steps 2 and 3 are a one-seed convergence bench (``mirai.bench``) scored at the final step, with
the runs in ``OUT/VARIANT``. Every stage is skipped when its output exists, and an interrupted
training run resumes, so running the demo again finishes what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mirai import checkpoint
from mirai.bench.config import BenchConfig, Run, plan_runs
from mirai.data.options import resolve_device
from mirai.bench.report import format_table
from mirai.bench.run import plan_share, train_and_score
from mirai.bench.store import read_results, write_json
from mirai.config import check_distinct_overrides, from_dict, keys_overlap, parse_override
from mirai.data.codes import CodeStore, extract
from mirai.data.options import non_negative_int, positive_int
from mirai.data.views import ViewSpec
from mirai.errors import ConfigError, DataError, refuse_under_file
from mirai.models import VQModel

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "fashion"
TOKENIZER = ASSETS / "vq8"
# Laid over the fashion configs for the demo's short run: 400 steps learn more with a larger LR
# and a shorter warm-up (baseline val NLL 3.61 against 3.86 with the configs' 1e-3 / 100 steps).
SHORT_RUN = ("optim.lr=2e-3", "optim.warmup_steps=40")
# Training keys the demo sets from its own flags (one device, seed and length for every stage) or
# from the code stores it tokenizes: an override of them would train on other terms than it scores.
_BENCH = "to train on other code stores, use mirai bench convergence (docs/configuration.md)"
DEMO_KEYS = {"steps": "use --steps", "epochs": "use --steps", "seed": "use --seed", "device": "use --device",
             "run_dir": "use --out", "data": _BENCH, "data.codes": _BENCH, "data.val_codes": _BENCH,
             "save_every": "it saves at the last step", "eval_every": "it validates at the last step",
             "keep_last": "it keeps the last checkpoint"}
TITLE = "Fashion-MNIST demo"


@dataclass
class DemoSettings:
    """What `mirai demo` / `make demo` runs: the variants (configs/fashion/*.yaml), their length, samples and seed."""
    out: Path = Path("runs/demo")
    variants: tuple[str, ...] = ("baseline", "mirai_i")  # names of configs/fashion/*.yaml
    steps: int = 400
    num_samples: int = 1000
    seed: int = 0
    device: str = "auto"
    # The first K training images of each class: 400 steps of 64 see 25 600 images, so tokenizing
    # all 60 000 would only cost time. None: all of them.
    per_class: int | None = 3000
    overrides: tuple[str, ...] = ()  # training-config overrides for every variant, e.g. optim.batch_size=32

    def validate(self) -> None:
        """Refuse (``ConfigError``) settings no demo can run with, and overrides that set a key twice or
        one the demo sets itself (``DEMO_KEYS``); the variants' configs under the overrides are checked
        by ``demo_bench``."""
        if not self.variants or any(not name for name in self.variants):
            raise ConfigError(f"variants {list(self.variants)}: name at least one configs/fashion config, "
                              "e.g. baseline,mirai_i")
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"variants {list(self.variants)} name one config twice; list each once")
        positive_int(self.steps, "steps (--steps)")
        if positive_int(self.num_samples, "num_samples (--num-samples)") < 2:
            raise ConfigError(f"num_samples (--num-samples) must be at least 2 to score samples, "
                              f"got {self.num_samples}")
        if self.per_class is not None:
            positive_int(self.per_class, "per_class (--per-class; 0 on the command line means all images)")
        non_negative_int(self.seed, "seed (--seed)")
        check_distinct_overrides(self.overrides, "overrides")
        for text in self.overrides:
            key = ".".join(parse_override(text)[0])
            if key in DEMO_KEYS:
                raise ConfigError(f"override {text!r}: the demo sets {key} itself; {DEMO_KEYS[key]}")
        refuse_under_file(self.out, "out (--out)", folder="directory for the demo")


def codes_paths(settings: DemoSettings) -> dict[str, Path]:
    """Where the demo keeps its tokenized training subset and test set."""
    train = "train" if settings.per_class is None else f"train_{settings.per_class}_per_class"
    return {"train": settings.out / "codes" / train, "test": settings.out / "codes" / "test"}


def ensure_codes(split: str, out: Path, device: str, per_class: int | None = None) -> Path:
    """The Fashion-MNIST ``split`` (optionally the first ``per_class`` images of each class)
    tokenized by the committed tokenizer (image and its mirror) into the code store ``out``."""
    from mirai.data.fashion_mnist import FashionMNIST

    try:
        CodeStore.open(out)
        return out
    except DataError:
        pass  # missing or incomplete: (re)extract
    vq = checkpoint.load(TOKENIZER, VQModel)
    extract(vq, FashionMNIST(split, per_class=per_class), ViewSpec("flip", 32), out, tokenizer_path=TOKENIZER,
            batch_size=256, device=device, overwrite=True)  # a damaged store of the demo's own is replaced
    return out


def _layered(own: list[str], user: tuple[str, ...]) -> list[str]:
    """The demo's own overrides, less those whose key the user's set (or a section holding it), then the user's."""
    user_keys = [parse_override(text)[0] for text in user]
    kept = [text for text in own if not any(keys_overlap(parse_override(text)[0], u) for u in user_keys)]
    return kept + list(user)


def demo_bench(settings: DemoSettings, codes: dict[str, Path]) -> BenchConfig:
    """The demo as a bench: one seed, scored at the last step against the ``codes["test"]`` store,
    runs in ``OUT/VARIANT``, samples kept. It samples with the variants' own sampling settings,
    which must agree (``ConfigError`` otherwise: the bench compares variants on equal terms)."""
    bench = from_dict(BenchConfig, {
        "out_dir": str(settings.out), "runs_dir": str(settings.out), "run_layout": "{variant}",
        "variants": {name: {"config": f"fashion/{name}.yaml"} for name in settings.variants},
        "train_overrides": _layered([f"data.codes={codes['train']}", f"data.val_codes={codes['test']}",
                                     f"device={settings.device}", *SHORT_RUN], settings.overrides),
        "seeds": [settings.seed], "steps": settings.steps, "num_samples": settings.num_samples,
        "sample_seed": settings.seed, "reference_codes": str(codes["test"]), "device": settings.device,
        "eval_batch_size": 500, "average_last": 1, "keep_samples": True,
    })
    runs = plan_runs(bench)
    differ = [run.variant for run in runs if run.cfg.sampling != runs[0].cfg.sampling]
    if differ:
        raise ConfigError(f"{', '.join(differ)} sample(s) with other settings than {runs[0].variant}; "
                          "the demo scores every variant with the same ones")
    bench.sampling = runs[0].cfg.sampling
    return bench


def write_evaluation(run: Run, record: dict, floors: dict) -> dict:
    """``OUT/VARIANT/evaluation.json``: the final checkpoint's scores (``record``) beside the floors.

    Rewritten only when its content changes, so a rerun with nothing to do leaves it alone."""
    report = {
        "checkpoint": str(run.final_checkpoint), "num_samples": record["num_samples"],
        "reference": floors["reference_codes"], "num_reference": floors["num_images"],
        "evaluator": "fashion", "network": floors["evaluator"],
        "metrics": {k: v for k, v in record.items() if k not in ("seed", "step", "val_nll", "num_samples")},
        "noise_floor": floors["noise_floor"], "tokenizer_floor": floors["tokenizer_floor"],
        "val_nll_ema": record["val_nll"],
        "grid": str(run.run_dir / "samples" / "final.png"),  # drawn by the trainer from the EMA weights
    }
    path = run.run_dir / "evaluation.json"
    if not path.is_file() or json.loads(path.read_text()) != report:
        write_json(path, report)
    return report


def run_demo(settings: DemoSettings) -> dict[str, dict]:
    """Run (or finish) every stage into ``settings.out``; print and save (``results.md``) the table.

    Returns variant -> its ``evaluation.json`` report. The settings, every variant's training
    config and the overrides are checked (``ConfigError``) before anything is written."""
    settings.validate()
    codes = codes_paths(settings)
    bench = demo_bench(settings, codes)
    plan_share(bench)  # runs already in OUT with other settings are refused before minutes of tokenizing
    device = resolve_device(settings.device)
    settings.out.mkdir(parents=True, exist_ok=True)
    print(f"[1/3] tokenizing Fashion-MNIST with {TOKENIZER.name} (8x8 tokens, 512 codes)")
    ensure_codes("train", codes["train"], device, settings.per_class)
    ensure_codes("test", codes["test"], device)
    print(f"[2/3] training {', '.join(settings.variants)} ({settings.steps} steps each), "
          f"[3/3] sampling and scoring {settings.num_samples} EMA samples of each")
    share = train_and_score(bench)
    results = read_results(settings.out)
    reports = {}
    for run in share.runs:
        final = next(r for r in results[run.variant] if (r["seed"], r["step"]) == (run.seed, bench.steps))
        reports[run.variant] = write_evaluation(run, final, share.floors)
    table = format_table(bench, results, share.floors, title=TITLE)
    (settings.out / "results.md").write_text(table)
    print(table)
    for name, report in reports.items():
        print(f"samples of {name}: {report['grid']}")
    return reports
