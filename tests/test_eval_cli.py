"""``mirai evaluate`` end to end, and the committed Fashion-MNIST evaluator."""

import json

import numpy as np
import pytest
import torch

from mirai import checkpoint
from mirai.cli.main import main
from mirai.errors import CheckpointError, ConfigError, DataError
from mirai.evaluation import load_fashion_classifier, read_reference
from mirai.models.fashion_classifier import FashionClassifier

def write_batch(path, n, size, seed, num_classes=10):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % num_classes
    np.savez(path, arr_0=images, labels=labels, tokens=np.zeros((n, 4), dtype=np.int64))
    return images, labels


@pytest.fixture
def random_fashion_evaluator(tmp_path):
    path = tmp_path / "fashion_eval"
    checkpoint.save(path, FashionClassifier().eval())
    return path


def test_fashion_evaluation_end_to_end(tmp_path, random_fashion_evaluator, capsys):
    write_batch(tmp_path / "ref_images.npz", 40, 32, seed=0)
    write_batch(tmp_path / "samples.npz", 24, 32, seed=1)
    assert main(["evaluate", "make-ref", "--images", str(tmp_path / "ref_images.npz"), "--evaluator", "fashion",
                 "--fashion-evaluator", str(random_fashion_evaluator), "--out", str(tmp_path / "ref.npz")]) == 0
    ref = read_reference(tmp_path / "ref.npz")
    assert ref.features["fashion"].pool.shape == (40, 128) and "inception" not in ref.features
    # Options before the samples path work too; the evaluator is auto-detected (32×32 + fashion statistics).
    assert main(["evaluate", "--ref", str(tmp_path / "ref.npz"), str(tmp_path / "samples.npz"),
                 "--fashion-evaluator", str(random_fashion_evaluator), "--out", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["evaluator"] == "fashion" and report["num_samples"] == 24 and report["num_reference"] == 40
    values = report["metrics"]
    assert values["sfid"] is None
    for key in ("fid", "inception_score", "precision", "recall", "class_accuracy"):
        assert np.isfinite(values[key]), key
    assert 1.0 <= values["inception_score"] <= 10.0 and 0.0 <= values["class_accuracy"] <= 1.0
    floor = report["noise_floor"]
    # As many real images as samples (24), capped at half the 40-image reference.
    assert (floor["num_images"], floor["num_reference"], floor["capped"]) == (20, 20, True)
    assert np.isfinite(floor["fid"])
    printed = capsys.readouterr().out
    assert "FID" in printed and "noise floor" in printed and "Class accuracy" in printed

    # The class accuracy is the agreement of the classifier's arg-max with the stored labels.
    model = load_fashion_classifier(random_fashion_evaluator)
    with np.load(tmp_path / "samples.npz") as raw:
        predicted = model(torch.from_numpy(raw["arr_0"])).argmax(1).numpy()
        assert values["class_accuracy"] == pytest.approx(np.mean(predicted == raw["labels"]))
        # The evaluator takes NumPy arrays as mirai.evaluation holds images, and refuses other pixel types.
        as_tensor = model.extract(torch.from_numpy(raw["arr_0"]))["logits"]
        assert torch.equal(model.extract(raw["arr_0"])["logits"], as_tensor)
        with pytest.raises(ValueError, match=r"takes uint8 \(N, 32, 32, 3\) images, got ndarray of float32.*np.clip"):
            model.extract(raw["arr_0"].astype(np.float32))
        with pytest.raises(ValueError, match=r"images, got list of torch.int64 \(1, 2\)"):  # named, not an AttributeError
            model.extract([[1, 2]])


def test_evaluate_writes_its_metrics_beside_the_samples_by_default(tmp_path, random_fashion_evaluator, capsys):
    write_batch(tmp_path / "ref_images.npz", 40, 32, seed=0)
    (tmp_path / "run").mkdir()
    write_batch(tmp_path / "run" / "samples.npz", 10, 32, seed=1)
    assert main(["evaluate", "make-ref", "--images", str(tmp_path / "ref_images.npz"), "--evaluator", "fashion",
                 "--fashion-evaluator", str(random_fashion_evaluator), "--out", str(tmp_path / "ref.npz")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run" / "samples.npz"), "--ref", str(tmp_path / "ref.npz"),
                 "--fashion-evaluator", str(random_fashion_evaluator)]) == 0
    default = tmp_path / "run" / "samples.metrics.json"
    assert f"wrote the metrics to {default}" in capsys.readouterr().out
    report = json.loads(default.read_text())
    assert report["num_samples"] == 10 and np.isfinite(report["metrics"]["fid"])
    # The floor is taken at the sample count: 10 real images, not half of the 40-image reference.
    assert (report["noise_floor"]["num_images"], report["noise_floor"]["num_reference"]) == (10, 30)
    # Scoring again replaces its own report; any other file at --out only with --overwrite.
    score = ["evaluate", str(tmp_path / "run" / "samples.npz"), "--ref", str(tmp_path / "ref.npz"),
             "--fashion-evaluator", str(random_fashion_evaluator)]
    capsys.readouterr()
    assert main(score + ["--inception-weights", str(tmp_path / "ref.npz")]) == 0  # read by the other evaluator only
    assert "note: inception_weights (--inception-weights) is not used: the samples are scored with the fashion" \
        in capsys.readouterr().err
    notes = tmp_path / "run" / "notes.json"
    notes.write_text('{"mine": 1}')
    assert main(score + ["--out", str(notes)]) == 1 and notes.read_text() == '{"mine": 1}'
    assert main(score + ["--out", str(notes), "--overwrite"]) == 0 and json.loads(notes.read_text())["metrics"]


def test_evaluate_refuses_statistics_from_other_weights_without_images(tmp_path, random_fashion_evaluator, capsys):
    write_batch(tmp_path / "ref_images.npz", 12, 32, seed=0)
    write_batch(tmp_path / "samples.npz", 6, 32, seed=1)
    main(["evaluate", "make-ref", "--images", str(tmp_path / "ref_images.npz"), "--evaluator", "fashion", "--no-images",
          "--fashion-evaluator", str(random_fashion_evaluator), "--out", str(tmp_path / "ref.npz")])
    other = tmp_path / "other_eval"
    checkpoint.save(other, FashionClassifier().eval())  # different random weights
    assert main(["evaluate", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"),
                 "--fashion-evaluator", str(other)]) == 1
    assert "other weights" in capsys.readouterr().err


def test_fashion_evaluator_rejects_other_resolutions(tmp_path, random_fashion_evaluator):
    from mirai.evaluation import evaluate

    write_batch(tmp_path / "ref_images.npz", 12, 32, seed=0)
    write_batch(tmp_path / "samples.npz", 6, 16, seed=1)
    main(["evaluate", "make-ref", "--images", str(tmp_path / "ref_images.npz"), "--evaluator", "fashion",
          "--fashion-evaluator", str(random_fashion_evaluator), "--out", str(tmp_path / "ref.npz")])
    with pytest.raises(DataError, match="32×32.*--image-size-eval 32"):  # the error gives the way out
        evaluate(tmp_path / "samples.npz", tmp_path / "ref.npz", evaluator="fashion",
                 fashion_evaluator=random_fashion_evaluator, device="cpu", log=lambda text: None)
    # The automatic choice does not switch to Inception behind the user's back: it names both ways out.
    with pytest.raises(DataError, match="Fashion-MNIST statistics, but the samples are 16×16.*--image-size-eval 32, "
                                        "or choose --evaluator inception"):
        evaluate(tmp_path / "samples.npz", tmp_path / "ref.npz", device="cpu", log=lambda text: None)
    main(["evaluate", "make-ref", "--images", str(tmp_path / "ref_images.npz"), "--evaluator", "fashion", "--no-images",
          "--fashion-evaluator", str(random_fashion_evaluator), "--out", str(tmp_path / "stats_only.npz")])
    with pytest.raises(DataError, match=r"--image-size-eval 32$"):  # no images: Inception is no way out there
        evaluate(tmp_path / "samples.npz", tmp_path / "stats_only.npz", device="cpu", log=lambda text: None)
    # Inception chosen (not at hand offline): the size note comes first.
    notes = []
    with pytest.raises(CheckpointError, match="missing.pth"):
        evaluate(tmp_path / "samples.npz", tmp_path / "ref.npz", evaluator="inception",
                 inception_weights=tmp_path / "missing.pth", device="cpu", log=notes.append)
    assert notes and "--image-size-eval 32" in notes[0]
    report = evaluate(tmp_path / "samples.npz", tmp_path / "ref.npz", fashion_evaluator=random_fashion_evaluator,
                      device="cpu", log=lambda text: None, image_size_eval=32, with_noise_floor=False)
    assert report["evaluator"] == "fashion" and report["num_samples"] == 6
    with pytest.raises(ConfigError, match="at most 4096"):  # a typo is refused before anything is read
        evaluate(tmp_path / "samples.npz", tmp_path / "ref.npz", device="cpu", image_size_eval=100000)


def fashion_split(split):
    from mirai.data.fashion_mnist import load_fashion_mnist
    from mirai.data.transforms import fashion_mnist_to_rgb

    try:
        images, labels = load_fashion_mnist(split)
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    return fashion_mnist_to_rgb(images), labels


def test_committed_fashion_evaluator_classifies_real_test_images():
    images, labels = fashion_split("test")
    model = load_fashion_classifier()
    with torch.no_grad():
        predicted = model(torch.from_numpy(images[:2000])).argmax(1).numpy()
    assert np.mean(predicted == labels[:2000]) > 0.9


def test_committed_evaluator_scores_real_images_near_the_noise_floor(tmp_path, monkeypatch):
    import mirai.data.fashion_mnist as fashion_mnist

    images, labels = fashion_split("train")  # real "samples" that are not in the (test-set) reference
    full = fashion_mnist.load_fashion_mnist  # a 3000-image reference keeps the test fast
    monkeypatch.setattr(fashion_mnist, "load_fashion_mnist", lambda split, root=None: tuple(
        array[:3000] for array in full(split, root)))
    assert main(["evaluate", "make-ref", "--dataset", "fashion-mnist", "--split", "test", "--no-images",
                 "--device", "cpu", "--batch-size", "1000", "--out", str(tmp_path / "ref.npz")]) == 0
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "real.npz", arr_0=images[:1000], labels=labels[:1000])
    np.savez(tmp_path / "noise.npz", arr_0=rng.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8), labels=labels[:1000])
    reports = {}
    for name, floor_flag in (("real", []), ("noise", ["--no-noise-floor"])):
        assert main(["evaluate", str(tmp_path / f"{name}.npz"), "--ref", str(tmp_path / "ref.npz"), "--device", "cpu",
                     "--batch-size", "1000", "--out", str(tmp_path / f"{name}.json"), *floor_flag]) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    real, noise = reports["real"]["metrics"], reports["noise"]["metrics"]
    floor = reports["real"]["noise_floor"]
    assert "noise_floor" not in reports["noise"]
    assert (floor["num_images"], floor["num_reference"]) == (1000, 2000) and floor["class_accuracy"] > 0.9
    assert real["class_accuracy"] > 0.9 and noise["class_accuracy"] < 0.3
    assert real["fid"] < 5 * floor["fid"] + 1 < noise["fid"]
    # Noise lands in one clump that the widest reference balls may cover (so its precision is not
    # a reliable signal), but it covers none of the reference: recall separates it.
    assert real["recall"] > 0.5 and noise["recall"] < 0.05 and real["precision"] > 0.5


def test_make_ref_replaces_an_existing_reference_only_with_overwrite(tmp_path, random_fashion_evaluator, capsys):
    write_batch(tmp_path / "a.npz", 8, 32, seed=0)
    write_batch(tmp_path / "b.npz", 8, 32, seed=1)
    argv = ["evaluate", "make-ref", "--evaluator", "fashion", "--fashion-evaluator", str(random_fashion_evaluator),
            "--device", "cpu", "--out", str(tmp_path / "ref.npz")]
    assert main(argv + ["--images", str(tmp_path / "a.npz")]) == 0
    first = (tmp_path / "ref.npz").read_bytes()
    assert main(argv + ["--images", str(tmp_path / "b.npz")]) == 1
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "ref.npz").read_bytes() == first
    assert main(argv + ["--images", str(tmp_path / "b.npz"), "--overwrite"]) == 0
    with np.load(tmp_path / "ref.npz") as raw, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(raw["arr_0"], b["arr_0"])


def test_a_reference_without_statistics_is_said_to_be_scored_with_inception(tmp_path, monkeypatch):
    """Images only (no make-ref statistics): the auto choice is the Inception network, which a Fashion-MNIST user
    may not expect and which needs its weights; the note comes before they are loaded."""
    from mirai.evaluation import suite

    write_batch(tmp_path / "ref_images.npz", 12, 32, seed=0)
    write_batch(tmp_path / "samples.npz", 6, 32, seed=1)
    monkeypatch.setattr(suite, "load_network", lambda *a, **k: (_ for _ in ()).throw(ConfigError("no network here")))
    notes = []
    with pytest.raises(ConfigError, match="no network here"):
        suite.evaluate(tmp_path / "samples.npz", tmp_path / "ref_images.npz", log=notes.append)
    assert any("holds no precomputed statistics, so its images are scored with the Inception" in n for n in notes)
