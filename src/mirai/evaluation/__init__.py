"""Sample-quality evaluation: ADM's metrics (FID, sFID, IS, precision/recall) and a Fashion-MNIST evaluator.

The evaluator network is ``mirai.models.fashion_classifier.FashionClassifier`` (re-exported
here); ``mirai.builders.evaluator`` trains it.
"""

from mirai.evaluation.metrics import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_stats,
    inception_score,
    manifold_radii,
    precision_recall,
)
from mirai.evaluation.fashion_classifier import default_evaluator_path, load_fashion_classifier
from mirai.evaluation.inception import InceptionV3Features, load_inception_state
from mirai.evaluation.reference import FeatureSet, NpzImages, Reference, read_reference, write_reference
from mirai.evaluation.suite import (
    evaluate,
    extract_features,
    format_report,
    load_network,
    make_reference,
    noise_floor,
    score,
)
from mirai.models.fashion_classifier import FashionClassifier

__all__ = [
    "FashionClassifier", "FeatureSet", "InceptionV3Features", "NpzImages", "Reference",
    "default_evaluator_path", "evaluate", "extract_features", "feature_statistics", "format_report",
    "frechet_distance", "frechet_distance_from_stats", "inception_score", "load_fashion_classifier",
    "load_inception_state", "load_network", "make_reference", "manifold_radii", "noise_floor",
    "precision_recall", "read_reference", "score", "write_reference",
]
