"""Models: LlamaGen's GPT and VQ tokenizer, registered with the checkpoint code."""

from mirai import checkpoint
from mirai.models.gpt import GPT, GPTArgs
from mirai.models.registry import GPT_CONFIGS, build_gpt, gpt_args
from mirai.models.vq import VQ_CONFIGS, VQArgs, VQModel, build_vq, vq_from_llamagen_state

checkpoint.register_kind(
    "gpt", GPT,
    build=lambda name, args: GPT(GPTArgs(**args)),
    describe=lambda model: (getattr(model, "name", "GPT"), model.args.to_dict()),
)

checkpoint.register_kind(
    "vq", VQModel,
    build=lambda name, args: VQModel(VQArgs(**args), name=name),
    describe=lambda model: (model.name, model.args.to_dict()),
)

__all__ = [
    "GPT", "GPTArgs", "GPT_CONFIGS", "build_gpt", "gpt_args",
    "VQModel", "VQArgs", "VQ_CONFIGS", "build_vq", "vq_from_llamagen_state",
]
