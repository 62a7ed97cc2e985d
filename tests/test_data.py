"""Datasets, views, the code store and the `mirai extract` / `mirai data check` commands."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mirai import checkpoint
from mirai.cli.main import main
from mirai.data import fashion_mnist as fm
from mirai.data.codes import CodeStore, code_dtype, epoch_views, extract, random_view
from mirai.data.folders import ImageFolder
from mirai.data.transforms import (
    fashion_mnist_to_rgb,
    to_model_range,
    to_unit_range,
)
from mirai.data.views import ViewSpec, center_crop_arr, render_view, render_views
from mirai.errors import ConfigError, DataError
from mirai.models import build_vq

HAVE_FASHION_MNIST = all((fm.DEBIAN_ROOT / f"{s}.gz").is_file() for pair in fm.FILES.values() for s in pair)
needs_fashion_mnist = pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="dataset-fashion-mnist not installed")


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# ------------------------------------------------------------------------------------ IDX files
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    shorts = np.array([[-300, 2], [7, 32000]], dtype=np.int16)
    for name, array, code in [("a-idx3-ubyte", images, 0x08), ("b-idx2-short", shorts, 0x0B)]:
        data = idx_bytes(array, code)
        path = tmp_path / (name + (".gz" if compress else ""))
        path.write_bytes(gzip.compress(data) if compress else data)
        out = fm.parse_idx(fm.read_idx_bytes(path), str(path))
        assert out.shape == array.shape and np.array_equal(out, array)
        assert out.dtype.isnative


def test_idx_errors_name_the_file(tmp_path):
    good = idx_bytes(np.zeros((3, 4, 4), np.uint8), 0x08)
    cases = {
        "truncated": good[:-5],
        "too-long": good + b"\0",
        "magic": b"\x01" + good[1:],
        "dtype": good[:2] + b"\x42" + good[3:],
        "header": good[:9],
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}-idx3-ubyte"
        path.write_bytes(data)
        with pytest.raises(DataError, match=name):
            fm.parse_idx(fm.read_idx_bytes(path), str(path))
    bad_gzip = tmp_path / "cut.gz"
    bad_gzip.write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(DataError, match="cut.gz.*(corrupt|truncated)"):
        fm.parse_idx(fm.read_idx_bytes(bad_gzip), str(bad_gzip))


def test_missing_dataset_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path))
    with pytest.raises(DataError, match=f"apt-get install dataset-fashion-mnist.*{fm.ENV_VAR}"):
        fm.load_fashion_mnist("test")
    monkeypatch.delenv(fm.ENV_VAR)
    monkeypatch.setattr(fm, "DEBIAN_ROOT", tmp_path / "none")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fm.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="downloading .*no network.*apt-get install"):
        fm.load_fashion_mnist("train")


def test_download_rejects_bad_checksum(tmp_path, monkeypatch):
    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return b"not the file"

    monkeypatch.setattr(fm.urllib.request, "urlopen", lambda url, timeout: Response())
    with pytest.raises(DataError, match="MD5"):
        fm.download(tmp_path)
    assert not list(tmp_path.glob("*.gz"))  # nothing half-good left behind


def test_foreign_idx_files_are_refused(tmp_path):
    for split, n in [("train", 3), ("test", 2)]:
        images_stem, labels_stem = fm.FILES[split]
        (tmp_path / images_stem).write_bytes(idx_bytes(np.zeros((n, 28, 28), np.uint8), 0x08))
        (tmp_path / labels_stem).write_bytes(idx_bytes(np.zeros(n, np.uint8), 0x08))
    with pytest.raises(DataError, match="not the official Fashion-MNIST"):
        fm.load_fashion_mnist("test", root=tmp_path)


@needs_fashion_mnist
def test_real_fashion_mnist():
    images, labels = fm.load_fashion_mnist("test", root=fm.DEBIAN_ROOT)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.array_equal(np.bincount(labels), [1000] * 10)
    subset = fm.FashionMNIST("test", per_class=2)
    assert len(subset) == 20 and np.array_equal(np.bincount(subset.labels), [2] * 10)
    first_bag = np.flatnonzero(labels == 8)[0]
    assert np.array_equal(subset.images[subset.labels == 8][0], images[first_bag])
    assert subset.image(0).shape == (32, 32, 3)
    with pytest.raises(DataError, match="--per-class 1001 is more than the 1000 images of each class.*at most 1000"):
        fm.FashionMNIST("test", per_class=1001)


# ------------------------------------------------------------------------------------ class folders
def make_folder(root, classes, per_class, size=(24, 20), seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        for i in range(per_class):
            folder = root / c / ("nested" if i == 0 else "")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return root


def test_class_folders(tmp_path):
    root = make_folder(tmp_path / "data", ["zebra", "ant", "moth"], 3)
    (root / "ant" / "notes.txt").write_text("not an image")
    Image.fromarray(np.full((6, 7), 9, np.uint8)).save(root / "moth" / "grey.png")
    Image.fromarray(np.full((6, 7, 4), 200, np.uint8)).save(root / "zebra" / "alpha.PNG")
    data = ImageFolder.scan(root, num_classes=3)
    assert data.class_names == ["ant", "moth", "zebra"]
    assert len(data) == 11 and np.array_equal(np.bincount(data.labels), [3, 4, 4])
    assert data.files[:3] == ["ant/img1.png", "ant/img2.png", "ant/nested/img0.png"]
    grey = data.image(data.files.index("moth/grey.png"))
    assert grey.shape == (6, 7, 3) and (grey == 9).all()
    assert data.image(data.files.index("zebra/alpha.PNG")).shape == (6, 7, 3)

    subset = ImageFolder.scan(root, per_class=2)
    assert subset.files == ["ant/img1.png", "ant/img2.png", "moth/grey.png", "moth/img1.png",
                            "zebra/alpha.PNG", "zebra/img1.png"]
    again = ImageFolder.from_files(root, subset.class_names, subset.files)
    assert np.array_equal(again.labels, subset.labels)

    with pytest.raises(DataError, match="3 class folders but 1000"):
        ImageFolder.scan(root, num_classes=1000)
    (root / "moth" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    broken = ImageFolder.scan(root)
    with pytest.raises(DataError, match="broken.jpg"):
        broken.image(broken.files.index("moth/broken.jpg"))
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no images"):
        ImageFolder.scan(root)


# ------------------------------------------------------------------------------------ views
def test_ten_crops_by_hand():
    # An 11x11 image with crop ratio 11/8 is its own centre crop, so the views are plain slices.
    img = np.random.default_rng(2).integers(0, 256, (11, 11, 3), dtype=np.uint8)
    spec = ViewSpec("ten_crop", image_size=8, crop_ratio=1.4)
    assert spec.crop_size == 11 and spec.num_views == 10
    mirror = img[:, ::-1]
    expected = [img[:8, :8], img[:8, 3:], img[3:, :8], img[3:, 3:], img[2:10, 2:10],
                mirror[:8, :8], mirror[:8, 3:], mirror[3:, :8], mirror[3:, 3:], mirror[2:10, 2:10]]
    views = render_views(img, spec)
    for v, want in enumerate(expected):
        assert np.array_equal(views[v], want), f"view {v}"
        assert np.array_equal(render_view(img, v, spec), want)
    # Mirrored crops are crops of the mirror: with an odd margin the centre one moves by a pixel.
    assert np.array_equal(views[5], views[1][:, ::-1])
    assert not np.array_equal(views[9], views[4][:, ::-1])


def test_center_crop_arr_by_hand():
    # 2x2-constant blocks make the BOX halving exact: a 16x32 (w x h) image becomes 8x16, then the
    # central 8 rows are kept.
    small = np.random.default_rng(3).integers(0, 256, (16, 8, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    out = np.asarray(center_crop_arr(Image.fromarray(big), 8))
    assert np.array_equal(out, small[4:12])
    # LlamaGen's crop size truncates: 256 px at ratio 1.1 cuts from a 281 px square.
    assert ViewSpec("ten_crop", 256).crop_size == 281 and ViewSpec("ten_crop", 384).crop_size == 422


def test_views_match_torchvision_ten_crop():
    from torchvision.transforms import TenCrop

    img = np.random.default_rng(4).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    spec = ViewSpec("ten_crop", 16, crop_ratio=1.05)
    base = center_crop_arr(Image.fromarray(img), spec.crop_size)
    for mine, ref in zip(render_views(img, spec), TenCrop(16)(base)):
        assert np.array_equal(mine, np.asarray(ref))


def test_flip_views_and_spec():
    img = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    spec = ViewSpec("flip", 32)
    assert np.array_equal(render_view(img, 0, spec), img)
    assert np.array_equal(render_view(img, 1, spec), img[:, ::-1])
    assert ViewSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(IndexError):
        render_view(img, 2, spec)
    with pytest.raises(ConfigError, match="crop_ratio"):
        ViewSpec.from_dict({"kind": "ten_crop", "image_size": 8, "crop_ratio": 0.9})
    with pytest.raises(ConfigError):
        ViewSpec.from_dict({"kind": "five_crop", "image_size": 8})


# ------------------------------------------------------------------------------------ code store
@pytest.fixture
def tiny_vq():
    torch.manual_seed(0)
    return build_vq("VQ-Tiny", codebook_size=64, codebook_dim=4).eval()


@pytest.fixture
def folder_store(tmp_path, tiny_vq):
    source = ImageFolder.scan(make_folder(tmp_path / "data", ["b", "a", "c"], 2, size=(13, 17)))
    spec = ViewSpec("ten_crop", 8)
    store = extract(tiny_vq, source, spec, tmp_path / "store", batch_size=4, progress=False)
    return store, source, spec


def test_code_store_round_trip(folder_store, tiny_vq):
    store, source, spec = folder_store
    reopened = CodeStore.open(store.path)
    assert reopened.codes.shape == (6, 10, 4, 4) and reopened.codes.dtype == np.uint16
    assert isinstance(reopened.codes, np.memmap)
    unpickled = pickle.loads(pickle.dumps(reopened))
    assert isinstance(unpickled.codes, np.memmap) and np.array_equal(unpickled.codes, reopened.codes)
    assert np.array_equal(reopened.labels, source.labels)
    m = reopened.manifest
    assert (m["vocab_size"], m["grid_size"], m["num_classes"]) == (64, 4, 3)
    assert m["class_names"] == ["a", "b", "c"] and m["dataset"]["kind"] == "folder"
    assert reopened.view_spec == spec
    for i in range(len(source)):
        direct = tiny_vq.encode_to_indices(to_model_range(render_views(source.image(i), spec)))
        assert np.array_equal(reopened.codes[i], direct.numpy())
    for i, v in [(0, 0), (3, 7), (5, 9)]:
        pixels = reopened.source_image(i, v)
        assert np.array_equal(pixels, render_views(source.image(i), spec)[v])
        again = tiny_vq.encode_to_indices(to_model_range(pixels))[0]
        assert np.array_equal(again.numpy(), reopened.tokens(i, v))


def test_extract_replaces_only_a_code_store_and_only_when_asked(folder_store, tiny_vq, tmp_path):
    store, source, spec = folder_store
    run = tmp_path / "run"  # a folder of other work, e.g. a training run
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("notes")
    with pytest.raises(ConfigError, match="holds other files, not a code store; give a new directory"):
        extract(tiny_vq, source, spec, run, progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
    codes = store.path / "codes.npy"
    before = codes.read_bytes()
    with pytest.raises(ConfigError, match="already holds a code store; pass --overwrite \\(Python: overwrite=True\\)"):
        extract(tiny_vq, source, ViewSpec("flip", 8), store.path, progress=False)
    assert codes.read_bytes() == before
    replaced = extract(tiny_vq, source, ViewSpec("flip", 8), store.path, progress=False, overwrite=True)
    assert replaced.num_views == 2
    # overwrite replaces a code store only: not a folder whose manifest.json is another tool's, and not a
    # store beside files of the user's, which the replacement would delete.
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "my dataset"}')
    (other / "data.csv").write_text("1,2\n")
    (store.path / "notes.txt").write_text("keep")
    for folder, problem in [(other, "holds other files, not a code store"),
                            (store.path, r"holds a code store and other files \(notes.txt\), which replacing it would delete")]:
        with pytest.raises(ConfigError, match=problem):
            extract(tiny_vq, source, spec, folder, progress=False, overwrite=True)
    assert (other / "data.csv").is_file() and (store.path / "notes.txt").read_text() == "keep"


def test_store_validation_and_damage(folder_store):
    store, _, _ = folder_store
    store.validate(vocab_size=64, grid_size=4, num_classes=3)
    with pytest.raises(DataError, match="64-code tokenizer, config says vocab_size=1024.*mirai extract"):
        store.validate(vocab_size=1024)
    with pytest.raises(DataError, match="4x4 token grids.*grid_size=16.*--image-size 32"):
        store.validate(grid_size=16)
    with pytest.raises(DataError, match="3 classes, config says num_classes=10"):
        store.validate(num_classes=10)
    for sizes in ({"vocab_size": 1024}, {"grid_size": 16}, {"num_classes": 10}):  # a trained model's sizes are fixed
        with pytest.raises(DataError, match=r"the model in ck\.safetensors has .*extract") as caught:
            store.validate(**sizes, model="ck.safetensors")
        assert "set model." not in str(caught.value)
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest["num_images"] = 7
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="damaged"):
        CodeStore.open(store.path)
    (store.path / "manifest.json").unlink()
    with pytest.raises(DataError, match="not a code store.*mirai extract"):
        CodeStore.open(store.path)
    assert code_dtype(65536) == np.uint16 and code_dtype(65537) == np.int32


def test_random_view_per_epoch(folder_store):
    store, _, _ = folder_store
    views_a = epoch_views(3, 2, len(store), 10)
    assert views_a.tolist() == [random_view(3, 2, i, 10) for i in range(len(store))]
    assert np.array_equal(views_a, epoch_views(3, 2, len(store), 10))  # a pure function of its arguments
    assert not np.array_equal(views_a, epoch_views(3, 3, len(store), 10))
    assert not np.array_equal(epoch_views(3, 2, 50, 10), epoch_views(4, 2, 50, 10))
    counts = np.bincount(epoch_views(0, 0, 5000, 10), minlength=10)
    assert counts.min() > 400  # every view is used about equally often
    assert random_view(-1, 7, 12345, 10) == epoch_views(-1, 7, 12346, 10)[-1]

    view = int(views_a[4])
    image = to_unit_range(store.source_image(4, view))[0]
    batch = store.source_images([4, 0], [view, 9])
    assert batch.shape == (2, 3, 8, 8) and torch.equal(batch[0], image)


# ------------------------------------------------------------------------------------ CLI
def test_cli_extract_and_check(tmp_path, tiny_vq, capsys):
    root = make_folder(tmp_path / "data", ["x", "y"], 3, size=(20, 26))
    vq_dir = checkpoint.save(tmp_path / "vq", tiny_vq)
    out = tmp_path / "codes"
    args = ["extract", "--tokenizer", str(vq_dir), "--dataset", "folder", "--root", str(root),
            "--image-size", "8", "--per-class", "2", "--num-classes", "2", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    store = CodeStore.open(out)
    assert store.codes.shape == (4, 10, 4, 4) and store.manifest["dataset"]["per_class"] == 2
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(args[:-4] + ["--out", str(tmp_path / "data"), "--device", "cpu"]) == 1
    assert "not a code store" in capsys.readouterr().err

    png = tmp_path / "check.png"
    assert main(["data", "check", str(out), "--n", "3", "--nrow", "2", "--out", str(png)]) == 0
    assert "match 100.00%" in capsys.readouterr().out
    # Two rows of sources alternating with two rows of decodings, 2 images wide, 2 px padding.
    assert Image.open(png).size == (2 * 10 + 2, 4 * 10 + 2)

    other = checkpoint.save(tmp_path / "vq2", build_vq("VQ-Tiny", codebook_size=64, codebook_dim=4))
    assert main(["data", "check", str(out), "--tokenizer", str(other), "--out", str(png)]) == 1
    assert "weights differ" in capsys.readouterr().err
    assert store.load_tokenizer() is not None
    with pytest.warns(UserWarning, match="weights differ"):
        assert store.load_tokenizer(other) is None
    with pytest.raises(DataError, match="tokenizer fashion/vq16 is not the one"):  # an asset name exists too
        store.load_tokenizer("fashion/vq16", strict=True)
    vq_dir.rename(tmp_path / "moved")
    with pytest.raises(DataError, match="not available"):
        store.load_tokenizer(strict=True)
    with pytest.warns(UserWarning, match="not available"):
        assert store.load_tokenizer() is None


@needs_fashion_mnist
def test_cli_fashion_mnist(tmp_path, tiny_vq, capsys):
    vq_dir = checkpoint.save(tmp_path / "vq", tiny_vq)
    out = tmp_path / "fm"
    assert main(["extract", "--tokenizer", str(vq_dir), "--dataset", "fashion-mnist", "--split", "test",
                 "--per-class", "1", "--out", str(out), "--device", "cpu"]) == 0
    store = CodeStore.open(out)
    assert store.codes.shape == (10, 2, 16, 16) and sorted(store.labels.tolist()) == list(range(10))
    images, _ = fm.load_fashion_mnist("test")
    first = images[0]  # index 0 of the subset is the first image of its class, i.e. image 0
    assert np.array_equal(store.source_image(0, 1), fashion_mnist_to_rgb(first)[:, ::-1])
    assert main(["data", "check", str(out), "--n", "4", "--out", str(tmp_path / "c.png")]) == 0
    assert "match 100.00%" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ store contents
def _tamper(store_path, array=None, **manifest_changes):
    """Change a store's manifest entries (None deletes one) and/or overwrite codes.npy in place."""
    manifest = json.loads((store_path / "manifest.json").read_text())
    for key, value in manifest_changes.items():
        manifest.pop(key) if value is None else manifest.__setitem__(key, value)
    (store_path / "manifest.json").write_text(json.dumps(manifest))
    if array is not None:
        codes = np.load(store_path / "codes.npy", mmap_mode="r+")
        codes[-1, -1, -1, -1] = array
        codes.flush()


def test_store_ids_and_labels_outside_the_model_are_refused_at_validation(folder_store):
    store, _, _ = folder_store
    low, high = store.scan_code_range()
    assert store.manifest["code_range"] == [low, high] == list(store.scan_code_range(rows_per_chunk=1))
    _tamper(store.path, vocab_size=high)  # a manifest that under-states the tokenizer
    with pytest.raises(DataError, match=rf"ids {low}\.\.{high}, outside the vocabulary 0\.\.{high - 1}.*re-run"):
        CodeStore.open(store.path).validate(vocab_size=high)
    _tamper(store.path, array=200, vocab_size=64, code_range=None)  # an old store: codes.npy is scanned
    with pytest.raises(DataError, match=r"code ids \d+\.\.200, outside the vocabulary 0\.\.63"):
        CodeStore.open(store.path).validate()
    _tamper(store.path, array=high, code_range=[low, high])
    CodeStore.open(store.path).validate(vocab_size=64, num_classes=3)
    other = next(v for v in range(64) if not low <= v <= high)
    _tamper(store.path, array=other, code_range=[low, high])  # changed after extraction: a rescan sees it
    with pytest.raises(DataError, match="changed since"):
        CodeStore.open(store.path).check_contents(rescan=True)
    np.save(store.path / "labels.npy", np.array([0, 0, 1, 1, 2, 7]))
    with pytest.raises(DataError, match=r"class labels 0\.\.7, outside the 3 classes.*model.num_classes=8"):
        CodeStore.open(store.path).validate(num_classes=3)
    np.save(store.path / "labels.npy", np.zeros(6, np.float32))
    with pytest.raises(DataError, match="float32 labels.*re-run mirai extract"):
        CodeStore.open(store.path)


def test_readme_states_the_fashion_mnist_search_order_of_the_code():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    sentence = readme[readme.index("Fashion-MNIST is looked for"):][:400]
    order = [sentence.index(f"${fm.ENV_VAR}"), sentence.index(str(fm.DEBIAN_ROOT)), sentence.index(".cache/mirai")]
    assert order == sorted(order), sentence  # resolve_root: root argument, env var, Debian folder, cache
