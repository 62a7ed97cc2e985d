"""``mirai evaluate``: score samples (ADM metrics), build reference batches, train the Fashion-MNIST evaluator.

Three forms::

    mirai evaluate SAMPLES.npz --ref REF.npz [--out METRICS.json]   (default: SAMPLES.metrics.json)
    mirai evaluate make-ref (--images X.npz | --dataset fashion-mnist [--split test]) --out REF.npz [--overwrite]
    mirai evaluate train-fashion-classifier --out DIR [--overwrite]

Every value is checked before any network runs; a bad one ends the command with one error line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """other actions:
  mirai evaluate make-ref (--images X.npz | --dataset fashion-mnist [--split test]) --out REF.npz
        write a reference batch (ADM .npz layout) with each evaluator's statistics and activations
  mirai evaluate train-fashion-classifier --out DIR
        train the Fashion-MNIST evaluator (the committed one is in mirai/assets/fashion/evaluator)
run `mirai evaluate ACTION -h` for their options."""


def add_parser(subparsers) -> None:
    # The first word after ``evaluate`` is either a samples file or an action name, which
    # argparse's sub-parsers cannot express. "\0" as the only prefix character makes this
    # parser treat every word (options included) as data for REMAINDER; ``run`` then hands
    # them to the parser of the form that was meant.
    parser = subparsers.add_parser(
        "evaluate", help="FID/sFID/IS/precision/recall of samples; reference batches; Fashion-MNIST evaluator",
        add_help=False, prefix_chars="\0",
    )
    parser.add_argument("words", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inception-weights", metavar="FILE",
                        help="local torch-fidelity Inception weights (.pth or .safetensors); default: download "
                             "torch-fidelity's release file once into the torch hub cache")
    parser.add_argument("--fashion-evaluator", metavar="DIR",
                        help="Fashion-MNIST evaluator checkpoint (default: the committed one)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per network forward (default 64, as ADM)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def score_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirai evaluate", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score an ADM-format sample batch (arr_0 uint8 N×H×W×3, optional labels) against a "
                    "reference batch with ADM's metrics. Prints them and writes them as JSON (--out; default "
                    "SAMPLES.metrics.json beside the samples).",
    )
    parser.add_argument("samples", help="sample batch .npz")
    parser.add_argument("--ref", required=True, help="reference batch .npz (ADM's, or from `mirai evaluate make-ref`)")
    parser.add_argument("--out", help="where to write the metrics as JSON (default: beside the samples, "
                        "SAMPLES.metrics.json, e.g. samples.metrics.json for samples.npz)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out that is not an "
                        "earlier metrics report of this command (one is replaced without it)")
    parser.add_argument("--evaluator", choices=["auto", "inception", "fashion"], default="auto",
                        help="feature network; auto = fashion against a reference with Fashion-MNIST statistics "
                             "(samples must then be 32×32, or resized with --image-size-eval 32), else inception")
    parser.add_argument("--image-size-eval", type=int, metavar="N",
                        help="score the samples resized to NxN (bicubic, as LlamaGen's --image-size-eval), e.g. 256 "
                             "for 384-px samples against a 256-px reference")
    parser.add_argument("--noise-floor", action=argparse.BooleanOptionalAction, default=None,
                        help="also score two halves of the reference against each other "
                             "(default: on for the fashion evaluator)")
    _common(parser)
    return parser


def make_ref_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirai evaluate make-ref",
        description="Write a reference batch in ADM's .npz layout (arr_0, mu, sigma, mu_s, sigma_s) plus "
                    "activations, labels and the fingerprint of the network that made them.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="X.npz", help="images in an .npz (arr_0 uint8 N×H×W×3, optional labels)")
    source.add_argument("--dataset", choices=["fashion-mnist"], help="a built-in dataset")
    parser.add_argument("--split", choices=["train", "test"], default="test", help="dataset split (default test)")
    parser.add_argument("--data-root", help="folder with the dataset files (default: the data loader's search)")
    parser.add_argument("--out", required=True, metavar="REF.npz", help="reference batch to write")
    parser.add_argument("--evaluator", choices=["auto", "inception", "fashion", "both"], default="auto",
                        help="whose statistics to store; auto = fashion for --dataset fashion-mnist, else inception")
    parser.add_argument("--no-images", action="store_true", help="store statistics and activations only, not arr_0")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    _common(parser)
    return parser


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirai evaluate train-fashion-classifier",
        description="Train the supervised Fashion-MNIST classifier used as the 32×32 evaluator and save it as "
                    "a Mirai checkpoint directory (config.json + model.safetensors; metrics in its meta).",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to write")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: the committed weights were trained so, bit for bit)")
    parser.add_argument("--data-root", help="folder with the Fashion-MNIST files")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    return parser


def _parse(parser: argparse.ArgumentParser, words: list[str]) -> argparse.Namespace:
    from mirai.cli.flags import refuse_blank

    args = parser.parse_args(words)
    refuse_blank(parser, args)
    return args


def run(args: argparse.Namespace) -> int:
    words = args.words
    if words and words[0] == "make-ref":
        return make_ref(_parse(make_ref_parser(), words[1:]))
    if words and words[0] == "train-fashion-classifier":
        return train(_parse(train_parser(), words[1:]))
    return score(_parse(score_parser(), words))


def score(args: argparse.Namespace) -> int:
    from mirai.config import write_text_atomic
    from mirai.data.options import check_output_file
    from mirai.errors import ConfigError
    from mirai.evaluation.suite import evaluate, format_report

    out = Path(args.out) if args.out else default_metrics_path(args.samples)
    # Before the (long) scoring.
    check_output_file(out, "--out", inputs=[args.samples, args.ref], usual_suffix=".json")
    if out.exists() and not args.overwrite and not is_metrics_report(out):
        raise ConfigError(f"--out {out} already exists and is not a metrics report of `mirai evaluate`; pass "
                          "--overwrite to replace it, or choose another name")
    report = evaluate(args.samples, args.ref, evaluator=args.evaluator, inception_weights=args.inception_weights,
                      fashion_evaluator=args.fashion_evaluator, batch_size=args.batch_size, device=args.device,
                      with_noise_floor=args.noise_floor, log=lambda text: print(text, file=sys.stderr),
                      image_size_eval=args.image_size_eval)
    print(format_report(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote the metrics to {out}")
    return 0


def is_metrics_report(path: Path) -> bool:
    """Whether ``path`` holds a report this command wrote (a JSON object with its keys): rescoring replaces one
    without ``--overwrite``; any other file (weights, a run's log, notes) is never replaced silently."""
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(report, dict) and {"samples", "num_samples", "reference", "metrics"} <= set(report)


def default_metrics_path(samples: str | Path) -> Path:
    """``SAMPLES.metrics.json`` beside the sample batch (``samples.npz`` -> ``samples.metrics.json``): next
    to what was scored, and apart from the ``samples.json`` record that ``mirai sample`` writes there."""
    samples = Path(samples)
    return samples.with_name(f"{samples.stem}.metrics.json")


def make_ref(args: argparse.Namespace) -> int:
    from mirai.evaluation.suite import make_reference

    evaluators = {"auto": ("fashion",) if args.dataset == "fashion-mnist" else ("inception",),
                  "both": ("inception", "fashion")}.get(args.evaluator, (args.evaluator,))
    path = make_reference(args.out, images=args.images, dataset=args.dataset, split=args.split,
                          data_root=args.data_root, evaluators=evaluators, inception_weights=args.inception_weights,
                          fashion_evaluator=args.fashion_evaluator, keep_images=not args.no_images,
                          batch_size=args.batch_size, device=args.device, overwrite=args.overwrite)
    print(f"wrote reference batch {path} ({', '.join(evaluators)} statistics)")
    return 0


def train(args: argparse.Namespace) -> int:
    import torch

    from mirai import checkpoint
    from mirai.data.options import existing_dir, positive_float, positive_int

    # The builder trains for minutes: check every setting before it starts.
    for value, name in ((args.epochs, "--epochs"), (args.batch_size, "--batch-size"), (args.threads, "--threads")):
        positive_int(value, name)
    positive_float(args.lr, "--lr")
    if args.data_root is not None:
        existing_dir(args.data_root, "--data-root")
    checkpoint.check_output_dir(args.out, "--out", overwrite=args.overwrite)
    from mirai.builders.evaluator import train_fashion_classifier

    torch.set_num_threads(args.threads)
    model, metrics = train_fashion_classifier(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                              seed=args.seed, data_root=args.data_root)
    checkpoint.save(args.out, model, meta=metrics)  # meta holds every training setting, too
    print(f"wrote Fashion-MNIST evaluator to {args.out}: test accuracy {metrics['test_accuracy']:.4f}")
    return 0
