"""The DataLoader path (``data.workers``) gives exactly the in-process batches, for any start step
and DDP rank, and the seeded per-class subset of a class-folder tree (the low-resource setting)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from mirai.data.codes import CodeStore
from mirai.data.folders import ImageFolder, seeded_subset
from mirai.errors import ConfigError, DataError
from mirai.training.data import TrainingData, epoch_order
from mirai.training.loader import MAX_AUTO_WORKERS, resolve_workers
from mirai.training.trainer import Trainer

from helpers import assert_cli_refuses, assert_same, encoder_overrides, make_cfg, weights

IMAGES = frozenset({"images"})


def training_data(stores, tmp_path, workers, rank=0, world_size=1) -> TrainingData:
    # The helpers' store: 24 images, so batch 8 makes 3 steps an epoch; 2 micro-batches a step.
    cfg = make_cfg(stores, tmp_path / "run", **{"data.workers": workers, "optim.grad_accum": 2})
    return TrainingData(cfg, rank=rank, world_size=world_size)


def assert_same_steps(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("fields", [frozenset(), IMAGES], ids=["tokens", "images"])
def test_workers_give_the_in_process_batches_across_a_resume(stores, tmp_path, fields):
    here = training_data(stores, tmp_path, 0)
    expected = {s: here.step_batches(s, "cpu", fields) for s in range(7)}  # across two epoch ends
    assert set(expected[0][0]) == {"tokens", "labels", "image_index", "view_index"} | fields
    loaded = training_data(stores, tmp_path, 2)
    try:
        for s in range(5):
            assert_same_steps(loaded.step_batches(s, "cpu", fields), expected[s])
        assert_same_steps(loaded.step_batches(1, "cpu", fields), expected[1])  # a rewind restarts the workers
        assert loaded._loader is not None  # the batches did come from worker processes
    finally:
        loaded.close()
    resumed = training_data(stores, tmp_path, 2)  # a new process resuming at step 4
    try:
        for s in range(4, 7):
            assert_same_steps(resumed.step_batches(s, "cpu", fields), expected[s])
    finally:
        resumed.close()
    if fields:  # the pixels are those the foresight encoder has always been given
        batch = expected[2][1]
        images = here.store.source_images(batch["image_index"].numpy(), batch["view_index"].numpy())
        assert batch["images"].dtype == torch.float32 and torch.equal(batch["images"], images)


def test_ddp_ranks_split_the_global_batch_in_either_path(stores, tmp_path):
    seed, batch = 3, 8
    for step in (0, 4):
        epoch, position = divmod(step, 3)
        global_rows = epoch_order(seed, epoch, 24)[position * batch:(position + 1) * batch]
        ranks = []
        for rank in (0, 1):
            here = training_data(stores, tmp_path, 0, rank, 2)
            loaded = training_data(stores, tmp_path, 2, rank, 2)
            try:
                mine = here.step_batches(step, "cpu", IMAGES)
                assert_same_steps(loaded.step_batches(step, "cpu", IMAGES), mine)
            finally:
                loaded.close()
            assert len(mine) == 2 and all(len(b["tokens"]) == 2 for b in mine)  # 8 / (2 ranks x 2 micro)
            ranks += [b["image_index"] for b in mine]
        # Rank r of w holds the r-th contiguous w-th of the step's global batch, as before the loader.
        assert torch.equal(torch.cat(ranks), global_rows)
        single = training_data(stores, tmp_path, 0).step_batches(step, "cpu")
        assert torch.equal(torch.cat([b["tokens"] for b in single]),
                           torch.cat([b["tokens"] for r in (0, 1)
                                      for b in training_data(stores, tmp_path, 0, r, 2).step_batches(step, "cpu")]))


@pytest.mark.parametrize("mirai_i", [False, True], ids=["baseline", "mirai_i"])
def test_training_with_workers_matches_training_without(stores, tmp_path, mirai_i):
    runs = {}
    for workers in (0, 2):
        trainer = Trainer(make_cfg(stores, tmp_path / f"w{workers}", steps=3, dropout=True,
                                   **{"data.workers": workers}, **(encoder_overrides(stores) if mirai_i else {})))
        assert trainer.batch_fields == (IMAGES if mirai_i else frozenset())
        for _ in range(3):
            trainer.train_step()
        trainer.data.close()
        runs[workers] = weights(trainer.objective)
    assert_same(runs[0], runs[2])


def test_a_data_error_in_a_worker_reads_as_one_line(stores, tmp_path, monkeypatch):
    readable = CodeStore.source_pixels

    def unreadable_in_workers(self, indices, views):
        if get_worker_info() is None:
            return readable(self, indices, views)
        raise DataError("image a/3.png cannot be read: restore the file or re-run mirai extract")

    monkeypatch.setattr(CodeStore, "source_pixels", unreadable_in_workers)  # the forked workers inherit it
    training_data(stores, tmp_path, 0).step_batches(0, "cpu", IMAGES)  # in this process: fine
    loaded = training_data(stores, tmp_path, 1)
    try:
        with pytest.raises(DataError) as caught:
            loaded.step_batches(0, "cpu", IMAGES)
    finally:
        loaded.close()
    assert str(caught.value) == "image a/3.png cannot be read: restore the file or re-run mirai extract"


def test_worker_settings(stores, tmp_path, monkeypatch):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resolve_workers("auto", cuda, frozenset()) == 0  # tokens only: a memory-mapped slice
    assert resolve_workers("auto", cpu, IMAGES) == 0  # the workers would take the training's cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert 1 <= resolve_workers("auto", cuda, IMAGES) <= MAX_AUTO_WORKERS
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "100000")  # more ranks than CPUs still get one each
    assert resolve_workers("auto", cuda, IMAGES) == 1
    assert resolve_workers(3, cpu, frozenset()) == 3
    with pytest.raises(ConfigError, match="data.workers"):
        make_cfg(stores, tmp_path / "run", **{"data.workers": -1})
    with pytest.raises(ConfigError, match="data.workers"):
        make_cfg(stores, tmp_path / "run", **{"data.workers": "many"})
    with pytest.raises(ConfigError, match="data.prefetch"):
        make_cfg(stores, tmp_path / "run", **{"data.prefetch": 0})
    with pytest.raises(ConfigError, match="data.prefetch must be between 1 and 64"):  # each step is held in memory
        make_cfg(stores, tmp_path / "run", **{"data.prefetch": 10**9})
    with pytest.raises(ConfigError, match="data.workers=100000 is more than 4 per CPU.*data.workers=auto"):
        resolve_workers(100000, cpu, frozenset())  # refused before any process starts
    with pytest.raises(ConfigError, match="expected an integer or 'auto', got 'many'"):  # in words, not typing's repr
        make_cfg(stores, tmp_path / "run", **{"data.workers": "many"})


# ------------------------------------------------------------------------------------ subsets
def class_tree(root, counts: dict[str, int]):
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(root / name / f"{name}_{i:03d}.png")
    return root


def test_seeded_per_class_subset(tmp_path):
    root = class_tree(tmp_path / "tree", {"cat": 30, "dog": 25, "eel": 40})
    subset = ImageFolder.scan(root, per_class=10, subset_seed=0)
    assert subset.files == ImageFolder.scan(root, per_class=10, subset_seed=0).files  # same seed, same files
    assert np.array_equal(np.bincount(subset.labels), [10, 10, 10])
    for label, name in enumerate(subset.class_names):
        mine = [f for f, lab in zip(subset.files, subset.labels) if lab == label]
        assert mine == sorted(mine) and all(f.startswith(f"{name}/") for f in mine)
    first = ImageFolder.scan(root, per_class=10).files  # without a seed: the first 10 in sorted order
    assert first[:10] == [f"cat/cat_{i:03d}.png" for i in range(10)]
    other = ImageFolder.scan(root, per_class=10, subset_seed=1).files
    assert set(subset.files) != set(first) and set(other) != set(subset.files)
    # The draw hangs on the seed and each file's name only: a new image can displace at most itself.
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "cat" / "cat_new.png")
    grown = ImageFolder.scan(root, per_class=10, subset_seed=0).files
    assert len(set(grown) - set(subset.files)) <= 1 and grown[10:] == subset.files[10:]
    assert subset.describe()["subset_seed"] == 0 and subset.describe()["per_class"] == 10
    # SHA-256 of "seed:path", not a library's random stream: these picks hold on any machine, forever.
    paths = [f"c/{i}.png" for i in range(10)]
    assert seeded_subset(paths, 3, 0) == ["c/4.png", "c/6.png", "c/9.png"]
    assert seeded_subset(paths, 3, 1) == ["c/2.png", "c/3.png", "c/5.png"]

    with pytest.raises(DataError, match=r"dog holds 25 images, fewer than per_class=26"):
        ImageFolder.scan(root, per_class=26, subset_seed=0)
    with pytest.raises(DataError, match="fewer than per_class"):
        ImageFolder.scan(root, per_class=26)
    with pytest.raises(ConfigError, match="give per_class"):
        ImageFolder.scan(root, subset_seed=0)
    with pytest.raises(ConfigError, match="subset_seed"):
        ImageFolder.scan(root, per_class=2, subset_seed=-1)


def test_extract_keeps_the_seeded_subset(tmp_path, stores, capsys):
    from mirai.cli.main import main

    root = class_tree(tmp_path / "tree", {"cat": 6, "dog": 5})
    out = tmp_path / "codes"
    assert main(["extract", "--tokenizer", str(stores / "vq"), "--dataset", "folder", "--root", str(root),
                 "--image-size", "8", "--per-class", "3", "--subset-seed", "7", "--out", str(out),
                 "--device", "cpu"]) == 0
    store = CodeStore.open(out)
    assert store.files == ImageFolder.scan(root, per_class=3, subset_seed=7).files
    assert store.manifest["dataset"]["subset_seed"] == 7 and len(store) == 6
    source = store.source()  # reopened for Mirai-I from the kept file list, seed recorded
    assert source.files == store.files and source.subset_seed == 7
    assert store.source_pixels([5], [0]).shape == (1, 8, 8, 3)
    assert_cli_refuses(["extract", "--tokenizer", stores / "vq", "--dataset", "fashion-mnist", "--per-class", "3",
                        "--subset-seed", "7", "--out", tmp_path / "fashion"], tmp_path, match="applies to --dataset folder")
