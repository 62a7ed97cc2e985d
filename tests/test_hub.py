"""Pretrained weights by name (``mirai.hub``), offline: a Hugging Face cache laid out exactly as
``huggingface_hub`` writes it (``models--OWNER--NAME/{blobs,snapshots/COMMIT,refs/main}``) in
``tmp_path``, with ``HF_HUB_OFFLINE`` on, so ``hf://``, ``llamagen:`` and ``from_pretrained`` go
through the library's real cache resolution; committed asset names; the grid of raw LlamaGen
files; ``--image-size-eval``; the hidden aliases of renamed flags."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file
from test_sampling import tiny_gpt, tiny_vq

from mirai import checkpoint
from mirai.cli.main import build_parser, main
from mirai.convert import load_module
from mirai.errors import CheckpointError
from mirai.hub.pretrained import from_pretrained, push_to_hub, save_pretrained
from mirai.hub.resolve import RELEASED, resolve
from mirai.models import GPT, VQModel

COMMIT = "a" * 40


def add_to_cache(cache: Path, repo_id: str, files: dict[str, Path], ref: str = "main", commit: str = COMMIT) -> Path:
    """Put ``files`` (name in the repo -> local file) into ``cache`` as huggingface_hub does: content
    in ``blobs/SHA256``, the snapshot as relative symlinks, the ref naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty offline Hub cache (the library reads these constants at call time; the environment
    variables are for ``mirai`` run in a subprocess)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, b.state_dict()[k]) for k, x in a.state_dict().items())


def mirai_repo(hub_cache: Path, tmp_path: Path, repo_id: str, model: torch.nn.Module) -> None:
    folder = save_pretrained(model, tmp_path / f"saved-{repo_id.replace('/', '-')}")
    add_to_cache(hub_cache, repo_id, {f.name: f for f in folder.iterdir()})


def test_released_names_resolve_through_the_hub_cache(hub_cache, tmp_path):
    torch.save({"model": tiny_gpt().state_dict()}, tmp_path / "c2i_B_256.pt")
    torch.save({"model": {}}, tmp_path / "vq.pt")
    snapshot = add_to_cache(hub_cache, "FoundationVision/LlamaGen",
                            {"c2i_B_256.pt": tmp_path / "c2i_B_256.pt", "vq_ds16_c2i.pt": tmp_path / "vq.pt"})
    assert resolve("llamagen:vq_ds16_c2i") == snapshot / "vq_ds16_c2i.pt"
    assert resolve("hf://FoundationVision/LlamaGen/c2i_B_256.pt") == snapshot / "c2i_B_256.pt"
    assert resolve(f"hf://FoundationVision/LlamaGen@{COMMIT}/c2i_B_256.pt") == snapshot / "c2i_B_256.pt"
    gpt = load_module("llamagen:c2i_B_256", "gpt")  # the grid comes from the table: 16 for 256 px
    assert gpt.args.grid_size == RELEASED["llamagen:c2i_B_256"].grid_size == 16
    assert same_weights(gpt, tiny_gpt())
    assert main(["convert", "llamagen", "llamagen:c2i_B_256", str(tmp_path / "converted")]) == 0
    assert checkpoint.load(tmp_path / "converted", GPT).args.grid_size == 16
    with pytest.raises(CheckpointError, match="unknown released checkpoint 'llamagen:c2i_B_512'.*llamagen:c2i_B_256"):
        resolve("llamagen:c2i_B_512")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set.*download it once"):
        resolve("llamagen:c2i_L_384")  # in the table, not in the cache
    with pytest.raises(CheckpointError, match="not an hf:// address"):
        resolve("hf://just-a-name")
    with pytest.raises(CheckpointError, match="empty revision after '@'"):
        resolve("hf://FoundationVision/LlamaGen@/c2i_B_256.pt")  # refused here, not blamed on HF_HUB_OFFLINE
    with pytest.raises(CheckpointError, match="'a b' is not a valid Hub owner or repository name"):
        resolve("hf://a b/c.pt")


def test_every_released_entry_is_consistent():
    for name, entry in RELEASED.items():
        assert name.split(":")[0] in ("llamagen", "par") and entry.filename.endswith(".pt")
        if entry.kind == "gpt":
            assert entry.grid_size * 16 == entry.image_size and entry.model.startswith("GPT-")
    assert {e.regions_per_side for n, e in RELEASED.items() if n.startswith("par:")} == {2, 4}


def test_a_raw_pt_without_a_known_grid_is_refused(tmp_path):
    torch.save({"model": tiny_gpt().state_dict()}, tmp_path / "mine.pt")
    with pytest.raises(CheckpointError, match="does not store its token grid.*--grid-size.*--image-size"):
        load_module(tmp_path / "mine.pt", "gpt")
    checkpoint.save(tmp_path / "vq", tiny_vq())
    code = main(["sample", "--gpt", str(tmp_path / "mine.pt"), "--tokenizer", str(tmp_path / "vq"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 1 and not (tmp_path / "out").exists()
    assert load_module(tmp_path / "mine.pt", "gpt", grid_size=2).args.grid_size == 2


def test_the_grid_names_the_weights_sampled_when_a_pt_holds_no_ema(tmp_path, monkeypatch, capsys):
    """A .pt with "model" only (LlamaGen's released layout) was titled "EMA weights" though raw ones were sampled."""
    import mirai.sampling.grid

    titles = []
    monkeypatch.setattr(mirai.sampling.grid, "write_sample_grid",
                        lambda images, labels, out, what, *args, **kwargs: titles.append(what) or [out])
    torch.save({"model": tiny_gpt().state_dict()}, tmp_path / "mine.pt")
    save_file(tiny_gpt().state_dict(), tmp_path / "lone.safetensors")  # e.g. a checkpoint's EMA file copied alone
    checkpoint.save(tmp_path / "vq", tiny_vq())
    checkpoint.save(tmp_path / "ck", tiny_gpt(), ema=tiny_gpt(seed=1))
    common = ["--tokenizer", str(tmp_path / "vq"), "--classes", "0", "--per-class", "1", "--device", "cpu"]
    for gpt, extra, weights in ((tmp_path / "mine.pt", ["--grid-size", "2"], "raw"), (tmp_path / "ck", [], "EMA"),
                                (tmp_path / "ck", ["--raw-weights"], "raw"),
                                (tmp_path / "lone.safetensors", ["--grid-size", "2"], "unlabelled")):
        out = tmp_path / f"out{len(titles)}"
        assert main(["sample", "--gpt", str(gpt), "--out", str(out), *common, *extra]) == 0
        assert titles[-1] == f"{gpt.name} ({weights} weights, seed 0)"
        printed = capsys.readouterr().out
        note = "holds no EMA weights, so its raw weights are sampled" in printed
        assert note == (gpt.suffix == ".pt")  # said only when the EMA weights were asked for and are not there
        bare_note = "bare state dict, which does not say whether it holds EMA or raw" in printed
        assert bare_note == (weights == "unlabelled")


def test_from_pretrained_reads_a_hub_repo_and_push_uploads_the_same_folder(hub_cache, tmp_path, monkeypatch):
    gpt, vq = tiny_gpt(), tiny_vq()
    mirai_repo(hub_cache, tmp_path, "someone/tiny-gpt", gpt)
    assert same_weights(GPT.from_pretrained("someone/tiny-gpt"), gpt)
    assert same_weights(from_pretrained(f"hf://someone/tiny-gpt@{COMMIT}", GPT), gpt)
    assert same_weights(checkpoint.load("hf://someone/tiny-gpt", GPT), gpt)  # every loader takes the names
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        VQModel.from_pretrained("someone/not-cached")

    # push_to_hub without a network: HfApi's two calls are replaced by recorders (the upload itself is
    # huggingface_hub's code); what matters here is the folder handed to it.
    uploaded = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded.update(repo_id=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()), **kwargs)
        save_pretrained(folder_path, tmp_path / "as-uploaded")  # the folder is gone after the call
        return "https://huggingface.co/someone/tiny-vq/commit/1"

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", lambda self, repo_id, **kw: repo_id)
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", upload_folder)
    assert vq.push_to_hub("someone/tiny-vq", path_in_repo="tokenizer").endswith("/commit/1")
    assert uploaded["files"] == ["config.json", "model.safetensors"] and uploaded["path_in_repo"] == "tokenizer"
    assert same_weights(VQModel.from_pretrained(tmp_path / "as-uploaded"), vq)
    with pytest.raises(CheckpointError, match="not OWNER/NAME"):
        push_to_hub(vq, "no-owner")


def test_save_pretrained_copies_a_training_checkpoint_whole(tmp_path):
    folder = checkpoint.save(tmp_path / "run", tiny_gpt(), ema=tiny_gpt(seed=1))
    (folder / "train_config.yaml").write_text("steps: 1\n")
    copy = save_pretrained(folder, tmp_path / "copy")
    assert sorted(p.name for p in copy.iterdir()) == ["config.json", "ema.safetensors", "model.safetensors",
                                                      "train_config.yaml"]
    assert same_weights(from_pretrained(copy, GPT, use_ema=True), tiny_gpt(seed=1))


def test_asset_names_work_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vq = checkpoint.load("fashion/vq8", VQModel)
    assert vq.downsample_factor == 4
    with pytest.raises(CheckpointError, match="does not exist.*committed assets: .*fashion/vq16"):
        checkpoint.load("fashion/vq9", VQModel)


def test_sample_by_name_end_to_end_with_image_size_eval(hub_cache, tmp_path):
    torch.save({"model": tiny_gpt().state_dict()}, tmp_path / "c2i_B_256.pt")  # a 16x16-token model by the table
    add_to_cache(hub_cache, "FoundationVision/LlamaGen", {"c2i_B_256.pt": tmp_path / "c2i_B_256.pt"})
    mirai_repo(hub_cache, tmp_path, "someone/tiny-vq", tiny_vq())
    base = ["sample", "--gpt", "llamagen:c2i_B_256", "--tokenizer", "hf://someone/tiny-vq", "--device", "cpu",
            "--classes", "0", "--per-class", "2", "--cfg-scale", "1"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    side = 16 * tiny_vq().downsample_factor
    assert np.load(tmp_path / "a" / "samples.npz")["arr_0"].shape == (2, side, side, 3)
    assert main(base + ["--out", str(tmp_path / "b"), "--image-size-eval", "12"]) == 0
    assert np.load(tmp_path / "b" / "samples.npz")["arr_0"].shape == (2, 12, 12, 3)


def test_old_flag_names_are_hidden_aliases():
    parser = build_parser()
    sample = ["sample", "--gpt", "g", "--out", "o"]
    assert parser.parse_args(sample + ["--vq", "v"]).tokenizer == "v"
    assert parser.parse_args(sample + ["--tokenizer", "v"]).tokenizer == "v"
    sub = parser._subparsers._group_actions[0].choices["sample"]
    assert "--vq" not in sub.format_help() and "--tokenizer" in sub.format_help()
    extract = ["extract", "--tokenizer", "fashion/vq8", "--dataset", "folder", "--out", "o"]
    for flag in ("--data-root", "--root"):
        assert parser.parse_args(extract + [flag, "d"]).root == "d"
        assert parser.parse_args(["tokenizer", "eval", "--tokenizer", "t", flag, "d"]).root == "d"
    for flag in ("--data-root", "--source-root"):
        assert parser.parse_args(["data", "check", "s", flag, "d"]).source_root == "d"
    assert parser.parse_args(["tokenizer", "eval", "--checkpoint", "t"]).checkpoint == "t"
    tsne = parser.parse_args(["analyze", "tsne", "--gpt", "a", "--checkpoint", "b", "--codes", "c", "--out", "o.png"])
    assert tsne.checkpoints == ["a", "b"]
    classmap = ["analyze", "classmap", "--codes", "c", "--layer", "1", "--out", "o.png"]
    assert parser.parse_args(classmap + ["--gpt", "g"]).gpt == "g"
    assert parser.parse_args(classmap[:2] + ["g"] + classmap[2:]).checkpoint == "g"  # the positional form


def test_evaluate_scores_resized_samples_with_image_size_eval(tmp_path):
    from test_eval_cli import write_batch

    from mirai.evaluation.reference import NpzImages, resize_uint8
    from mirai.models.fashion_classifier import FashionClassifier

    evaluator = checkpoint.save(tmp_path / "fashion_eval", FashionClassifier().eval())
    write_batch(tmp_path / "ref_images.npz", 24, 32, seed=0)
    images, _ = write_batch(tmp_path / "samples.npz", 12, 64, seed=1)  # 64-px samples, a 32-px evaluator
    assert main(["evaluate", "make-ref", "--images", str(tmp_path / "ref_images.npz"), "--evaluator", "fashion",
                 "--fashion-evaluator", str(evaluator), "--out", str(tmp_path / "ref.npz")]) == 0
    score = ["evaluate", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"), "--evaluator", "fashion",
             "--fashion-evaluator", str(evaluator), "--out", str(tmp_path / "m.json")]
    assert main(score) == 1  # 64x64 images do not fit the evaluator
    assert main(score + ["--image-size-eval", "32"]) == 0
    resized = next(NpzImages(tmp_path / "samples.npz", resize=32).batches(12))
    assert resized.shape == (12, 32, 32, 3) and resized.dtype == np.uint8
    expected = torch.nn.functional.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float(), size=(32, 32),
                                               mode="bicubic").round().clamp(0, 255).permute(0, 2, 3, 1)
    assert np.array_equal(resized, expected.to(torch.uint8).numpy())
    assert resize_uint8(resized, 32) is resized


def test_a_par_model_in_a_sub_folder_of_a_hub_repo(hub_cache, tmp_path):
    from mirai.models import build_gpt

    torch.manual_seed(0)
    par = build_gpt("GPT-Nano", vocab_size=16, grid_size=4, num_classes=3, order="par", regions_per_side=2).eval()
    folder = par.save_pretrained(tmp_path / "par")
    add_to_cache(hub_cache, "someone/models", {f"par/{f.name}": f for f in folder.iterdir()})
    loaded = GPT.from_pretrained("hf://someone/models/par")
    assert loaded.parallel and loaded.args.regions_per_side == 2 and same_weights(loaded, par)
    with pytest.raises(CheckpointError, match="has no folder 'vq'"):
        resolve("hf://someone/models/vq")
