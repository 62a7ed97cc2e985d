"""``mirai train``: train a GPT (baseline or with foresight) from a YAML config plus overrides."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a GPT on a code store (one process, or many under torchrun)",
        description="Example: mirai train --config configs/fashion/baseline.yaml steps=500 optim.lr=3e-4. "
        "Overrides are dotted keys of the config (see mirai.training.config.TrainConfig). Under torchrun "
        "each process joins the DDP group (gloo on CPU, NCCL on GPU); optim.batch_size is the global batch. "
        "Prints a banner (with warnings about the config), a line every log_every steps and a closing summary, "
        "all also appended to RUN_DIR/log.txt; the last line printed is a JSON summary for scripts. The progress "
        "bar is drawn only on a terminal.",
    )
    p.add_argument("--config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-4 foresight.source=ema")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue the run in run_dir from its latest checkpoint (or from CHECKPOINT)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def _resume_and_config(args: argparse.Namespace) -> tuple[str | bool | None, str | None, list[str]]:
    """(resume, config path, overrides) as meant.

    ``--resume`` takes an optional checkpoint, so in ``--resume steps=900`` argparse reads the override
    as one; a ``key=value`` that is no file is taken back as an override. ``--resume`` without
    ``--config`` continues with the run's own ``RUN_DIR/config.yaml`` (``run_dir`` from the overrides,
    else from a ``RUN_DIR/checkpoints/NAME`` given to ``--resume``, whose run's config also starts a branch into a
    new ``run_dir``).
    """
    from pathlib import Path

    from mirai.config import parse_override
    from mirai.errors import ConfigError

    resume, config, overrides = args.resume, args.config, list(args.overrides)
    if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
        resume, overrides = True, [*overrides, resume]
    if resume is not None and config is None:
        run_dirs = [str(value) for key, value in map(parse_override, overrides) if key == ["run_dir"]]
        # RUN/checkpoints/step_N names its run
        source = Path(resume).parent.parent if isinstance(resume, str) and Path(resume).parent.name == "checkpoints" \
            else None
        if not run_dirs and source is not None:
            run_dirs = [str(source)]
            overrides.append(f"run_dir={run_dirs[0]}")
        saved = Path(run_dirs[-1]) / "config.yaml" if run_dirs else None
        if source is not None and Path(run_dirs[-1]).resolve() != source.resolve():  # a branch into another run_dir
            if (Path(run_dirs[-1]) / "checkpoints").is_dir():
                raise ConfigError(f"run_dir {run_dirs[-1]} already holds another run: branch from {resume} into a "
                                  "new run_dir")
            # The config the checkpoint was trained with, as it saved it (the run's own may have changed since).
            kept = [p for p in (Path(resume) / "train_config.yaml", source / "config.yaml") if p.is_file()]
            saved = kept[0] if kept else saved
        if saved is None or not saved.is_file():
            where = f"{saved} does not exist" if saved else "no run_dir=DIR was given"
            raise ConfigError(f"--resume without --config continues a run with its own config, but {where}: "
                              "pass run_dir=RUN_DIR of a run that has started, or --config FILE")
        config = str(saved)
    return resume, config, overrides


def run(args: argparse.Namespace) -> int:
    import yaml

    from mirai.config import load_config, read_yaml, to_dict
    from mirai.errors import ConfigError
    from mirai.training.config import TrainConfig
    from mirai.training.distributed import is_main, shutdown
    from mirai.training.trainer import train

    resume, config, overrides = _resume_and_config(args)
    if config is None and not overrides:
        raise ConfigError("no config given: pass --config FILE (e.g. --config configs/fashion/baseline.yaml) "
                          "and any key=value overrides")
    if config is not None and {"variants", "seeds"} <= set(read_yaml(config) or {}):  # a bench's own keys
        raise ConfigError(f"{config} is a bench config (variants, seeds): run it with mirai bench convergence "
                          f"--config {config}")
    cfg = load_config(TrainConfig, config, overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        for warning in cfg.foresight.warnings():  # on stderr, so the printed YAML stays a valid config
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    try:
        result = train(cfg, resume=resume)
        if is_main():
            print(result.to_json())
    finally:
        shutdown()
    return 0
