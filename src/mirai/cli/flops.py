"""``mirai flops``: per-image training FLOPs of the baseline, Mirai-I and Mirai-E (Table 15's convention)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "flops",
        help="per-image training FLOPs of a config (baseline, Mirai-I, Mirai-E)",
        description="Counts dense matmuls only (embedding lookups as one-hot matmuls, no attention scores), "
        "2 FLOPs per multiply-add, training = 3x forward, frozen teacher/encoder = 1x forward: the "
        "convention that reproduces the paper's Table 15. Flags override the config file.",
    )
    p.add_argument("--config", help="training YAML; its model: and foresight: sections are read")
    p.add_argument("--model", help="GPT config name (default: the config's model.name, GPT-Micro when it names "
                   "none, as training builds; GPT-B without --config)")
    p.add_argument("--grid", type=int, help="token grid side g (default: the config's or its code store's; 16)")
    p.add_argument("--vocab", type=int, help="codebook size V (default: the config's or its code store's; 16384)")
    p.add_argument("--classes", type=int, help="number of classes (default: the config's or its code store's; 1000)")
    p.add_argument("--source", choices=["none", "encoder", "ema", "all"],
                   help="what to count (default: the config's source, or all without a config)")
    p.add_argument("--k", type=int, help="number of foresight heads")
    p.add_argument("--layer", type=int, help="aligned GPT block (1-based)")
    p.add_argument("--head", choices=["mlp", "transformer"], help="head type")
    p.add_argument("--encoder", help="Mirai-I encoder name for its forward FLOPs (default: the config's or DINOv2)")
    p.add_argument("--encoder-res", type=int, help="encoder input size in pixels (default patch * g)")
    p.add_argument("--attention-scores", action="store_true", help="also count QK^T and AV")
    p.add_argument("--no-embedding", action="store_true", help="do not count embedding lookups")
    p.set_defaults(func=run)


# LlamaGen's ImageNet 256 px token grid, codebook and classes: the sizes counted when nothing else gives them.
IMAGENET_SIZES = {"vocab_size": 16384, "grid_size": 16, "num_classes": 1000}


def _heads(k: int) -> str:
    return f"{k} head" + ("s" if k != 1 else "")


def _store_sizes(data: dict, args: argparse.Namespace, model: dict) -> dict:
    """Grid, vocabulary and classes of the config's code store, for the ones neither a flag nor the
    config's model section gives (a training config leaves them to its store). ``ConfigError`` when
    the store is needed but not there: the numbers would otherwise be ImageNet's, silently."""
    from mirai.data.codes import CodeStore
    from mirai.errors import ConfigError, DataError

    keys = {"grid_size": args.grid, "vocab_size": args.vocab, "num_classes": args.classes}
    missing = [k for k, flag in keys.items() if flag is None and model.get(k) is None]
    codes = (data.get("data") or {}).get("codes")
    if not missing or not codes:
        return {}
    try:
        store = CodeStore.open(codes)
    except DataError as err:
        raise ConfigError(f"{args.config} leaves {', '.join(missing)} to its code store, which cannot be read "
                          f"({err}); extract it first, or pass --grid, --vocab and --classes") from None
    return {k: getattr(store, k) for k in missing}


def _pick(flag, configured, default):
    """The flag if given (even 0, which the model's checks then refuse), else the config's value, else the default."""
    return flag if flag is not None else configured if configured is not None else default


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from mirai.analysis.flops import Convention, measure_encoder, training_flops, vit_shape
    from mirai.config import from_dict, read_yaml
    from mirai.errors import ConfigError
    from mirai.foresight.config import ForesightConfig, encoder_name
    from mirai.models import gpt_args

    data = read_yaml(args.config) if args.config else {}
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError(f"{args.config}: the model section must be a mapping")
    default_name = "GPT-B"  # the paper's Table 15 model, without a config
    if args.config:  # a training config, possibly partial: its model, data and foresight sections are read below
        from mirai.training.config import ModelConfig, TrainConfig

        unknown = sorted(set(data) - {f.name for f in fields(TrainConfig)})
        if unknown:
            raise ConfigError(f"--config {args.config} is not a training config (it has {', '.join(unknown)}); "
                              "give one such as configs/fashion/mirai_i.yaml")
        default_name = from_dict(ModelConfig, model, "model").name  # what training builds without a model.name
    stored = _store_sizes(data, args, model) if args.config else {}
    model_name = _pick(args.model, model.get("name"), default_name)
    sizes = {key: _pick(getattr(args, flag), model.get(key) or stored.get(key), None)
             for key, flag in (("vocab_size", "vocab"), ("grid_size", "grid"), ("num_classes", "classes"))}
    imagenet = {key: value for key, value in IMAGENET_SIZES.items() if sizes[key] is None}
    if args.config and imagenet:  # without a config these defaults are the documented ones (Table 15)
        print(f"note: {args.config} gives no {', '.join(imagenet)} and no data.codes to read them from; counted "
              f"with LlamaGen's ImageNet {', '.join(f'{k}={v}' for k, v in imagenet.items())} "
              "(pass --grid, --vocab, --classes for others)")
    gpt = gpt_args(model_name, **{**sizes, **imagenet}, **(model.get("overrides") or {}))
    section = dict(data.get("foresight") or {})
    for key in ("k", "layer", "head"):
        if getattr(args, key) is not None:
            section[key] = getattr(args, key)
    source = args.source or (section.get("source", "none") if args.config else "all")
    sources = ["encoder", "ema"] if source == "all" else [] if source == "none" else [source]
    # Flags that only a foresight row reads, e.g. --k 3 with a baseline config: say so, not print the baseline alone.
    heads, encoder = {"ema", "encoder"}, {"encoder"}  # the sources whose rows read each flag
    read_by = {"--k": (args.k, heads), "--layer": (args.layer, heads), "--head": (args.head, heads),
               "--encoder": (args.encoder, encoder), "--encoder-res": (args.encoder_res, encoder)}
    unused = [flag for flag, (value, readers) in read_by.items() if value is not None and not readers & set(sources)]
    if unused:
        fix = "encoder" if {"--encoder", "--encoder-res"} & set(unused) else "all"
        print(f"note: {', '.join(unused)} not used: no foresight row that reads {'it' if len(unused) == 1 else 'them'} "
              f"is counted (source {source}); add --source {fix}")
    conv = Convention(embedding=not args.no_embedding, attention_scores=args.attention_scores)

    rows = [("baseline (next-token prediction)", training_flops(gpt, conv=conv))]
    base = rows[0][1]["total"]
    for name in sources:
        cfg = from_dict(ForesightConfig, {**section, "source": name}, "foresight")
        k = cfg.num_heads()
        if name == "ema":
            layer = cfg.resolve_layer(gpt.n_layer)
            what = "at the output" if cfg.output_diagnostic else f"+ teacher to block {layer}"
            rows.append((f"+ Mirai-E ({_heads(k)} {what})", training_flops(gpt, cfg, conv=conv)))
            continue
        spec = args.encoder or cfg.encoder_spec(gpt.dim)
        shape = vit_shape(encoder_name(spec))
        if shape is None:
            measured = measure_encoder(spec, gpt.grid_size)
            if measured is None:
                import timm

                from mirai.foresight.encoders import ALIASES, FASHION_ASSETS

                name = encoder_name(spec)
                if not timm.is_model(ALIASES.get(name, name)):
                    raise ConfigError(f"unknown encoder {name!r}: not a timm model, an encoder folder or a committed "
                                      f"encoder ({', '.join(sorted(FASHION_ASSETS))}); fix --encoder or "
                                      "foresight.encoder")
                print(f"note: {spec!r} is a timm model whose shape this command does not know; its forward is not "
                      "counted and the heads assume C=768")
            width, flops = measured or (None, None)
            rows.append((f"+ Mirai-I ({_heads(k)}, encoder not counted)",
                         training_flops(gpt, cfg, conv=conv, target_dim=width)))
            if measured is not None:
                rows.append((f"+ Mirai-I incl. {spec} forward (C={width}, measured)",
                             training_flops(gpt, cfg, conv=conv, target_dim=width, encoder_flops=flops)))
            continue
        rows.append((f"+ Mirai-I ({_heads(k)}, encoder not counted)",
                     training_flops(gpt, cfg, conv=conv, target_dim=shape.width)))
        res = _pick(args.encoder_res, None, shape.patch * gpt.grid_size)
        rows.append((f"+ Mirai-I incl. {shape.name} forward at {res} px",
                     training_flops(gpt, cfg, shape, res, conv)))

    print(f"{model_name}: {gpt.n_layer} layers, width {gpt.dim}, "
          f"{gpt.grid_size}x{gpt.grid_size} tokens, vocabulary {gpt.vocab_size}")
    print(f"{'':58s} {'FLOPs/image':>12s} {'overhead':>9s}  parts")
    for label, parts in rows:
        overhead = "-" if parts is rows[0][1] else f"{100 * (parts['total'] / base - 1):+.1f}%"
        detail = ", ".join(f"{k} {v:.3g}" for k, v in parts.items() if k != "total")
        print(f"{label:58s} {parts['total']:12.3e} {overhead:>9s}  {detail}")
    return 0
