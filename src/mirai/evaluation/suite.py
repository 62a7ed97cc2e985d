"""The evaluation suite: run a feature network over sample and reference batches, score them.

Two feature networks ("evaluators") are supported:

* ``inception`` — ADM's Inception-V3 (``mirai.evaluation.inception``): FID, sFID, Inception
  Score, precision and recall, as in the paper's tables.
* ``fashion`` — the supervised Fashion-MNIST classifier (``mirai.models.fashion_classifier``)
  for 32×32 runs: FID, precision and recall on its penultimate features, Inception Score
  from its class probabilities, class accuracy of the samples, and the evaluator's noise
  floor: the same metrics of as many real reference images as there are samples against the
  rest of the reference, i.e. the score a perfect generator would get at that sample count.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from mirai.data.options import check_output_file, positive_int, resolve_device
from mirai.errors import ConfigError, DataError
from mirai.evaluation import metrics
from mirai.evaluation.reference import FeatureSet, NpzImages, Reference, read_labels, read_reference, write_reference

EVALUATORS = ("inception", "fashion")


def _check_evaluator(evaluator: str, allowed: tuple[str, ...]) -> str:
    if evaluator not in allowed:
        raise ConfigError(f"unknown evaluator {evaluator!r}; choose one of {list(allowed)}")
    return evaluator


def state_fingerprint(module: nn.Module) -> str:
    """Short SHA-256 of a module's weights, recorded with reference statistics to catch mismatched networks."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_network(evaluator: str, inception_weights: str | Path | None = None,
                 fashion_evaluator: str | Path | None = None, device: str | None = None) -> tuple[nn.Module, dict]:
    """(network, provenance) for ``evaluator``; provenance = weights source and fingerprint."""
    device = resolve_device(device)
    _check_evaluator(evaluator, EVALUATORS)
    if evaluator == "inception":
        from mirai.evaluation.inception import InceptionV3Features

        network = InceptionV3Features(inception_weights)  # reads the weights before importing torch-fidelity
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        source = str(inception_weights) if inception_weights is not None else URL_INCEPTION_V3
    else:
        from mirai.evaluation.fashion_classifier import default_evaluator_path, load_fashion_classifier

        network = load_fashion_classifier(fashion_evaluator)
        source = str(fashion_evaluator) if fashion_evaluator is not None else str(default_evaluator_path())
    info = {"weights": source, "fingerprint": state_fingerprint(network)}
    return network.to(device).eval(), info


def extract_features(network: nn.Module, images: NpzImages | np.ndarray, batch_size: int = 64,
                     desc: str = "features") -> dict[str, np.ndarray]:
    """Every output of ``network.extract`` over all images, concatenated as float32 arrays."""
    from tqdm import tqdm

    device = next(network.parameters()).device
    if isinstance(images, NpzImages):
        batches, count = images.batches(batch_size), len(images)
    else:
        batches, count = (images[i:i + batch_size] for i in range(0, len(images), batch_size)), len(images)
    outputs: dict[str, list[np.ndarray]] = {}
    for batch in tqdm(batches, total=math.ceil(count / batch_size), desc=desc, unit="batch", disable=None):
        # np.array copies: streamed batches are read-only views of the file's bytes.
        with torch.no_grad():
            result = network.extract(torch.from_numpy(np.array(batch)).to(device))
        for name, value in result.items():
            outputs.setdefault(name, []).append(value.float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def reference_features(ref: Reference, network: nn.Module, info: dict, batch_size: int = 64) -> FeatureSet:
    """The reference's features for ``network``: stored ones when they were made by it, else computed from its images.

    ADM's reference files carry statistics but no activations and no provenance; their
    statistics are used as they are (they come from the standard Inception) and the
    activations precision/recall needs are computed from ``arr_0``, as ADM does.
    """
    stored = ref.features.get(network.name)
    recorded = ref.networks.get(network.name, {}).get("fingerprint")
    if stored is not None and recorded is not None and recorded != info["fingerprint"]:
        if ref.num_images is None:
            raise DataError(
                f"the {network.name} statistics in {ref.path} were made by other weights (fingerprint {recorded}, "
                f"this network {info['fingerprint']}) and the file has no images to recompute them; remake it "
                "with `mirai evaluate make-ref` using the same weights"
            )
        warnings.warn(f"{ref.path}: stored {network.name} statistics come from other weights; recomputing from its images")
        stored = None
    if stored is not None and stored.pool is not None and stored.mu is not None:
        return stored
    if ref.num_images is None:
        if stored is None or stored.mu is None:
            raise DataError(f"{ref.path} has no {network.name} statistics and no images to compute them from")
        return stored  # statistics only: FID/sFID, no precision/recall
    computed = FeatureSet.from_features(extract_features(network, ref.images(), batch_size, desc="reference"))
    if stored is not None:
        # Keep the file's statistics (ADM's own numbers); the images only add the activations.
        for name in ("mu", "sigma", "mu_s", "sigma_s"):
            if getattr(stored, name) is not None:
                setattr(computed, name, getattr(stored, name))
    return computed


def score(samples: dict[str, np.ndarray], ref: FeatureSet, labels: np.ndarray | None = None,
          num_classes: int | None = None, device: str = "cpu") -> dict[str, float | None]:
    """ADM's metrics of sample features against reference features (None where an input is missing).

    ``class_accuracy`` needs the samples' ``labels`` and a classifier (``num_classes``)
    whose classes are the labels' classes.
    """
    for mean, name in ((ref.mu, "pool"), (ref.mu_s, "spatial")):
        if name in samples and mean is not None and len(mean) != samples[name].shape[1]:
            raise DataError(f"the reference's {name} statistics have {len(mean)} features but this evaluator gives "
                            f"{samples[name].shape[1]}: they were made by another network; remake the reference "
                            "with `mirai evaluate make-ref` and this evaluator")
    mu, sigma = metrics.feature_statistics(samples["pool"])
    result: dict[str, float | None] = {
        "fid": metrics.frechet_distance_from_stats(mu, sigma, ref.mu, ref.sigma),
        "sfid": None, "inception_score": None, "precision": None, "recall": None, "class_accuracy": None,
    }
    if "spatial" in samples and ref.mu_s is not None:
        result["sfid"] = metrics.frechet_distance_from_stats(*metrics.feature_statistics(samples["spatial"]),
                                                             ref.mu_s, ref.sigma_s)
    if "logits" in samples:
        result["inception_score"] = metrics.inception_score(samples["logits"])
    if ref.pool is not None and min(len(ref.pool), len(samples["pool"])) > metrics.PR_NEIGHBOURS:
        result["precision"], result["recall"] = metrics.precision_recall(ref.pool, samples["pool"], device=device)
    if labels is not None and num_classes is not None and "logits" in samples:
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DataError(f"sample labels must lie in 0..{num_classes - 1} for this evaluator, "
                            f"got {labels.min()}..{labels.max()}")
        result["class_accuracy"] = float(np.mean(samples["logits"].argmax(axis=1) == labels))
    return result


def noise_floor(ref: FeatureSet, labels: np.ndarray | None = None, num_classes: int | None = None,
                device: str = "cpu", seed: int = 0, num_images: int | None = None) -> dict[str, float | int | None]:
    """The metrics of ``num_images`` real reference images, scored like samples against the rest of the reference.

    This is what a perfect generator would get with ``num_images`` samples: FID's bias grows as the
    sample count falls (about 2.5x from 5 000 to 1 000 Fashion-MNIST images), so the floor must be
    taken at the count being scored. ``num_images`` defaults to half the reference and is capped there
    (the rest must stay a reference at least as large); the returned ``num_images``/``num_reference``
    say what was used, ``capped`` whether the request was cut. The split comes from a fixed
    permutation (``seed``), so the number is reproducible and independent of the reference's order.
    Raises ``DataError`` without reference activations or with fewer than 4 reference images.
    """
    if ref.pool is None:
        raise DataError("the noise floor needs reference activations; remake the reference with make-ref")
    total = len(ref.pool)
    if total < 4:
        raise DataError(f"the noise floor splits the reference, which holds only {total} image(s); use at least 4")
    if num_images is not None:
        positive_int(num_images, "num_images")
    size = min(num_images or total // 2, total // 2)
    order = np.random.default_rng(seed).permutation(total)
    real, rest = order[:size], order[size:]
    samples = {"pool": ref.pool[real]}
    if ref.logits is not None:
        samples["logits"] = ref.logits[real]
    floor = score(samples, FeatureSet.from_features({"pool": ref.pool[rest]}),
                  labels[real] if labels is not None else None, num_classes, device)
    floor.pop("sfid")
    floor.update(num_images=int(size), num_reference=int(len(rest)),
                 capped=num_images is not None and size < num_images)
    return floor


def pick_evaluator(samples: NpzImages, ref: Reference) -> str:
    """``fashion`` for a reference with Fashion-MNIST statistics, else ``inception``; ``DataError`` when
    that reference meets samples the Fashion-MNIST evaluator cannot take (the choice would be a guess)."""
    if "fashion" not in ref.features:
        return "inception"
    if samples.resolution != (32, 32):
        height, width = samples.resolution
        # Inception is a way out only where the reference can give Inception features.
        other = ", or choose --evaluator inception" if ref.num_images or "inception" in ref.features else ""
        raise DataError(f"{ref.path} holds Fashion-MNIST statistics, but the samples are {height}×{width} and its "
                        f"evaluator takes 32×32: score them resized with --image-size-eval 32{other}")
    return "fashion"


def evaluate(samples_path: str | Path, ref_path: str | Path, evaluator: str = "auto",
             inception_weights: str | Path | None = None, fashion_evaluator: str | Path | None = None,
             batch_size: int = 64, device: str | None = None, with_noise_floor: bool | None = None,
             log: Callable[[str], None] = print, image_size_eval: int | None = None) -> dict:
    """Score an ADM-format sample batch against a reference batch; returns the JSON-ready report.

    ``with_noise_floor`` defaults to on for the Fashion-MNIST evaluator only (for Inception it
    costs another 2048-d matrix square root and ADM's tables do not report it).
    ``image_size_eval``: score the samples resized (bicubic) to that size, e.g. 384-px samples at 256
    as in LlamaGen's protocol (``mirai.evaluation.reference.resize_uint8``).
    """
    _check_evaluator(evaluator, ("auto", *EVALUATORS))
    batch_size = positive_int(batch_size, "batch_size (--batch-size)")
    device = resolve_device(device)
    samples = NpzImages(samples_path, what="sample batch", resize=image_size_eval)
    if len(samples) < 2:
        raise DataError(f"sample batch {samples_path} holds {len(samples)} image(s); FID needs at least 2")
    labels = read_labels(samples_path, len(samples), "sample batch")
    ref = read_reference(ref_path)
    if evaluator == "auto":
        evaluator = pick_evaluator(samples, ref)
        if evaluator == "inception" and not ref.features:
            log(f"note: {ref_path} holds no precomputed statistics, so its images are scored with the Inception "
                "network (for Fashion-MNIST statistics, make it with mirai evaluate make-ref)")
    unused = {"inception": ("fashion_evaluator (--fashion-evaluator)", fashion_evaluator),
              "fashion": ("inception_weights (--inception-weights)", inception_weights)}[evaluator]
    if unused[1] is not None:
        log(f"note: {unused[0]} is not used: the samples are scored with the {evaluator} evaluator")
    if evaluator == "fashion" and samples.resolution != (32, 32):
        raise DataError(f"the Fashion-MNIST evaluator takes 32×32 images; {samples_path} holds "
                        f"{samples.resolution[0]}×{samples.resolution[1]}: score them resized with "
                        f"--image-size-eval 32 (image_size_eval=32)")
    if with_noise_floor is None:
        with_noise_floor = evaluator == "fashion"
    if ref.resolution is not None and ref.resolution != samples.resolution:  # before a network is loaded or fetched
        log(f"note: samples are {samples.resolution[0]}×{samples.resolution[1]}, reference images "
            f"{ref.resolution[0]}×{ref.resolution[1]} (resize samples to the reference resolution to compare like "
            f"with like: --image-size-eval {ref.resolution[0]})")
    network, info = load_network(evaluator, inception_weights, fashion_evaluator, device)
    num_classes = getattr(network, "num_classes", None)  # classifiers only: enables class accuracy
    ref_set = reference_features(ref, network, info, batch_size)
    sample_features = extract_features(network, samples, batch_size, desc="samples")
    report = {
        "samples": str(samples_path), "num_samples": len(samples), "reference": str(ref_path),
        "num_reference": int(len(ref_set.pool)) if ref_set.pool is not None else ref.num_images,
        "evaluator": evaluator, "network": info,
        "metrics": score(sample_features, ref_set, labels, num_classes, device),
    }
    if with_noise_floor:
        report["noise_floor"] = noise_floor(ref_set, ref.labels, num_classes, device, num_images=len(samples))
    return report


def format_report(report: dict) -> str:
    """The metrics as aligned text lines, each beside its noise floor when one was computed."""
    names = {"fid": "FID", "sfid": "sFID", "inception_score": "Inception Score", "precision": "Precision",
             "recall": "Recall", "class_accuracy": "Class accuracy"}
    floor = report.get("noise_floor", {})
    lines = [f"{report['evaluator']} evaluator, {report['num_samples']} samples vs {report['num_reference']} reference images"]
    if floor:
        cut = (f" (capped at half the reference; the samples are {report['num_samples']})"
               if floor["capped"] else ", as many as the samples")
        lines.append(f"  [in brackets: noise floor = {floor['num_images']} real reference images{cut}, "
                     f"scored like the samples against the other {floor['num_reference']}]")
    for key, label in names.items():
        value = report["metrics"].get(key)
        if value is None:
            continue
        line = f"  {label:<16} {value:10.4f}"
        if floor.get(key) is not None:
            line += f"   [{floor[key]:.4f}]"
        lines.append(line)
    return "\n".join(lines)


def make_reference(out: str | Path, images: str | Path | None = None, dataset: str | None = None,
                   split: str = "test", data_root: str | Path | None = None, evaluators: tuple[str, ...] = ("inception",),
                   inception_weights: str | Path | None = None, fashion_evaluator: str | Path | None = None,
                   keep_images: bool = True, batch_size: int = 64, device: str | None = None,
                   overwrite: bool = False) -> Path:
    """Write a reference batch from an image ``.npz`` (``arr_0``) or a dataset split, with each evaluator's
    features. An existing file at ``out`` is replaced only with ``overwrite``."""
    if (images is None) == (dataset is None):
        raise DataError("give exactly one image source: an images .npz or a dataset")
    if isinstance(evaluators, str) or not evaluators:
        raise ConfigError(f"evaluators must be a non-empty tuple of names from {list(EVALUATORS)}, got {evaluators!r}")
    for evaluator in evaluators:
        _check_evaluator(evaluator, EVALUATORS)
    batch_size = positive_int(batch_size, "batch_size (--batch-size)")
    device = resolve_device(device)
    check_output_file(out, "reference batch", inputs=[images], overwrite=overwrite, usual_suffix=".npz")
    if dataset is not None:
        if dataset != "fashion-mnist":
            raise DataError(f"unknown dataset {dataset!r}; the built-in one is 'fashion-mnist'")
        from mirai.data.fashion_mnist import load_fashion_mnist
        from mirai.data.transforms import fashion_mnist_to_rgb

        grey, labels = load_fashion_mnist(split, root=data_root)
        source: NpzImages | np.ndarray = fashion_mnist_to_rgb(grey)
    else:
        source = NpzImages(images, what="image batch")
        labels = read_labels(images, len(source), "image batch")
    if len(source) < 2:
        raise DataError(f"{images or dataset} holds {len(source)} image(s); reference statistics need at least 2")
    height, width = source.resolution if isinstance(source, NpzImages) else source.shape[1:3]
    if "fashion" in evaluators and (height, width) != (32, 32):  # before any network is loaded
        raise DataError(f"the Fashion-MNIST evaluator takes 32×32 images; {images} holds {height}×{width}: pad "
                        "28×28 Fashion-MNIST by 2 pixels a side (mirai.data.transforms.fashion_mnist_to_rgb), "
                        "or use --evaluator inception")
    features, networks = {}, {}
    for evaluator in evaluators:
        network, info = load_network(evaluator, inception_weights, fashion_evaluator, device)
        features[evaluator] = FeatureSet.from_features(extract_features(network, source, batch_size, desc=evaluator))
        networks[evaluator] = info
        del network
    kept = None
    if keep_images:
        kept = source if isinstance(source, np.ndarray) else np.concatenate(list(source.batches(1024)))
    return write_reference(out, features, networks, images=kept, labels=labels)
