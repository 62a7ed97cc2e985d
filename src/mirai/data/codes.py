"""The code store: a dataset tokenized once, read memory-mapped during training.

A store is a directory::

    manifest.json   what was tokenized, how, and with which tokenizer (see ``extract``)
    codes.npy       (N, V, g, g) code ids of every image's V views; uint16, or int32 past 65536 codes
    labels.npy      (N,) int64 class labels
    files.txt       class-folder datasets only: each image's path under the dataset root

``codes.npy`` is a plain ``.npy`` file, so ``np.load(..., mmap_mode="r")`` maps it without
reading it: ImageNet's 1.28 M × 10 × 16 × 16 uint16 codes (6.5 GB) cost no RAM up front.
The manifest keeps enough about the source (dataset, split, subset, file order, view
spec) for ``CodeStore.source_image`` to re-render the exact pixels behind any code row,
which is what the Mirai-I foresight encoder needs.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import PIL
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mirai.atomic import atomic_write_dir
from mirai.checkpoint import check_output_dir, read_manifest
from mirai.data.options import non_negative_int, positive_int, resolve_device
from mirai.data.transforms import to_model_range, to_unit_range
from mirai.data.view_order import epoch_views, random_view
from mirai.data.views import ViewSpec, render_view, render_views
from mirai.data.workers import reraised_one_line
from mirai.errors import CheckpointError, DataError
from mirai.hub.resolve import resolve

__all__ = ["CodeStore", "ImageSource", "code_dtype", "describe_tokenizer", "epoch_views", "extract", "load_vq",
           "open_source", "random_view", "state_hash"]

FORMAT, VERSION = "mirai-codes", 1
MANIFEST, CODES, LABELS, FILES = "manifest.json", "codes.npy", "labels.npy", "files.txt"
STORE_FILES = re.compile("|".join(re.escape(name) for name in (MANIFEST, CODES, LABELS, FILES)))


class ImageSource(Protocol):
    """What extraction needs from a dataset (``FashionMNIST`` and ``ImageFolder`` provide it)."""

    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int: ...
    def image(self, index: int) -> np.ndarray: ...
    def describe(self) -> dict: ...


def code_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype the store uses for ``vocab_size`` code ids."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


def state_hash(module: nn.Module) -> str:
    """SHA-256 of a module's weights (names, shapes, dtypes, bytes), independent of the file format."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def describe_tokenizer(vq: nn.Module, path: str | Path | None, ema: bool = False) -> dict:
    """Manifest entry identifying the tokenizer (and whether its EMA weights) that produced a store."""
    return {
        "path": None if path is None else str(resolve(path, "tokenizer").resolve()),  # names: the file they name
        "ema": ema,
        "name": getattr(vq, "name", type(vq).__name__),
        "args": vq.args.to_dict() if hasattr(vq, "args") else {},
        "sha256": state_hash(vq),
    }


def open_source(description: dict, class_names: list[str], files: list[str] | None = None,
                root: str | Path | None = None) -> ImageSource:
    """Reopen the dataset a store was extracted from; ``root`` overrides a moved dataset's folder."""
    kind = description.get("kind")
    if kind == "fashion-mnist":
        from mirai.data.fashion_mnist import FashionMNIST

        return FashionMNIST(description["split"], root or description.get("root"), description.get("per_class"))
    if kind == "folder":
        from mirai.data.folders import ImageFolder

        if files is None:
            raise DataError(f"a class-folder store needs its {FILES}, which is missing")
        return ImageFolder.from_files(root or description["root"], class_names, files, description.get("per_class"),
                                      description.get("subset_seed"))
    raise DataError(f"unknown dataset kind {kind!r} in the store manifest")


def load_vq(path: str | Path, ema: bool = False) -> nn.Module:
    """The VQ tokenizer checkpoint at ``path``; a missing path, another kind of checkpoint (a GPT,
    an evaluator) or a file that is no checkpoint raises one ``CheckpointError`` saying so."""
    from mirai import checkpoint
    from mirai.models.vq import VQModel

    try:
        return checkpoint.load(path, VQModel, use_ema=ema)
    except CheckpointError as err:
        raise CheckpointError(f"tokenizer {path}: {err} (a tokenizer is a Mirai VQ checkpoint directory, made by "
                              "`mirai tokenizer train` or `mirai convert llamagen`)") from None


def _check_not_inside_dataset(out: Path, source: ImageSource) -> None:
    """Refuse a store directory inside the dataset it is extracted from: it would join the data."""
    root = source.describe().get("root")
    if root is not None and (out.resolve() == Path(root).resolve() or Path(root).resolve() in out.resolve().parents):
        raise DataError(f"the store {out} would be written inside the dataset folder {root}; "
                        "choose an --out outside it")


class _Views(Dataset):
    """All views of image i as uint8 (V, H, W, 3), so a DataLoader can decode/resize in workers."""

    def __init__(self, source: ImageSource, spec: ViewSpec):
        self.source, self.spec = source, spec

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(render_views(self.source.image(index), self.spec))


def extract(
    vq: nn.Module,
    source: ImageSource,
    spec: ViewSpec,
    out: str | Path,
    *,
    tokenizer_path: str | Path | None = None,
    tokenizer_ema: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overwrite: bool = False,
) -> "CodeStore":
    """Tokenize every view of every image of ``source`` with ``vq`` into a store at ``out``.

    ``tokenizer_path``/``tokenizer_ema`` only go into the manifest, so that ``mirai data check``
    can reload the same tokenizer. ``batch_size`` counts images (each contributes
    ``spec.num_views`` crops to the batch). The store appears at ``out`` only once complete.
    ``ConfigError`` (before any work) if ``out`` is a file, a folder holding anything but a code store, or a
    code store and ``overwrite`` is false; with ``overwrite``, a code store there is replaced.
    """
    from tqdm import tqdm

    batch_size = positive_int(batch_size, "batch_size (--batch-size)")
    num_workers = non_negative_int(num_workers, "num_workers (--workers)")
    device = resolve_device(str(device))
    spec.validate()
    check_output_dir(out, "out (--out)", holds="code store", marker=MANIFEST, fmt=FORMAT, own=STORE_FILES,
                     overwrite=overwrite)
    _check_not_inside_dataset(Path(out), source)
    factor = vq.downsample_factor
    if spec.image_size % factor:
        raise DataError(f"image size {spec.image_size} is not a multiple of the tokenizer's downsampling "
                        f"factor {factor}; choose --image-size {max(factor, spec.image_size // factor * factor)}")
    if len(source) == 0:
        raise DataError("the dataset is empty: nothing to extract")
    grid = spec.image_size // factor
    n, v = len(source), spec.num_views
    dtype = code_dtype(vq.codebook_size)
    vq = vq.to(device).eval()
    loader = DataLoader(_Views(source, spec), batch_size=batch_size, num_workers=num_workers)
    labels = np.asarray(source.labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= len(source.class_names):
        raise DataError(f"labels span [{labels.min()}, {labels.max()}] but there are {len(source.class_names)} classes")
    manifest = {
        "format": FORMAT, "version": VERSION,
        "num_images": n, "num_views": v, "grid_size": grid, "vocab_size": int(vq.codebook_size),
        "num_classes": len(source.class_names), "class_names": list(source.class_names),
        "codes_dtype": dtype.name, "views": spec.to_dict(), "dataset": source.describe(),
        "tokenizer": describe_tokenizer(vq, tokenizer_path, tokenizer_ema), "pillow_version": PIL.__version__,
    }

    def write(tmp: Path) -> None:
        codes = np.lib.format.open_memmap(tmp / CODES, mode="w+", dtype=dtype, shape=(n, v, grid, grid))
        start, low, high = 0, None, None
        with torch.inference_mode(), tqdm(total=n, desc="extract codes", unit="img",
                                           disable=None if progress else True) as bar:
            for views in reraised_one_line(loader):
                b = views.shape[0]
                x = to_model_range(views.flatten(0, 1).to(device))  # move uint8, not 4x larger floats
                idx = vq.encode_to_indices(x).view(b, v, grid, grid)
                low = int(idx.min()) if low is None else min(low, int(idx.min()))
                high = int(idx.max()) if high is None else max(high, int(idx.max()))
                codes[start:start + b] = idx.cpu().numpy().astype(dtype)
                start += b
                bar.update(b)
        codes.flush()
        del codes
        np.save(tmp / LABELS, labels)
        manifest["code_range"] = [low, high]  # lets CodeStore.validate skip a scan of codes.npy
        files = getattr(source, "files", None)
        if files is not None:
            if any("\n" in f for f in files):
                raise DataError("an image file name contains a newline; rename it before extracting")
            (tmp / FILES).write_text("\n".join(files) + "\n", encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))

    atomic_write_dir(out, write)
    return CodeStore.open(out)


class CodeStore:
    """A memory-mapped code store. Open one with ``CodeStore.open(path)``."""

    def __init__(self, path: Path, manifest: dict, codes: np.ndarray, labels: np.ndarray,
                 files: list[str] | None, source_root: str | Path | None = None):
        self.path, self.manifest, self.codes, self.labels, self.files = path, manifest, codes, labels, files
        self.source_root = source_root
        self._source: ImageSource | None = None
        self._contents_checked = False

    @classmethod
    def open(cls, path: str | Path, source_root: str | Path | None = None) -> "CodeStore":
        """Map the store at ``path``; ``source_root`` points ``source_image`` at a moved dataset."""
        path = Path(path)
        if not path.is_dir():
            state = "is a file, not a code store directory" if path.exists() else "does not exist"
            raise DataError(f"code store {path} {state}; give a directory made by `mirai extract`")
        manifest = read_manifest(path / MANIFEST, FORMAT, VERSION, DataError,
                                 "not a code store; create one with `mirai extract`")
        bad = [k for k in ("num_images", "num_views", "grid_size", "vocab_size", "num_classes")
               if isinstance(manifest.get(k), bool) or not isinstance(manifest.get(k), int) or manifest[k] < 0]
        bad += [k for k, kind in (("codes_dtype", str), ("class_names", list), ("views", dict), ("dataset", dict),
                                  ("tokenizer", dict)) if not isinstance(manifest.get(k), kind)]
        if bad:
            raise DataError(f"{path / MANIFEST} lacks or garbles {bad}: the store is damaged; re-run mirai extract")
        try:
            codes = np.load(path / CODES, mmap_mode="r")
            labels = np.load(path / LABELS)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read {CODES}/{LABELS} ({err}); re-run mirai extract") from None
        n, v, g = manifest["num_images"], manifest["num_views"], manifest["grid_size"]
        if codes.shape != (n, v, g, g) or codes.dtype != np.dtype(manifest["codes_dtype"]):
            raise DataError(f"{path / CODES} has shape {codes.shape} {codes.dtype} but the manifest says "
                            f"{(n, v, g, g)} {manifest['codes_dtype']}: the store is damaged; re-run mirai extract")
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise DataError(f"{path / LABELS} holds {labels.dtype} labels of shape {labels.shape}, expected "
                            f"integers of shape ({n},): the store is damaged; re-run mirai extract")
        if codes.dtype.kind not in "iu":
            raise DataError(f"{path / CODES} holds {codes.dtype} values, not integer code ids: the store is "
                            "damaged; re-run mirai extract")
        if source_root is not None and not Path(source_root).is_dir():
            raise DataError(f"source root {source_root} is not a directory; give the dataset folder the store "
                            "was extracted from (--source-root)")
        files = None
        if (path / FILES).is_file():
            files = (path / FILES).read_text(encoding="utf-8").splitlines()
            if len(files) != n:
                raise DataError(f"{path / FILES} lists {len(files)} images, expected {n}: re-run mirai extract")
        return cls(path, manifest, codes, labels, files, source_root)

    def __getstate__(self) -> dict:
        # Pickling a memmap copies its data; DataLoader workers started with "spawn" remap the file instead.
        return dict(self.__dict__, codes=None, _source=None)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.codes = np.load(self.path / CODES, mmap_mode="r")

    # ---------------------------------------------------------------- description
    def __len__(self) -> int:
        return self.manifest["num_images"]

    @property
    def num_views(self) -> int:
        return self.manifest["num_views"]

    @property
    def grid_size(self) -> int:
        return self.manifest["grid_size"]

    @property
    def vocab_size(self) -> int:
        return self.manifest["vocab_size"]

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    @property
    def class_names(self) -> list[str]:
        return self.manifest["class_names"]

    @property
    def view_spec(self) -> ViewSpec:
        return ViewSpec.from_dict(self.manifest["views"])

    def validate(self, vocab_size: int | None = None, grid_size: int | None = None,
                 num_classes: int | None = None, model: str | None = None) -> None:
        """Raise ``DataError`` naming the first way this store disagrees with a model config, or with a
        trained model when ``model`` names it (a checkpoint's sizes are fixed: the fix is other codes)."""
        tok, spec = self.manifest["tokenizer"], self.view_spec
        against = f"the model in {model} has" if model else "config says"

        def fix(extract: str, setting: str) -> str:
            return extract if model else f"{extract} or set model.{setting}"

        if vocab_size is not None and vocab_size != self.vocab_size:
            raise DataError(
                f"store {self.path} was extracted with a {self.vocab_size}-code tokenizer, {against} vocab_size="
                f"{vocab_size}: " + fix(f"re-run mirai extract with a {vocab_size}-code tokenizer", f"vocab_size={self.vocab_size}")
                + f" (the store's tokenizer: {tok['name']} at {tok['path']})"
            )
        if grid_size is not None and grid_size != self.grid_size:
            raise DataError(
                f"store {self.path} holds {self.grid_size}x{self.grid_size} token grids ({spec.image_size} px "
                f"images), {against} grid_size={grid_size}: "
                + fix(f"re-run mirai extract with a tokenizer that makes {grid_size}x{grid_size} codes of them (the "
                      f"fashion/vq{{8,16}} pair on Fashion-MNIST), or with --image-size {grid_size * spec.image_size // self.grid_size}",
                      f"grid_size={self.grid_size}")
            )
        if num_classes is not None and num_classes != self.num_classes:
            raise DataError(
                f"store {self.path} has {self.num_classes} classes, {against} num_classes={num_classes}: "
                + fix("extract the intended dataset", f"num_classes={self.num_classes}")
            )
        if not self._contents_checked:
            self.check_contents()

    def scan_code_range(self, rows_per_chunk: int | None = None) -> tuple[int, int]:
        """(smallest, largest) code id in ``codes.npy``, read in chunks of about 64 MB."""
        n = len(self.codes)
        if n == 0:
            return 0, 0
        row_bytes = max(1, self.codes[0].nbytes)
        step = rows_per_chunk or max(1, (64 << 20) // row_bytes)
        low, high = None, None
        for start in range(0, n, step):
            chunk = np.asarray(self.codes[start:start + step])
            low = int(chunk.min()) if low is None else min(low, int(chunk.min()))
            high = int(chunk.max()) if high is None else max(high, int(chunk.max()))
        return low, high

    def check_contents(self, rescan: bool = False) -> None:
        """Raise ``DataError`` when the arrays hold what no model built for this store can take:
        class labels outside ``0..num_classes-1`` or code ids outside ``0..vocab_size-1``.

        Labels are always read. Code ids come from the range recorded at extraction
        (``code_range`` in the manifest) unless ``rescan`` or the store lacks it; then
        ``codes.npy`` is read in chunks, and a recorded range it disagrees with is an error too.
        """
        fix = "re-run mirai extract with the tokenizer and dataset the model is built for"
        if len(self.labels):
            low, high = int(self.labels.min()), int(self.labels.max())
            if low < 0 or high >= self.num_classes:
                raise DataError(
                    f"store {self.path} has class labels {low}..{high}, outside the {self.num_classes} classes "
                    f"0..{self.num_classes - 1} it (and model.num_classes) declares: {fix}, or, if it really "
                    f"has {high + 1} classes, extract it so and set model.num_classes={high + 1}")
        recorded = self.manifest.get("code_range")
        if rescan or not (isinstance(recorded, list) and len(recorded) == 2):
            low, high = self.scan_code_range()
            if isinstance(recorded, list) and [low, high] != recorded:
                raise DataError(f"{self.path / CODES} holds code ids {low}..{high} but extraction recorded "
                                f"{recorded[0]}..{recorded[1]}: the file was changed since; {fix}")
        else:
            low, high = recorded
        if low < 0 or high >= self.vocab_size:
            raise DataError(
                f"store {self.path} holds code ids {low}..{high}, outside the vocabulary 0..{self.vocab_size - 1} "
                f"of its {self.vocab_size}-code tokenizer (model.vocab_size={self.vocab_size}): the codes come "
                f"from another tokenizer; {fix}")
        self._contents_checked = True

    # ---------------------------------------------------------------- contents
    def tokens(self, index: int, view: int) -> np.ndarray:
        """Code ids ``(g, g)`` of one view of one image, as int64."""
        return np.asarray(self.codes[index, view], dtype=np.int64)

    def source(self) -> ImageSource:
        """The dataset the store was extracted from (opened on first use)."""
        if self._source is None:
            pillow = self.manifest.get("pillow_version")
            if pillow != PIL.__version__:
                warnings.warn(f"store {self.path} was rendered with Pillow {pillow}, this is Pillow "
                              f"{PIL.__version__}: resized views may differ slightly from the extracted ones")
            source = open_source(self.manifest["dataset"], self.class_names, self.files, self.source_root)
            if len(source) != len(self):
                raise DataError(f"the dataset behind {self.path} now has {len(source)} images, the store "
                                f"{len(self)}: it changed since extraction; re-run mirai extract")
            self._source = source
        return self._source

    def source_image(self, index: int, view: int) -> np.ndarray:
        """The exact uint8 ``(H, W, 3)`` pixels whose codes are ``codes[index, view]``."""
        return render_view(self.source().image(index), view, self.view_spec)

    def source_pixels(self, indices: Sequence[int], views: Sequence[int]) -> np.ndarray:
        """``source_image`` of several rows, uint8 ``(B, H, W, 3)`` (a quarter of the floats' bytes to
        hand from a DataLoader worker to the device)."""
        spec, source = self.view_spec, self.source()
        return np.stack([render_view(source.image(int(i)), int(v), spec) for i, v in zip(indices, views)])

    def source_images(self, indices: Sequence[int], views: Sequence[int]) -> torch.Tensor:
        """``source_image`` of several rows as float ``(B, 3, H, W)`` in [0, 1] (foresight encoder input)."""
        return to_unit_range(self.source_pixels(indices, views))

    def load_tokenizer(self, path: str | Path | None = None, strict: bool = False) -> nn.Module | None:
        """The tokenizer that made the codes (from ``path`` or the manifest), checked by weight hash.

        When it is missing or differs, returns None with a warning, or raises ``DataError`` if
        ``strict``: decoding with another tokenizer would give plausible-looking wrong images.
        """
        recorded = self.manifest["tokenizer"]
        if path is not None and not resolve(path, "tokenizer").exists():
            raise DataError(f"tokenizer {path} does not exist; check the path (the store was extracted with "
                            f"{recorded.get('path')})")
        path = path or recorded.get("path")
        if path is None or not resolve(path, "tokenizer").exists():  # asset names (fashion/vq16) too
            problem = (f"the tokenizer of {self.path} ({recorded.get('path')}) is not available; "
                       "pass the original checkpoint explicitly")
        else:
            vq = load_vq(path, recorded.get("ema", False))
            if state_hash(vq) == recorded["sha256"]:
                return vq
            problem = (f"tokenizer {path} is not the one {self.path} was extracted with (weights differ); "
                       "pass the original checkpoint")
        if strict:
            raise DataError(problem)
        warnings.warn(problem)
        return None
