"""Metric maths against independent computations, the Inception features, and reference files."""

import json

import numpy as np
import pytest
import torch

from mirai.cli.main import main
from mirai.evaluation import (
    FeatureSet,
    InceptionV3Features,
    NpzImages,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_stats,
    inception_score,
    manifold_radii,
    precision_recall,
    read_reference,
    write_reference,
)
from mirai.evaluation import metrics


def gaussian(rng, n, d, mean=0.0, scale=1.0):
    return rng.standard_normal((n, d)) * scale + mean


# ---------------------------------------------------------------------------- FID
def independent_fid(a, b):
    """FID by hand: explicit covariances and tr sqrt(S1 S2) from a symmetric eigen-decomposition."""
    def stats(x):
        centred = x - x.mean(0)
        return x.mean(0), centred.T @ centred / (len(x) - 1)

    (m1, s1), (m2, s2) = stats(a), stats(b)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    # S1 S2 is similar to root1 S2 root1 (symmetric PSD), so the traces of their square roots agree.
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def test_fid_of_identical_sets_is_zero():
    feats = gaussian(np.random.default_rng(0), 400, 12)
    assert abs(frechet_distance(feats, feats)) < 1e-8


def test_fid_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
    got = frechet_distance_from_stats(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_fid_from_features_matches_independent_computation():
    rng = np.random.default_rng(1)
    a = gaussian(rng, 300, 8) @ rng.standard_normal((8, 8))
    b = gaussian(rng, 250, 8, mean=0.3, scale=1.5)
    assert frechet_distance(a, b) == pytest.approx(independent_fid(a, b), rel=1e-8)
    # Same numbers whether given features or statistics; torch tensors are accepted too.
    assert frechet_distance(torch.from_numpy(a), b) == pytest.approx(
        frechet_distance_from_stats(*feature_statistics(a), *feature_statistics(b)), rel=1e-12)


def test_fid_adds_eps_to_covariances_when_the_square_root_is_not_finite(monkeypatch):
    rng = np.random.default_rng(2)
    a, b = gaussian(rng, 50, 4), gaussian(rng, 50, 4, mean=1.0)
    real_sqrtm, calls = metrics.linalg.sqrtm, []

    def failing_once(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(metrics.linalg, "sqrtm", failing_once)
    with pytest.warns(UserWarning, match="singular"):
        got = frechet_distance(a, b)
    (_, s1), (_, s2) = feature_statistics(a), feature_statistics(b)
    eye = np.eye(4) * metrics.FID_EPS
    assert np.allclose(calls[1], (s1 + eye) @ (s2 + eye))
    assert got == pytest.approx(independent_fid(a, b), rel=1e-4)


def test_fid_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="differ"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


# ---------------------------------------------------------------------------- Inception Score
def test_inception_score_of_confident_balanced_predictions_is_the_class_count():
    labels = np.arange(700) % 7
    assert inception_score(1000.0 * np.eye(7)[labels]) == pytest.approx(7.0, rel=1e-9)
    assert inception_score(np.zeros((50, 7))) == pytest.approx(1.0)


def test_inception_score_matches_straightforward_computation_over_5000_chunks():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((12000, 10)) * 2
    expected = []
    for start in (0, 5000, 10000):  # ADM: consecutive chunks of 5000, the last one partial
        p = np.exp(logits[start:start + 5000])
        p /= p.sum(1, keepdims=True)
        kl = (p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1).mean()
        expected.append(np.exp(kl))
    assert inception_score(logits) == pytest.approx(np.mean(expected), rel=1e-9)


# ---------------------------------------------------------------------------- precision / recall
def brute_force_pr(real, fake, k=3):
    def sqdist(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    real_radii = np.sort(sqdist(real, real), axis=1)[:, k]
    fake_radii = np.sort(sqdist(fake, fake), axis=1)[:, k]
    precision = (sqdist(fake, real) <= real_radii[None, :]).any(1).mean()
    recall = (sqdist(real, fake) <= fake_radii[None, :]).any(1).mean()
    return precision, recall


def test_precision_recall_of_identical_sets_is_one_and_of_far_clusters_zero():
    feats = gaussian(np.random.default_rng(4), 200, 6)
    assert precision_recall(feats, feats) == (1.0, 1.0)
    assert precision_recall(feats, feats + 100.0) == (0.0, 0.0)


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(5)
    real = gaussian(rng, 90, 5).astype(np.float32)
    fake = gaussian(rng, 70, 5, mean=0.7, scale=0.6).astype(np.float32)
    precision, recall = precision_recall(real, fake)
    expected = brute_force_pr(real.astype(np.float64), fake.astype(np.float64))
    assert (precision, recall) == pytest.approx(expected, abs=1e-12)
    assert 0 < recall < precision <= 1  # a narrow fake set: mostly realistic, covering little


def test_manifold_radii_are_the_kth_neighbour_distance_whatever_the_block_size():
    feats = torch.from_numpy(gaussian(np.random.default_rng(6), 40, 3).astype(np.float32))
    full = torch.cdist(feats, feats).square().sort(dim=1).values[:, 3]
    assert torch.allclose(manifold_radii(feats, k=3, block=7), full, atol=1e-4)
    assert torch.equal(manifold_radii(feats, k=3, block=7), manifold_radii(feats, k=3, block=1000))


# ---------------------------------------------------------------------------- Inception network
@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory):
    """torch-fidelity's Inception with random (variance-preserving) weights, saved locally: no download."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
    from safetensors.torch import save_file

    with mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None):
        net = tf_inception.FeatureExtractorInceptionV3("random", ["2048"])
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):  # keep activations O(1) through 90-odd layers
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "inception_random.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_inception_returns_pool_unbiased_logits_and_nhwc_spatial_features(random_inception_weights):
    net = InceptionV3Features(random_inception_weights)
    captured = []
    net.net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.append(o.clone()))
    images = torch.randint(0, 256, (2, 40, 48, 3), dtype=torch.uint8)
    out = net.extract(images)
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert out["spatial"].shape == (2, 17 * 17 * 7)
    assert out["pool"].abs().mean() > 1e-3  # not a degenerate all-zero network
    full = captured[0]  # (2, 192, 17, 17): mixed_6/conv; ADM keeps channels 0..6, flattened as NHWC
    assert torch.equal(out["spatial"], full[:, :7].permute(0, 2, 3, 1).reshape(2, -1))
    assert torch.allclose(out["logits"], out["pool"] @ net.net.fc.weight.T, atol=1e-4)
    assert not torch.allclose(out["logits"], net.net.fc(out["pool"]), atol=1e-4)  # ADM drops the bias
    assert torch.equal(net.extract(images.numpy())["pool"], out["pool"])  # NumPy images as mirai.evaluation holds them


def test_inception_reads_pth_weights_with_weights_only(random_inception_weights, tmp_path):
    from safetensors.torch import load_file

    from mirai.errors import CheckpointError

    state = load_file(str(random_inception_weights))
    torch.save(state, tmp_path / "w.pth")
    loaded = InceptionV3Features(tmp_path / "w.pth").net.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    torch.save({"not": "weights"}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError):
        InceptionV3Features(tmp_path / "bad.pth")


def write_batch(path, n, size, seed):
    rng = np.random.default_rng(seed)
    np.savez(path, arr_0=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), labels=np.arange(n) % 10)


@pytest.mark.slow
def test_inception_evaluation_end_to_end(tmp_path, random_inception_weights, monkeypatch):
    weights = str(random_inception_weights)
    # A 2048-d Schur square root takes 10-60 s on a CPU; its maths is tested above on small
    # matrices, so here a stand-in records which statistics reach it.
    shapes = []
    monkeypatch.setattr(metrics.linalg, "sqrtm", lambda matrix: shapes.append(matrix.shape) or np.zeros_like(matrix))
    write_batch(tmp_path / "ref_images.npz", 4, 24, seed=0)  # precision/recall (k=3) needs 4 per set
    write_batch(tmp_path / "samples.npz", 4, 24, seed=1)
    assert main(["evaluate", "make-ref", "--images", str(tmp_path / "ref_images.npz"), "--inception-weights", weights,
                 "--out", str(tmp_path / "ref.npz"), "--batch-size", "4"]) == 0
    with np.load(tmp_path / "ref.npz") as raw:
        assert raw["mu"].shape == (2048,) and raw["sigma_s"].shape == (2023, 2023) and raw["pool"].shape == (4, 2048)
    assert main(["evaluate", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"),
                 "--inception-weights", weights, "--out", str(tmp_path / "m.json"), "--batch-size", "4"]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["evaluator"] == "inception" and "noise_floor" not in report
    for key in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert np.isfinite(report["metrics"][key]), key
    assert report["metrics"]["fid"] > 0 and report["metrics"]["class_accuracy"] is None
    assert shapes == [(2048, 2048), (2023, 2023)]  # FID on pool_3, sFID on mixed_6/conv[..., :7]


# ---------------------------------------------------------------------------- reference files
def test_reference_round_trip_uses_adm_key_names(tmp_path):
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    inception = FeatureSet.from_features({"pool": rng.standard_normal((10, 4)), "spatial": rng.standard_normal((10, 3)),
                                          "logits": rng.standard_normal((10, 5))})
    fashion = FeatureSet.from_features({"pool": rng.standard_normal((10, 2)), "logits": rng.standard_normal((10, 3))})
    networks = {"inception": {"fingerprint": "abc"}, "fashion": {"fingerprint": "def"}}
    path = write_reference(tmp_path / "ref.npz", {"inception": inception, "fashion": fashion}, networks,
                           images=images, labels=np.arange(10) % 3)
    with np.load(path) as raw:
        assert set(raw.files) == {"arr_0", "labels", "meta", "mu", "sigma", "mu_s", "sigma_s", "pool", "logits",
                                  "fashion_mu", "fashion_sigma", "fashion_pool", "fashion_logits"}
        assert raw["sigma"].shape == (4, 4) and raw["sigma_s"].shape == (3, 3)
        assert json.loads(str(raw["meta"]))["networks"] == networks
    ref = read_reference(path)
    assert ref.num_images == 10 and ref.resolution == (8, 8) and ref.networks == networks
    assert np.array_equal(ref.labels, np.arange(10) % 3)
    assert np.array_equal(ref.features["inception"].mu_s, inception.mu_s)
    assert np.array_equal(ref.features["fashion"].pool, fashion.pool) and ref.features["fashion"].mu_s is None
    assert np.array_equal(np.concatenate(list(ref.images().batches(3))), images)


def test_reads_an_adm_reference_batch(tmp_path):
    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    mu, sigma = rng.standard_normal(5), np.eye(5)
    np.savez(tmp_path / "VIRTUAL_tiny.npz", arr_0=images, mu=mu, sigma=sigma, mu_s=mu[:3], sigma_s=np.eye(3))
    ref = read_reference(tmp_path / "VIRTUAL_tiny.npz")
    stats = ref.features["inception"]
    assert np.array_equal(stats.mu, mu) and stats.sigma_s.shape == (3, 3)
    assert stats.pool is None and ref.labels is None and ref.networks == {}
    assert "fashion" not in ref.features


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_images_stream_in_order(tmp_path, save):
    images = np.random.default_rng(9).integers(0, 256, (11, 5, 6, 3), dtype=np.uint8)
    save(tmp_path / "s.npz", arr_0=images, labels=np.arange(11))
    reader = NpzImages(tmp_path / "s.npz")
    batches = list(reader.batches(4))
    assert [len(b) for b in batches] == [4, 4, 3] and reader.resolution == (5, 6)
    assert np.array_equal(np.concatenate(batches), images)


def test_npz_images_reject_wrong_layouts(tmp_path):
    from mirai.errors import DataError

    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 4, 4, 3), dtype=np.float32))
    np.savez(tmp_path / "n.npz", images=np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="uint8"):
        NpzImages(tmp_path / "f.npz")
    with pytest.raises(DataError, match="arr_0"):
        NpzImages(tmp_path / "n.npz")


class MeanColour(torch.nn.Module):
    """A stand-in feature network: per-image mean colour as 'pool', no spatial features."""

    name = "inception"

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def extract(self, images):
        pool = images.float().mean(dim=(1, 2)) * self.scale
        return {"pool": pool, "logits": pool}


def test_reference_features_keep_adm_statistics_and_compute_activations_from_images(tmp_path):
    from mirai.evaluation.suite import reference_features

    images = np.random.default_rng(10).integers(0, 256, (9, 4, 4, 3), dtype=np.uint8)
    mu, sigma = np.array([1.0, 2.0, 3.0]), np.eye(3)
    np.savez(tmp_path / "adm.npz", arr_0=images, mu=mu, sigma=sigma)
    got = reference_features(read_reference(tmp_path / "adm.npz"), MeanColour(), {"fingerprint": "x"}, batch_size=4)
    assert np.array_equal(got.mu, mu) and np.array_equal(got.sigma, sigma)  # ADM's numbers, untouched
    assert np.allclose(got.pool, images.mean(axis=(1, 2)))  # activations for precision/recall


def test_reference_features_recompute_when_made_by_other_weights(tmp_path):
    from mirai.evaluation.suite import reference_features

    images = np.random.default_rng(11).integers(0, 256, (9, 4, 4, 3), dtype=np.uint8)
    stale = FeatureSet.from_features({"pool": np.zeros((9, 3)) + np.arange(9)[:, None]})
    write_reference(tmp_path / "ref.npz", {"inception": stale}, {"inception": {"fingerprint": "old"}}, images=images)
    ref = read_reference(tmp_path / "ref.npz")
    assert reference_features(ref, MeanColour(), {"fingerprint": "old"}).pool is not None
    assert np.array_equal(reference_features(ref, MeanColour(), {"fingerprint": "old"}).pool, stale.pool)
    with pytest.warns(UserWarning, match="other weights"):
        fresh = reference_features(ref, MeanColour(), {"fingerprint": "new"})
    assert np.allclose(fresh.pool, images.mean(axis=(1, 2)))


# ---------------------------------------------------------------------------- unreadable .npz files
GOOD = np.zeros((3, 4, 4, 3), np.uint8)


def _bad_npz(path, case):
    """Write the ``case`` of broken batch at ``path`` (see BAD_BATCHES)."""
    if case == "missing":
        return
    if case == "directory":
        path.mkdir()
    elif case in ("text", "empty"):
        path.write_text("not an npz\n" if case == "text" else "")
    elif case == "npy":
        with open(path, "wb") as fh:
            np.save(fh, GOOD)
    elif case == "truncated":
        np.savez_compressed(path, arr_0=np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        arrays = {"pickled": {"arr_0": np.array([{"x": 1}], dtype=object)},
                  "pickled-labels": {"arr_0": GOOD, "labels": np.array([None, 1, 2], dtype=object)},
                  "float-labels": {"arr_0": GOOD, "labels": np.array([0.5, 1, 2])},
                  "short-labels": {"arr_0": GOOD, "labels": np.arange(2)},
                  "no-arr_0": {"images": GOOD}, "float": {"arr_0": GOOD.astype(np.float32)},
                  "grey": {"arr_0": GOOD[..., 0]}, "rgba": {"arr_0": np.zeros((3, 4, 4, 4), np.uint8)},
                  "empty-batch": {"arr_0": GOOD[:0]}}[case]
        np.savez(path, **arrays)


IMAGES_4D = "uint8 \\(N, H, W, 3\\)"
BAD_BATCHES = {"missing": "does not exist", "directory": "is a directory", "text": "is not an .npz archive",
               "empty": "is not an .npz archive", "npy": "single .npy array", "truncated": "cannot be read|truncated",
               "pickled": "cannot be read.*no object arrays", "pickled-labels": "'labels'.*cannot be read",
               "float-labels": "labels.*must be integers", "short-labels": "2 entries but there are 3 images",
               "no-arr_0": "no 'arr_0' array|neither images \\('arr_0'", "float": IMAGES_4D, "grey": IMAGES_4D,
               "rgba": IMAGES_4D, "empty-batch": r"holds no images \(shape \(0, "}


@pytest.mark.parametrize("case", BAD_BATCHES)
def test_every_bad_batch_is_one_data_error_naming_the_file(tmp_path, case):
    from mirai.errors import DataError
    from mirai.evaluation.reference import read_labels

    path = tmp_path / "batch.npz"
    _bad_npz(path, case)

    def read():
        images = NpzImages(path)
        read_labels(path, len(images))
        np.concatenate(list(images.batches(7)))

    for reader in (read, lambda: read_reference(path)):
        with pytest.raises(DataError, match=BAD_BATCHES[case]) as caught:
            reader()
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("arrays, match", [
    ({"mu": np.zeros(3)}, "'mu' without 'sigma'"), ({"mu": np.zeros(3), "sigma": np.eye(2)}, "does not match"),
    ({"mu": np.array([np.nan, 0]), "sigma": np.eye(2)}, "finite 1-D"),
    ({"mu": np.array(["a", "b"]), "sigma": np.eye(2)}, "finite 1-D"),
    ({"fashion_mu": np.zeros(2), "fashion_sigma": np.eye(2), "fashion_pool": np.zeros((5, 3))}, "3 features"),
    ({"mu": np.zeros(2), "sigma": np.eye(2), "meta": np.array("{not json")}, "'meta' is not the JSON"),
    ({"mu": np.zeros(2), "sigma": np.eye(2), "meta": np.array([{"x": 1}], dtype=object)}, "'meta'.*cannot be read"),
])
def test_bad_reference_statistics_are_refused(tmp_path, arrays, match):
    from mirai.errors import DataError

    np.savez(tmp_path / "ref.npz", **arrays)
    with pytest.raises(DataError, match=match):
        read_reference(tmp_path / "ref.npz")
