"""Reading LlamaGen's released ``.pt`` checkpoints into Mirai modules, and the one table of
model kinds for the commands that open a file of either kind (``mirai convert``, ``mirai sample``).

LlamaGen stores no config beside its weights, so the architecture is inferred from tensor
shapes (depth, width, vocabulary, classes) and matched against the named configs; the
token grid is not in the weights: it comes from the caller (16 for 256 px, 24 for 384 px) or,
for the released files, from ``mirai.hub.resolve.RELEASED``. Without either a GPT file is
refused: a wrong grid would silently give images of the wrong size.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mirai.checkpoint import (
    CONTAINER_KEYS, Checkpoint, llamagen_state_dicts, load_state_dict_checked, read_checkpoint, read_torch_file,
)
from mirai.errors import CheckpointError, MiraiError
from mirai.hub.resolve import ReleasedFile, refuse_a_file_of_a_checkpoint, released_file, resolve
from mirai.models.gpt import GPT
from mirai.models.registry import GPT_CONFIGS, gpt_args, infer_gpt_name
from mirai.models.vq import VQ_CONFIGS, VQModel, vq_from_llamagen_state

# The model kinds a LlamaGen file or a Mirai directory of unknown kind may hold.
MODEL_KINDS: dict[str, type[GPT] | type[VQModel]] = {"gpt": GPT, "vq": VQModel}


def detect_kind(state: dict[str, torch.Tensor]) -> str:
    """"gpt" or "vq" from a state dict's LlamaGen key names; CheckpointError if neither."""
    if "tok_embeddings.weight" in state:
        return "gpt"
    if "quantize.embedding.weight" in state:
        return "vq"
    raise CheckpointError(
        f"cannot tell whether this is a GPT or a VQ state dict (first keys: {sorted(state)[:6]})"
    )


PAR_TOKENS = "spe_tok_embeddings.special_embeddings.weight"  # PAR's n - 1 learnable tokens


def par_regions(state: dict[str, torch.Tensor], grid_size: int, regions_per_side: int | None) -> int:
    """PAR's regions per side M read from the learnable tokens (n - 1 = M^2 - 1 rows; 1 for a
    LlamaGen file); ``CheckpointError`` when the caller's ``regions_per_side`` or the grid disagrees."""
    rows = state[PAR_TOKENS].shape[0] if PAR_TOKENS in state else 0
    m = round((rows + 1) ** 0.5)
    if m * m != rows + 1:
        raise CheckpointError(f"{PAR_TOKENS} has {rows} rows, not M^2 - 1 for any M: not a PAR checkpoint")
    if regions_per_side is not None and regions_per_side != m:
        raise CheckpointError(f"the file holds a model with {m} regions per side ({rows} learnable tokens), but "
                              f"regions_per_side={regions_per_side} was asked; omit it or pass {m}")
    if grid_size % m:
        raise CheckpointError(f"a {grid_size}x{grid_size} grid cannot be split into {m}x{m} PAR regions; "
                              "pass the grid the model was trained on (24 for PAR's released 384-px models)")
    return m


def gpt_from_llamagen_state(
    state: dict[str, torch.Tensor], name: str | None = None, *, grid_size: int | None, class_dropout_prob: float = 0.1,
    regions_per_side: int | None = None,
) -> GPT:
    """Build a GPT whose shapes match a LlamaGen (or PAR) c2i state dict, and load it strictly.
    ``grid_size`` must be given: the weights do not hold it (16 for 256 px, 24 for 384 px); None raises
    ``CheckpointError`` asking for --grid-size/--image-size.
    A PAR file is recognised by its learnable tokens; ``regions_per_side`` is then checked against it."""
    try:
        vocab_size, dim = state["tok_embeddings.weight"].shape
        class_rows = state["cls_embedding.embedding_table.weight"].shape[0]
        wqkv = state["layers.0.attention.wqkv.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"not a LlamaGen class-conditional GPT state dict: key {err} is missing") from None
    if grid_size is None:
        raise CheckpointError(
            "a LlamaGen/PAR .pt does not store its token grid and this is not one of the released files Mirai "
            "knows; pass --grid-size (16 for 256-px models, 24 for 384-px ones) or --image-size (grid_size= in Python)")
    n_layer = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k)))
    inferred = infer_gpt_name(n_layer, dim)
    name = name or inferred
    if name is None:
        raise CheckpointError(
            f"no named GPT config has {n_layer} layers of width {dim}; pass the model name "
            f"(one of {sorted(GPT_CONFIGS)}) with the right n_head"
        )
    if name not in GPT_CONFIGS:
        raise CheckpointError(f"unknown GPT config {name!r}; choose one of {sorted(GPT_CONFIGS)} (or omit it: "
                              f"{inferred or 'no config'} matches the file's depth and width)")
    n_head = GPT_CONFIGS[name]["n_head"]
    if dim % n_head:
        raise CheckpointError(f"{name}'s {n_head} attention heads do not divide the file's width {dim} (--model, name=): "
                              f"leave it out ({inferred or 'no named config'} matches the file's {n_layer} layers of "
                              f"width {dim})")
    head_dim = dim // n_head
    n_kv_head = (wqkv // head_dim - n_head) // 2
    num_classes = class_rows - 1 if class_dropout_prob > 0 else class_rows
    m = par_regions(state, grid_size, regions_per_side)
    order = {"order": "par", "regions_per_side": m} if m > 1 else {}
    args = gpt_args(
        name, dim=dim, n_layer=n_layer, vocab_size=vocab_size, num_classes=num_classes, grid_size=grid_size,
        n_kv_head=n_kv_head, class_dropout_prob=class_dropout_prob, **order,
    )
    model = GPT(args, name=name)
    load_state_dict_checked(model, state)
    return model


def released_grid(spec: str | Path, grid_size: int | None) -> int | None:
    """The token grid of a LlamaGen/PAR file: the caller's, else the table's (``mirai.hub.resolve.RELEASED``)
    when ``spec`` names a released file. (The table's model name is not needed: depth and width in the
    weights give it, and they also hold for a fine-tuned file saved under a released name.)"""
    entry: ReleasedFile | None = released_file(spec)
    if grid_size is not None or entry is None or entry.kind != "gpt":
        return grid_size
    return entry.grid_size


def read_llamagen(path: str | Path, kind: str | None = None, name: str | None = None, grid_size: int | None = None,
                  regions_per_side: int | None = None) -> Checkpoint:
    """Read a LlamaGen or PAR GPT, or a VQ, ``.pt`` (any container; wrapper prefixes) as a Checkpoint.

    ``path``: a file or a name ``mirai.hub.resolve`` knows (``llamagen:c2i_B_256``, ``hf://...``).
    ``grid_size``: the GPT's token grid; None takes it from the table of released files and raises
    ``CheckpointError`` (asking for --grid-size/--image-size) for a GPT file the table does not know."""
    local = resolve(path, "weights file")
    refuse_a_file_of_a_checkpoint(local)
    grid_size = released_grid(path, grid_size)
    raw = read_torch_file(local)
    model_state, ema_state = llamagen_state_dicts(raw, path)
    # A bare state dict (no 'model'/'ema' container) does not say whether its weights are the EMA's.
    bare = isinstance(raw, dict) and not any(isinstance(raw.get(k), dict) for k in CONTAINER_KEYS)
    kind = kind or detect_kind(model_state)
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"unknown kind {kind!r}: use one of {sorted(MODEL_KINDS)}")
    try:  # the architecture is read from the weights' shapes, which a damaged or foreign file can break
        if kind == "gpt":
            module = gpt_from_llamagen_state(model_state, name=name, grid_size=grid_size,
                                             regions_per_side=regions_per_side)
            if ema_state is not None:
                load_state_dict_checked(module, ema_state)  # the EMA must have the same shapes
        else:
            module = vq_from_llamagen_state(model_state)
    except CheckpointError as err:  # the builders do not know the file: name it
        raise (err if str(path) in str(err) else CheckpointError(f"{path}: {err}")) from None
    except MiraiError:
        raise
    except (ValueError, IndexError, TypeError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its weights do not have the shapes of a LlamaGen {kind} "
                              f"({type(err).__name__}: {err}); is it the right file and kind?") from None
    name, args = module.checkpoint_config()
    model_state = {k: v for k, v in model_state.items() if k != "freqs_cis"}
    if ema_state is not None:
        ema_state = {k: v for k, v in ema_state.items() if k != "freqs_cis"}
    meta = {"source": str(path), "converted_from": "llamagen", **({"bare_state_dict": True} if bare else {})}
    return Checkpoint(module.checkpoint_kind, name, args, model_state, ema_state, meta)


def load_module(
    path: str | Path, kind: str, prefer_ema: bool = True, name: str | None = None, grid_size: int | None = None
) -> torch.nn.Module:
    """A GPT or VQ in eval mode from a Mirai directory or a LlamaGen ``.pt`` (EMA weights when
    the file has them and ``prefer_ema``; its ``loaded_weights`` attribute says which were loaded: "EMA",
    "raw", or "unlabelled" for a bare state dict, which does not say). ``path`` may be any name
    ``mirai.hub.resolve`` knows; ``grid_size`` matters for a GPT ``.pt`` only (see ``read_llamagen``)."""
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"unknown kind {kind!r}: use one of {sorted(MODEL_KINDS)}")
    grid_size = released_grid(path, grid_size)
    path = resolve(path)
    ckpt = read_llamagen(path, kind=kind, name=name, grid_size=grid_size) if path.is_file() else read_checkpoint(path)
    use_ema = prefer_ema and ckpt.ema is not None  # LlamaGen's released .pt files hold raw weights only
    try:
        module = ckpt.build(MODEL_KINDS[kind], use_ema=use_ema).eval()
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    # For titles and records, what was loaded, not what was preferred.
    module.loaded_weights = "EMA" if use_ema else "unlabelled" if ckpt.meta.get("bare_state_dict") else "raw"
    # A Mirai checkpoint records its model: a size or grid given for a .pt must not pass unnoticed here.
    stored = getattr(getattr(module, "args", None), "grid_size", None)
    if kind == "gpt" and not path.is_file() and grid_size is not None and stored != grid_size:
        raise CheckpointError(f"{path} is a Mirai checkpoint of {stored}x{stored} tokens, not {grid_size}x{grid_size}: "
                              "leave out --grid-size/--image-size (the grid_size argument), which only a "
                              "LlamaGen/PAR .pt needs")
    if not path.is_file() and name is not None and not _holds_named_model(ckpt, name):
        raise CheckpointError(f"{path} is a Mirai checkpoint of {ckpt.name or 'an unnamed model'}, whose architecture "
                              f"is not {name}'s: "
                              "leave out --model (the name argument), which only a LlamaGen/PAR .pt needs")
    return module


def _holds_named_model(ckpt: Checkpoint, name: str) -> bool:
    """Whether ``ckpt`` is the registered model ``name``: by its recorded name when that is a registered
    one, else (a module built from bare args records its class name) by the fields the named config sets,
    as ``build_gpt(name, **overrides)`` records the name whatever it overrides."""
    named = {**GPT_CONFIGS, **VQ_CONFIGS}
    if ckpt.name in named or name not in named:
        return ckpt.name == name
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in named[name].items()}
    return all(ckpt.args.get(k) == v for k, v in as_json.items())
