"""What a foresight target adds to next-token prediction: probes and gradients at a checkpoint.

Issue 16 asks why Mirai-E may not help at a given scale. Two measurements answer it for any
foresight run, whatever the source (the EMA teacher of Mirai-E or the encoder of Mirai-I):

1. **Information** (per head, on held-out images): linear probes of the student's next token
   from the student's aligned state ``h`` (block ``layer`` at the student position), from the
   head's target ``f`` (the teacher's state or the encoder's feature at the paired position), and
   from both; and ridge regressions of ``f`` from ``h`` and from ``h`` plus the one-hot next
   token. ``novel_next_token_share`` = (R^2(h, x) - R^2(h)) / (1 - R^2(h)): the share of what
   ``h`` lacks of the target that the next token alone supplies. Near 1, aligning to ``f``
   mostly asks for the next token, which the NTP loss already supervises exactly; near 0, the
   target carries something else (e.g. whole-image structure); slightly below 0 when the next
   token adds nothing and the extra columns only add held-out noise; ``None`` where R^2(h) is
   within ``SHARE_MIN_GAP`` of 1 (the state already explains the target: a ratio of noise).
2. **Gradients** (per batch, on the GPT parameters both losses reach): the norm of the weighted
   foresight gradient over the NTP gradient's, and their cosine. A small ratio or a cosine near
   1 means the foresight term barely changes the update NTP makes anyway.
   ``None`` where every lambda is 0, e.g. inside the NTP-only warm-up (``in_warmup``).

Probes are scikit-learn's (``LogisticRegression``, ``Ridge``) on standardised features, fitted
on the first half of the images and scored on the second, so no image is on both sides.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mirai import checkpoint
from mirai.config import load_config, saved_config_error, write_text_atomic
from mirai.data.codes import CodeStore
from mirai.data.options import check_output_file, positive_int, resolve_device, whole_number
from mirai.errors import CheckpointError, ConfigError, DataError
from mirai.foresight.base import Progress
from mirai.foresight.build import build_auxiliary_loss
from mirai.foresight.loss import ForesightLoss
from mirai.foresight.pairs import nearest_future_offsets
from mirai.models.gpt import GPT
from mirai.sampling.checks import check_seed
from mirai.sampling.grid import check_codes_tokenizer
from mirai.training.config import TrainConfig
from mirai.training.data import host_batch, to_device
from mirai.training.state import CONFIG_FILE, STATE_FILE, load_saved_states
from mirai.training.objective import ntp_loss


SHARE_MIN_GAP = 1e-3  # novel_next_token_share is reported only where R^2(target | state) < 1 - this


def probe_accuracy(features: np.ndarray, labels: np.ndarray, fit: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a multinomial logistic regression from ``features`` (N, D) to ``labels`` (N,),
    fitted on the rows where ``fit`` is true and scored on the others."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, random_state=seed))
    probe.fit(features[fit], labels[fit])
    return float(probe.score(features[~fit], labels[~fit]))


def explained_variance(target: np.ndarray, inputs: np.ndarray, fit: np.ndarray,
                       classes: np.ndarray | None = None, num_classes: int = 0) -> float:
    """Held-out R^2 (variance-weighted over the target's D dimensions) of a ridge regression from
    ``inputs`` (N, E), standardised, plus the one-hot code of ``classes`` (N,) in ``num_classes``
    columns left as 0/1 (standardising would blow rare classes up), to ``target`` (N, D). The
    penalty is chosen by leave-one-out on the fitted rows. 1 = the target is linear in the inputs."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit(inputs[fit]).transform(inputs)
    if classes is not None:
        x = np.concatenate([x, np.eye(num_classes, dtype=x.dtype)[classes]], axis=1)
    model = RidgeCV(alphas=np.logspace(-2, 4, 7)).fit(x[fit], target[fit])
    return float(r2_score(target[~fit], model.predict(x[~fit]), multioutput="variance_weighted"))


def gradient_alignment(ntp: list[torch.Tensor | None], foresight: list[torch.Tensor | None]) -> tuple[float, float]:
    """(||g_F|| / ||g_NTP||, cos(g_F, g_NTP)) over the parameters where both gradients exist."""
    pairs = [(a.flatten(), b.flatten()) for a, b in zip(ntp, foresight) if a is not None and b is not None]
    if not pairs:
        raise ValueError("the two losses share no parameter with a gradient")
    a, b = torch.cat([p[0] for p in pairs]).double(), torch.cat([p[1] for p in pairs]).double()
    return float(b.norm() / a.norm()), float(torch.dot(a, b) / (a.norm() * b.norm()))


def load_foresight_run(ckpt: Path, device: str = "cpu") -> tuple[TrainConfig, GPT, ForesightLoss, Progress]:
    """The config, raw GPT, trained foresight loss (heads and any own teacher) and progress of a
    training checkpoint ``RUN/checkpoints/step_N``; the EMA of the checkpoint is Mirai-E's teacher."""
    for name in (CONFIG_FILE, STATE_FILE):
        if not (ckpt / name).is_file():
            raise CheckpointError(f"{ckpt} has no {name}: give a training checkpoint of a foresight run "
                                  "(RUN/checkpoints/step_NNNNNNN or RUN/checkpoints/best)")
    try:
        cfg = load_config(TrainConfig, ckpt / CONFIG_FILE, ["foresight.cache_features=false"])
    except ConfigError as err:  # from_dict names the key ("config.model"), not the file the run saved
        raise (err if str(ckpt / CONFIG_FILE) in str(err) else saved_config_error(ckpt / CONFIG_FILE, err)) from None
    if not cfg.foresight.enabled or cfg.foresight.output_diagnostic:
        raise ConfigError(f"{ckpt} was trained without a foresight loss on hidden states (foresight.source="
                          f"{cfg.foresight.source}, output_diagnostic={cfg.foresight.output_diagnostic}); "
                          "the probe needs a Mirai-I or Mirai-E run")
    model = checkpoint.load(ckpt, GPT).to(device).eval()
    ema = checkpoint.load(ckpt, GPT, use_ema=True).to(device).eval()
    loss = build_auxiliary_loss(cfg.foresight, model, ema)
    load_saved_states(ckpt, loss.saved_states())  # the heads, and a teacher with its own decay
    step = int(checkpoint.read_torch_file(ckpt / STATE_FILE)["step"])
    try:
        images = len(CodeStore.open(cfg.data.codes))
    except DataError as err:
        raise DataError(f"{err}. The probe counts the run's steps per epoch in its training store (data.codes in "
                        f"{ckpt / CONFIG_FILE}) to place step {step} on the lambda schedule and warm-up: run it "
                        "from the folder the run was trained from, where that path leads to the store") from None
    batches_per_epoch = max(1, images // cfg.optim.batch_size)
    total = cfg.steps or math.ceil(cfg.epochs * batches_per_epoch)  # as the trainer counts them
    progress = Progress(step, step / batches_per_epoch, step / max(1, total))
    return cfg, model, loss.eval(), progress


def head_names(cfg: TrainConfig, heads: int) -> list[str]:
    """One name per head: its grid offset (d_row, d_col) in the 2-D layout, else its index."""
    f = cfg.foresight
    if f.layout == "grid2d":
        offsets = f.offsets if f.offsets is not None else nearest_future_offsets(heads)
        return [f"offset ({dr}, {dc})" for dr, dc in offsets]
    return [f"{f.layout} head {k}" for k in range(heads)]


def head_probes(h: np.ndarray, f: np.ndarray, y: np.ndarray, fit: np.ndarray, vocab_size: int,
                seed: int = 0) -> dict[str, float]:
    """The probes of one head: next token ``y`` (P,) from the student's states ``h`` (P, dim), from the
    targets ``f`` (P, C) and from both; R^2 of ``f`` from ``h`` with and without the next token."""
    r2_h = explained_variance(f, h, fit)
    r2_hx = explained_variance(f, h, fit, classes=y, num_classes=vocab_size)
    return {"probe_next_token_from_student": probe_accuracy(h, y, fit, seed),
            "probe_next_token_from_target": probe_accuracy(f, y, fit, seed),
            "probe_next_token_from_both": probe_accuracy(np.concatenate([h, f], axis=1), y, fit, seed),
            "r2_target_from_student": r2_h, "r2_target_from_student_and_next_token": r2_hx,
            # Undefined when the state already explains the target (R^2 near 1): a ratio of two noise terms.
            "novel_next_token_share": (r2_hx - r2_h) / (1 - r2_h) if r2_h < 1 - SHARE_MIN_GAP else None}


def foresight_probe(checkpoint_path: str | Path, codes: str | Path, out: str | Path | None = None,
                    num_images: int = 400, batch_size: int = 64, max_rows: int = 20000, seed: int = 0,
                    device: str = "cpu") -> dict:
    """Probe a foresight run's checkpoint on view 0 of the first ``num_images`` images of ``codes``
    (module docstring); write the report to ``out`` (JSON) if given and return it.

    Shapes: ``h`` (P, dim) and ``f`` (P, C) per head, P = pairs x images, at most ``max_rows``
    rows per probe (a seeded random subset). Errors: ``CheckpointError`` for a checkpoint without
    its training state or config, ``ConfigError`` for a run without a hidden-state foresight loss,
    ``DataError`` for a store that does not fit the model or has fewer than 2 images.
    """
    for value, name in ((batch_size, "batch_size"), (max_rows, "max_rows")):
        positive_int(value, name)
    if whole_number(num_images, "num_images") < 2:
        raise ConfigError(f"num_images must be at least 2, got {num_images}: the probes fit on half the images "
                          "and score the other half")
    check_seed(seed)  # NumPy's and scikit-learn's seeds lie in [0, 2**32), as sampling's do
    ckpt = Path(checkpoint_path)
    if out is not None:
        check_output_file(out, "out", inputs=[codes], suffixes=[".json"])
    device = resolve_device(device)
    store = CodeStore.open(codes)
    check_codes_tokenizer(store.manifest, codes, ckpt)
    cfg, model, loss, progress = load_foresight_run(ckpt, device)
    args = model.args
    store.validate(vocab_size=args.vocab_size, grid_size=args.grid_size, num_classes=args.num_classes,
                   model=str(ckpt))
    count = min(num_images, len(store))
    if count < 2:
        raise DataError(f"{codes} has {len(store)} image(s); the probe fits on half the images and scores the rest")
    lambdas, _ = loss.weights(progress)
    in_warmup = lambdas is None  # the NTP-only warm-up: no foresight gradient applied, the heads untrained
    if in_warmup:
        lambdas = torch.zeros(len(loss.heads), device=device)
    shared = list(model.parameters())
    heads = len(loss.heads)
    rows: list[dict[str, list[np.ndarray]]] = [{"h": [], "f": [], "y": [], "image": [], "hit": []} for _ in range(heads)]
    ratios, cosines = [], []
    for start in tqdm(range(0, count, batch_size), desc="foresight probe", unit="batch", disable=None):
        index = np.arange(start, min(count, start + batch_size))
        batch = to_device(host_batch(store, index, np.zeros_like(index), loss.batch_fields), device)  # view 0
        sequence = model.to_sequence(batch["tokens"])
        logits, hidden = model.forward_with_hidden(sequence[:, :-1], batch["labels"], loss.hidden_layers)
        h = hidden[loss.layer]
        with torch.no_grad():
            f = loss.targets(batch)  # once: for the gradient below and the probes' rows
        if lambdas.any():  # else (e.g. inside the warm-up) there is no foresight gradient to compare
            terms, _ = loss.score(h, f, lambdas)
            g_ntp = torch.autograd.grad(ntp_loss(logits, sequence), shared, retain_graph=True, allow_unused=True)
            g_f = torch.autograd.grad(terms[loss.name], shared, allow_unused=True)
            ratio, cosine = gradient_alignment(list(g_ntp), list(g_f))
            ratios.append(ratio)
            cosines.append(cosine)
        with torch.no_grad():
            for k in range(heads):
                student, target = getattr(loss, f"student{k}"), getattr(loss, f"target{k}")
                keep = student < sequence.size(1)  # positions that predict a token (not PAR's extra ones)
                student, target = student[keep], target[keep]
                r = rows[k]
                r["h"].append(h[:, student].flatten(0, 1).cpu().numpy())
                r["f"].append(f[:, target].flatten(0, 1).float().cpu().numpy())
                r["y"].append(sequence[:, student].flatten().cpu().numpy())
                r["hit"].append((logits[:, student].argmax(-1) == sequence[:, student]).flatten().cpu().numpy())
                r["image"].append(np.repeat(index, len(student)))
    rng = np.random.default_rng(seed)
    names = head_names(cfg, heads)
    report_heads = []
    for k in tqdm(range(heads), desc="probes", unit="head", disable=None):
        r = {key: np.concatenate(value) for key, value in rows[k].items()}
        pick = np.sort(rng.permutation(len(r["y"]))[:max_rows])
        h, f, y, image = r["h"][pick], r["f"][pick], r["y"][pick], r["image"][pick]
        fit = image < count // 2
        if fit.all() or not fit.any():
            raise DataError(f"head {k}: the {len(y)} rows sampled do not cover both halves of the images; raise "
                            "max_rows (or num_images)")
        report_heads.append({"head": names[k], "rows": len(y), "lambda": float(lambdas[k]),
                             "model_next_token_acc": float(r["hit"][pick][~fit].mean()),
                             **head_probes(h, f, y, fit, args.vocab_size, seed)})
    report = {
        "checkpoint": str(ckpt), "codes": str(codes), "step": progress.step, "source": cfg.foresight.source,
        "layer": loss.layer, "images": count, "heads": report_heads, "in_warmup": in_warmup,
        # None where every lambda is 0 (e.g. inside the warm-up): no foresight gradient to compare.
        "gradient": {"batches": len(ratios), "batch_size": batch_size,
                     "norm_ratio_mean": float(np.mean(ratios)), "norm_ratio_std": float(np.std(ratios)),
                     "cosine_mean": float(np.mean(cosines)), "cosine_std": float(np.std(cosines))} if ratios else None,
    }
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    return report
