"""``mirai sample``: class-conditional images from a GPT + VQ pair, as a PNG grid and an ADM ``.npz``."""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
from pathlib import Path
from typing import Iterator


def _float_pair(text: str) -> tuple[float, float]:
    try:
        start, end = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START,END fractions such as 0,0.5, got {text!r}") from None
    return start, end


def add_parser(subparsers) -> None:
    from mirai.cli.flags import add_flag

    p = subparsers.add_parser(
        "sample",
        help="sample images from a GPT checkpoint (grid PNG + ADM .npz)",
        description="Grid mode (default): --per-class images for each of --classes (default: all), one row per "
        "class, written to OUT/samples.npz and as a figure (class names, settings in the title) to "
        "OUT/grid.png and .pdf. Evaluation mode (--num-samples N): N images with "
        "balanced or uniform class labels, resumable, split across processes under torchrun.",
    )
    p.add_argument("--gpt", required=True, help="GPT checkpoint: Mirai folder, LlamaGen/PAR .pt, hf://OWNER/REPO[/FILE] "
                   "or a released name such as llamagen:c2i_B_256 (docs/pretrained.md)")
    add_flag(p, "--tokenizer", ("--vq",), required=True,
             help="VQ tokenizer: Mirai folder, asset name (fashion/vq8), LlamaGen .pt, hf://... or "
             "llamagen:vq_ds16_c2i")
    p.add_argument("--out", required=True, help="output directory: new, empty or a samples folder (e.g. "
                   "RUN_DIR/samples); locked while sampling; a rerun with the same checkpoints and settings resumes "
                   "or reuses it, anything else is refused, as is a folder holding other files")
    p.add_argument("--classes", default="all", help="comma-separated class ids, or 'all' (default)")
    p.add_argument("--per-class", type=int, help="grid mode: images per class (default 8)")
    p.add_argument("--num-samples", type=int, help="evaluation mode: total number of samples (at most 1e6), labels "
                   "drawn from every class (so not with --classes)")
    p.add_argument("--class-sampling", choices=["balanced", "uniform"],
                   help="evaluation mode: equal counts per class (default), or uniformly drawn labels as in LlamaGen")
    p.add_argument("--cfg-scale", type=float, default=2.0, help="classifier-free guidance scale (default 2.0, "
                   "LlamaGen-B's; 1 = off)")
    p.add_argument("--guidance-interval", type=_float_pair, help="START,END: apply guidance only on this "
                   "fraction of the tokens, e.g. 0,0.5 (default: all)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1; 0 = greedy)")
    p.add_argument("--top-k", type=int, help="draw only from the k most likely tokens, 1..vocabulary size "
                   "(default: off)")
    p.add_argument("--top-p", type=float, help="draw only from the smallest set of tokens holding this probability, "
                   "in (0, 1] (default: off; 1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed in [0, 2**32) (default 0): the same seed, "
                   "checkpoint and settings draw the same images")
    p.add_argument("--batch-size", type=int, default=64, help="images decoded at once (default 64; guidance "
                   "doubles the rows)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="fp32 (default), or bf16/fp16 autocast")
    p.add_argument("--compile", action="store_true", help="decode through torch.compile: one graph for every pass "
                   "of a batch size, compiled on the first batch (and once more for a smaller last batch); worth it "
                   "for many batches; in fp32 the same draws, not recorded; in bf16/fp16 other draws, recorded")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--model", help="GPT config name for a LlamaGen .pt (default: inferred from depth and width)")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--grid-size", type=int, help="token grid of a LlamaGen/PAR .pt (16 for 256 px, 24 for 384 px; "
                      "default: the released-file table's; required for other .pt files)")
    grid.add_argument("--image-size", type=int, help="or the image size of a LlamaGen/PAR .pt (grid = image size / "
                      "the tokenizer's downsampling)")
    p.add_argument("--image-size-eval", type=int, metavar="N", help="resize the decoded images to NxN (bicubic, as "
                   "LlamaGen's sample_c2i --image-size-eval), e.g. 256 for 384-px models scored at 256")
    p.set_defaults(func=run)


def _classes(text: str) -> list[int] | None:
    """``--classes``: None for 'all', else the comma-separated ids (their range is checked with the model)."""
    from mirai.errors import ConfigError

    if text.strip() == "all":
        return None
    try:
        ids = [int(c) for c in text.split(",")]
    except ValueError:
        raise ConfigError(f"--classes {text!r}: give comma-separated class ids such as 0,3,7, or 'all'") from None
    repeated = sorted({c for c in ids if ids.count(c) > 1})
    if repeated:  # a typo, most likely: the grid would show those rows twice
        raise ConfigError(f"--classes {text!r} repeats {', '.join(map(str, repeated))}: give each class once")
    return ids


# The sampling API's names for the values these flags give: its refusals (shared with Python callers and
# the bench's YAML) and a sample record's differences are reworded to name the flag the user typed.
FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "cfg_scale", "temperature", "top_k", "top_p", "guidance_interval", "precision", "image_size_eval", "seed",
    "batch_size", "num_samples")} | {"compiled_decoding": "--compile"}
_UNSET = re.compile(r"(?<=: )None(?= -> )|(?<= -> )None\b")  # a flag left out, in a record's "--top-k: None -> 20"
_API_NAME = re.compile(r"(?<![\w./-])(?:config\.|settings\.)?(" + "|".join(FLAGS) + r")\b(?![/.]\w)")


@contextlib.contextmanager
def _as_flags(grid_mode: bool = False) -> Iterator[None]:
    """Re-raise a ``ConfigError`` whose message names sampling values by their API names (``top_p``,
    ``config.temperature``, a record's ``settings.top_p``) with the flags instead (``--top-p``). In grid
    mode the number of samples is the classes times --per-class, not --num-samples."""
    from mirai.errors import ConfigError

    flags = {**FLAGS, "num_samples": "number of images (--classes x --per-class)"} if grid_mode else FLAGS
    try:
        yield
    except ConfigError as err:
        message = _API_NAME.sub(lambda m: flags[m.group(1)], str(err))
        raise ConfigError(_UNSET.sub("off", message)) from None


def _check_cli(args: argparse.Namespace) -> None:
    """The values only the command line has (the rest are checked by the sampling API); fills in the
    defaults of the mode chosen (--per-class 8, --class-sampling balanced), left None so that a flag of the other
    mode can be told from its default."""
    from mirai.errors import ConfigError

    # Each mode's own flags: one given to the other mode would be ignored in silence.
    if args.num_samples is not None:
        given = [flag for flag, value in (("--classes", args.classes.strip() != "all"),
                                          ("--per-class", args.per_class is not None)) if value]
        if given:
            raise ConfigError(f"{' and '.join(given)} shape a grid (one row per class); --num-samples draws its "
                              "labels from every class (--class-sampling): leave out one or the other")
        args.class_sampling = args.class_sampling or "balanced"
    elif args.class_sampling is not None:
        raise ConfigError("--class-sampling sets how --num-samples draws its labels; a grid (no --num-samples) "
                          "takes --per-class images of each of --classes: leave it out, or give --num-samples")
    else:
        args.per_class = 8 if args.per_class is None else args.per_class
        if args.per_class < 1:
            raise ConfigError(f"--per-class must be at least 1, got {args.per_class}")
    if args.grid_size is not None and args.grid_size < 1:
        raise ConfigError(f"--grid-size must be at least 1 (16 for 256 px, 24 for 384 px), got {args.grid_size}")
    for flag, value in (("--image-size", args.image_size), ("--image-size-eval", args.image_size_eval)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be a positive number of pixels, got {value}")
    _check_out(Path(args.out))
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda, but no CUDA device is available: use --device cpu or auto")


# What ``mirai sample`` writes in --out, what ``mirai evaluate`` writes beside the samples, the grids the
# trainer draws in RUN_DIR/samples (where the docs put evaluation samples too) and hidden names (the lock,
# the temporary files of atomic writes, a file browser's .DS_Store).
OUTPUT_NAMES = re.compile(r"^(\..*|grid\.(png|pdf)|samples\.(npz|json|metrics\.json)|samples\.npz\.(parts|tmp\.npz)"
                          r"|(final|step_\d{7,})\.(png|pdf)|Thumbs\.db)$")


def _check_out(out: Path) -> None:
    """Refuse (``ConfigError``) an --out that cannot be a folder, or a folder that holds anything but sample
    outputs (a checkpoint folder, a home folder): the grid and samples would be mixed into it. Before the
    checkpoints are loaded."""
    from mirai.errors import ConfigError, refuse_under_file

    refuse_under_file(out, "--out")
    try:
        foreign = sorted(p.name for p in out.iterdir() if not OUTPUT_NAMES.match(p.name)) if out.is_dir() else []
    except OSError as err:  # a folder this user may not read
        raise ConfigError(f"--out {out} cannot be read ({err.strerror}); choose another folder") from None
    if foreign:
        names = [name if name.isprintable() else repr(name) for name in foreign]  # the error stays one line
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise ConfigError(f"--out {out} holds other files or folders ({shown}); sample into a new or empty folder, or a "
                          "samples folder (one mirai sample or a training run wrote)")


def _grid_size(args: argparse.Namespace, vq) -> int | None:
    """The GPT's token grid from --grid-size or --image-size (None: the table of released files decides,
    and a .pt it does not know is refused); says so when the table supplies it."""
    from mirai.errors import ConfigError
    from mirai.hub.resolve import released_file

    if args.image_size is not None:
        factor = vq.downsample_factor
        if args.image_size % factor:
            raise ConfigError(f"--image-size {args.image_size} is not a multiple of the tokenizer's downsampling "
                              f"({factor}); give e.g. {factor * 16} or {factor * 24}, or --grid-size")
        return args.image_size // factor
    entry = released_file(args.gpt)
    if args.grid_size is None and entry is not None and entry.kind == "gpt":
        print(entry.describe())
    return args.grid_size


@contextlib.contextmanager
def _hold(out: Path, dist) -> Iterator[None]:
    """Lock ``out`` for this job (rank 0 holds the lock; every rank learns whether it got it)."""
    from mirai.errors import BusyError
    from mirai.locks import exclusive_dir

    with contextlib.ExitStack() as stack:
        error = None
        if dist.is_main:
            try:
                stack.enter_context(exclusive_dir(out, "--out"))
            except BusyError as err:
                error = str(err)
        if dist.enabled:
            import torch.distributed

            box = [error]
            torch.distributed.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise BusyError(error)
        yield


def _stop(signum: int, frame) -> None:
    from mirai.errors import Interrupted

    raise Interrupted(signum)


def _announce(gpt, parts: Path, n_batches: int, n_done: int) -> None:
    """Say how the batches are decoded and, on a resume, how many an earlier run finished."""
    a = gpt.args
    order = f"PAR, {a.regions_per_side}x{a.regions_per_side} regions" if gpt.parallel else "raster order"
    print(f"decoding {a.grid_size}x{a.grid_size} tokens in {len(gpt.decode_schedule())} forward passes per batch "
          f"({order})")
    if n_done:
        print(f"resuming: {n_done} of {n_batches} batches were finished by an earlier run (kept in {parts})")


def run(args: argparse.Namespace) -> int:
    import signal
    from dataclasses import fields

    import numpy as np

    from mirai.config import from_dict
    from mirai.errors import Interrupted
    from mirai.evaluation.npz import NpzArchive
    from mirai.hub.resolve import resolve
    from mirai.sampling.grid import checkpoint_details, checkpoint_label, write_sample_grid
    from mirai.sampling.checks import check_int
    from mirai.sampling.pipeline import (MAX_SAMPLES, SampleSettings, check_request, check_trained_tokenizer,
                                         class_labels, finished_parts, load_for_sampling, parts_folder,
                                         sample_to_npz)
    from mirai.training.distributed import barrier, init_distributed, shutdown

    _check_cli(args)
    classes = _classes(args.classes)
    with _as_flags():
        settings = from_dict(SampleSettings, {f.name: getattr(args, f.name) for f in fields(SampleSettings)})
    if settings.guidance_interval is not None and settings.cfg_scale == 1.0:
        print("note: --guidance-interval has no effect at --cfg-scale 1 (no guidance anywhere); raise --cfg-scale to "
              "guide inside the interval")
    vq = load_for_sampling(args.tokenizer, "vq")
    gpt = load_for_sampling(args.gpt, "gpt", prefer_ema=not args.raw_weights, name=args.model,
                            grid_size=_grid_size(args, vq))
    n_classes = gpt.args.num_classes
    grid_mode = args.num_samples is None
    with _as_flags(grid_mode):  # all before the output folder is made
        if not grid_mode:
            labels = class_labels(n_classes, args.num_samples, args.class_sampling, seed=args.seed)
        else:
            ids = list(range(n_classes)) if classes is None else classes
            check_int("number of images (--classes x --per-class)", len(ids) * args.per_class, 1, MAX_SAMPLES)
            labels = np.repeat(ids, args.per_class)
        check_request(gpt, vq, labels, settings, args.seed, args.batch_size)
        check_trained_tokenizer(args.gpt, args.tokenizer, vq)
    dist = init_distributed(args.device)
    gpt.to(dist.device)
    vq.to(dist.device)
    out = Path(args.out)
    npz = dict(out=out / "samples.npz", settings=settings, seed=args.seed, batch_size=args.batch_size,
               compile=args.compile,
               sources={"gpt": str(resolve(args.gpt).resolve()), "vq": str(resolve(args.tokenizer).resolve())})
    reuse = npz["out"].exists()  # sampled before: reused if made the same way, else refused
    if dist.is_main:
        if gpt.loaded_weights == "raw" and not args.raw_weights:
            print(f"note: {args.gpt} holds no EMA weights, so its raw weights are sampled")
        elif gpt.loaded_weights == "unlabelled":
            print(f"note: {args.gpt} is a bare state dict, which does not say whether it holds EMA or raw weights; "
                  "sampled as they are")
    previous = signal.signal(signal.SIGTERM, _stop)  # a scheduler's SIGTERM says where the batches are, as Ctrl-C
    try:
        with _as_flags(grid_mode), _hold(out, dist):
            path = sample_to_npz(gpt, vq, labels, rank=dist.rank, world_size=dist.world_size,
                                 on_start=functools.partial(_announce, gpt, parts_folder(npz["out"])), **npz)
            barrier()
            if dist.is_main and path is None:  # other ranks finished after rank 0 looked: merge now
                path = sample_to_npz(gpt, vq, labels, progress=False, **npz)
            if dist.is_main:
                with NpzArchive(path, "sample batch") as data:
                    images, drawn = data.array("arr_0"), data.array("labels")
                step, names = checkpoint_details(resolve(args.gpt))
                what = f"{checkpoint_label(args.gpt)} ({gpt.loaded_weights} weights, seed {args.seed})"
                grid = write_sample_grid(images, drawn, out / "grid.png", what, step, settings, names,
                                         per_row=args.per_class if grid_mode else 10)
                done = "reused the" if reuse else "wrote"
                print(f"{done} {len(images)} samples {'in' if reuse else 'to'} {path} (settings in "
                      f"{path.with_suffix('.json')}) and a grid of them by class to {' and '.join(map(str, grid))}")
    except KeyboardInterrupt as err:
        done, parts = npz["out"], parts_folder(npz["out"])
        if (isinstance(err, Interrupted) and err.message) or not (parts.is_dir() or done.is_file()):
            raise
        signum = getattr(err, "signum", signal.SIGINT)
        if done.is_file():  # stopped while the grid was drawn
            raise Interrupted(signum, f"the samples are complete in {done}; the same command reuses them and draws "
                              "the grid") from None
        kept = len(finished_parts(parts))
        raise Interrupted(signum, f"the {kept} finished batch{'es are' if kept != 1 else ' is'} kept in {parts}; the "
                          "same command resumes from them") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutdown()
    return 0
