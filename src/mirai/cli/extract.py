"""``mirai extract``: tokenize a dataset's views once into a memory-mapped code store."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_IMAGE_SIZE = {"fashion-mnist": 32, "folder": 256}
DEFAULT_VIEWS = {"fashion-mnist": "flip", "folder": "ten_crop"}


def add_parser(subparsers) -> None:
    from mirai.cli.flags import add_flag

    p = subparsers.add_parser(
        "extract",
        help="tokenize a dataset (all views of every image) into a code store",
        description="Encodes every view of every image with a VQ tokenizer and writes codes.npy, labels.npy "
        "and manifest.json to --out. Class folders: 4 corner + centre crops of an ADM centre crop at "
        "crop-ratio x the image size, and their mirrors (LlamaGen's ten crops). Fashion-MNIST: the image "
        "padded to 32 px and its mirror.",
    )
    p.add_argument("--tokenizer", required=True, help="VQ tokenizer: Mirai checkpoint folder, asset name "
                   "(fashion/vq8) or hf://OWNER/REPO")
    p.add_argument("--ema", action="store_true", help="use the tokenizer's EMA weights")
    p.add_argument("--dataset", required=True, choices=["fashion-mnist", "folder"])
    p.add_argument("--split", default="train", choices=["train", "test"],
                   help="Fashion-MNIST split (recorded only, for folders)")
    add_flag(p, "--data-root", ("--root",), dest="root", help="dataset folder (Fashion-MNIST: found automatically when omitted; "
                   "folder: the directory whose sub-folders are the classes)")
    p.add_argument("--num-classes", type=int, help="expected class count; a folder with another count is an error")
    p.add_argument("--image-size", type=int, help="view size in pixels (default 32 for fashion-mnist, 256 for folder)")
    p.add_argument("--views", choices=["ten_crop", "flip"],
                   help="which views to extract (default ten_crop for folder, flip for fashion-mnist)")
    p.add_argument("--crop-ratio", type=float, help="ten_crop: centre-crop size / image size (default 1.1, ADM's)")
    p.add_argument("--per-class", type=int, help="keep only K images of each class: the first K in sorted order, "
                   "or K chosen by --subset-seed; a class with fewer is an error")
    p.add_argument("--subset-seed", type=int,
                   help="folder: draw the --per-class images at random with this seed (a hash of seed and file "
                   "name: the same files on every machine), e.g. --per-class 100 --subset-seed 0 for the paper's "
                   "low-resource ImageNet subset")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (each adds all its views)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes decoding images")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--out", required=True, help="code store directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing code store at --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mirai.checkpoint import check_output_dir
    from mirai.data.codes import FORMAT, MANIFEST, STORE_FILES, extract, load_vq
    from mirai.data.views import ViewSpec
    from mirai.errors import ConfigError, DataError

    out = Path(args.out)
    check_output_dir(out, "--out", holds="code store", marker=MANIFEST, fmt=FORMAT, own=STORE_FILES,
                     overwrite=args.overwrite)
    # Cheap settings first, so a typo is reported before the dataset and tokenizer are read;
    # extract() checks batch size, workers and device with the same rules.
    kind = args.views or DEFAULT_VIEWS[args.dataset]
    if args.crop_ratio is not None and kind != "ten_crop":
        # Flip views are the whole image: a crop ratio given with them would be recorded and silently unused.
        raise ConfigError(f"--crop-ratio applies to --views ten_crop only; the {kind} views of {args.dataset} "
                          "are the whole image and its mirror. Drop --crop-ratio or pass --views ten_crop")
    spec = ViewSpec.from_dict({
        "kind": kind,
        "image_size": args.image_size if args.image_size is not None else DEFAULT_IMAGE_SIZE[args.dataset],
        **({} if args.crop_ratio is None else {"crop_ratio": args.crop_ratio}),
    })
    if args.dataset == "fashion-mnist":
        from mirai.data.fashion_mnist import FashionMNIST

        if args.subset_seed is not None:
            raise ConfigError("--subset-seed applies to --dataset folder; Fashion-MNIST's --per-class keeps the "
                              "first K images of each class")
        source = FashionMNIST(args.split, args.root, args.per_class)
        if args.num_classes is not None and args.num_classes != len(source.class_names):
            raise DataError(f"Fashion-MNIST has {len(source.class_names)} classes, "
                            f"not --num-classes {args.num_classes}; drop the option or set it to 10")
    else:
        from mirai.data.folders import ImageFolder

        if args.root is None:
            raise DataError("--dataset folder needs --data-root, the directory whose sub-folders are the classes")
        source = ImageFolder.scan(args.root, args.num_classes, args.per_class, args.subset_seed)
    vq = load_vq(args.tokenizer, args.ema)
    store = extract(vq, source, spec, out, tokenizer_path=args.tokenizer, tokenizer_ema=args.ema,
                    batch_size=args.batch_size, num_workers=args.workers, device=args.device or "auto",
                    overwrite=args.overwrite)
    g = store.grid_size
    print(f"wrote {len(store)} images x {store.num_views} views of {g}x{g} codes "
          f"({store.vocab_size}-code tokenizer, {store.num_classes} classes) to {out}")
    return 0
