"""``mirai data check``: look at a code store's codes next to the pixels they came from."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    from mirai.cli.flags import add_flag

    parser = subparsers.add_parser("data", help="inspect code stores")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser(
        "check",
        help="decode stored codes to a PNG beside their source views and re-encode them",
        description="Picks --n images spread over the store, renders the view each stored row came from, "
        "decodes the stored codes with the store's tokenizer, and writes a grid: each source row is "
        "followed by the row of its decoded codes. Also re-encodes the rendered views and reports how "
        "many tokens match the store; below --min-agreement the command fails (the dataset, views or "
        "tokenizer changed since extraction). Before that it reads the whole store once and fails when a code "
        "id or class label lies outside the store's vocabulary or classes.",
    )
    p.add_argument("store", help="code store directory (made by mirai extract)")
    p.add_argument("--n", type=int, default=16, help="number of images to show")
    p.add_argument("--out", default="data-check.png", help="PNG to write")
    p.add_argument("--nrow", type=int, default=8, help="images per grid row")
    p.add_argument("--seed", type=int, default=0, help="picks which view of each image is shown")
    p.add_argument("--tokenizer", help="tokenizer checkpoint (default: the one recorded in the store)")
    add_flag(p, "--data-root", ("--source-root",), dest="source_root", metavar="DATA_ROOT", help="dataset folder, when it moved since "
             "extraction")
    p.add_argument("--min-agreement", type=float, default=0.99,
                   help="fail when fewer re-encoded tokens than this fraction match the store")
    p.add_argument("--device", default="cpu", help="torch device")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from mirai.data.codes import CodeStore, random_view
    from mirai.data.folders import IMAGE_EXTENSIONS
    from mirai.data.images import save_image_grid
    from mirai.data.options import check_output_file, finite_float, positive_int, resolve_device
    from mirai.data.transforms import to_model_range, to_uint8_hwc
    from mirai.errors import DataError

    positive_int(args.n, "--n")
    positive_int(args.nrow, "--nrow")
    min_agreement = finite_float(args.min_agreement, "--min-agreement", 0.0, 1.0)
    device = resolve_device(args.device)
    store = CodeStore.open(args.store, source_root=args.source_root)
    check_output_file(args.out, "--out", suffixes=IMAGE_EXTENSIONS)
    if Path(store.path).resolve() in Path(args.out).resolve().parents:
        raise DataError(f"--out {args.out} lies inside the code store {store.path}; write the PNG elsewhere")
    store.check_contents(rescan=True)  # ids past the vocabulary or labels past the classes: fail here
    vq = store.load_tokenizer(args.tokenizer, strict=True).to(device)

    indices = np.unique(np.linspace(0, len(store) - 1, min(args.n, len(store))).round().astype(int))
    views = [random_view(args.seed, 0, int(i), store.num_views) for i in indices]
    sources = np.stack([store.source_image(int(i), v) for i, v in zip(indices, views)])
    codes = torch.from_numpy(np.stack([store.tokens(int(i), v) for i, v in zip(indices, views)]))
    with torch.inference_mode():
        decoded = to_uint8_hwc(vq.decode_indices(codes.to(device)).clamp(-1, 1))
        reencoded = vq.encode_to_indices(to_model_range(sources).to(device)).cpu()
    agreement = float((reencoded == codes).float().mean())

    # Alternate a row of source views with the row of their decoded codes.
    rows = []
    for start in range(0, len(indices), args.nrow):
        rows += [sources[start:start + args.nrow], decoded[start:start + args.nrow]]
    width = min(args.nrow, len(indices))
    pad = [np.full((width - len(r), *r.shape[1:]), 255, np.uint8) for r in rows]
    grid_images = np.concatenate([np.concatenate([r, p]) for r, p in zip(rows, pad)])
    save_image_grid(grid_images, width, args.out)

    g = store.grid_size
    print(f"{args.store}: {len(store)} images x {store.num_views} views, {g}x{g} codes, "
          f"vocab {store.vocab_size}, {store.num_classes} classes")
    print(f"re-encoded source views match {agreement:.2%} of stored tokens ({codes.numel()} tokens checked)")
    print(f"wrote {args.out}: rows alternate source views and their decoded codes")
    if agreement < min_agreement:
        raise DataError(f"only {agreement:.2%} of re-encoded tokens match the store (< {min_agreement:.0%}): "
                        "the dataset, views or tokenizer changed since extraction; re-run mirai extract")
    return 0
