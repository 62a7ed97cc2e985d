"""FSDP2 (``distributed.strategy: fsdp``) on CPU with 2 gloo processes: it trains the same weights
as DDP, shards the EMA and a Mirai-E teacher, replicates a Mirai-I encoder, computes in bf16 when
asked, and its sharded checkpoints resume on 1 process and export a safetensors checkpoint that
``mirai.checkpoint.load`` reads. One spawn serves the tests."""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.fsdp import MixedPrecisionPolicy

from mirai import checkpoint
from mirai.config import from_dict, to_dict
from mirai.errors import ConfigError
from mirai.models import GPT, build_gpt
from mirai.training.config import TrainConfig, resume_changes
from mirai.training.fsdp import full_state_dict, is_sharded, shard_gpt
from mirai.training.trainer import Trainer

from helpers import assert_same, encoder_overrides, make_cfg, weights

# Mirai-E with its own teacher (teacher_decay): heads in the objective, a teacher outside it.
TEACHER = {"foresight.source": "ema", "foresight.warmup": 1, "foresight.warmup_unit": "step",
           "foresight.teacher_decay": 0.5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _modules(t: Trainer) -> dict:
    teacher = t.saved_states().get("teacher")  # Mirai-E with teacher_decay only
    return {"gpt": t.gpt, "ema": t.ema, "heads": t.objective.auxiliary, **({"teacher": teacher.module} if teacher else {})}


def _full(t: Trainer) -> dict:
    """Every module's whole weights on rank 0 (collective for the sharded ones)."""
    out = {}
    for name, module in _modules(t).items():
        if name == "heads":  # sharded under the objective root: gather through it
            state = full_state_dict(t.objective)
            out[name] = {k.removeprefix("auxiliary."): v for k, v in state.items() if k.startswith("auxiliary.")}
        else:
            out[name] = {k: v.clone() for k, v in full_state_dict(module).items()}
    return out


def _worker(rank: int, world: int, port: int, cfgs: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        ddp = Trainer(from_dict(TrainConfig, cfgs["ddp"]))
        ddp.fit()
        fsdp = Trainer(from_dict(TrainConfig, cfgs["fsdp"]))
        # Everything FSDP keeps for the model is sharded: no rank holds a full copy.
        sharded = {name: is_sharded(m) for name, m in _modules(fsdp).items() if name != "heads"}
        for _ in range(2):
            fsdp.train_step()
        fsdp.save()
        fsdp.fit()  # steps 3..4, then the final checkpoint
        # A new sharded run resumed from step 2 on the same 2 ranks.
        again = Trainer(from_dict(TrainConfig, {**cfgs["fsdp"], "run_dir": cfgs["fsdp"]["run_dir"] + "_resumed"}))
        again.resume(Path(cfgs["fsdp"]["run_dir"]) / "checkpoints" / "step_0000002")
        again.fit()
        result = {"ddp": _full(ddp), "fsdp": _full(fsdp), "resumed": _full(again), "sharded": sharded,
                  "local_numel": next(iter(fsdp.gpt.layers[0].parameters())).to_local().numel()}
        # Mirai-I: DDP, FSDP, and FSDP computing in bf16 (what `auto` picks on a GPU).
        for name in ("ddp_i", "fsdp_i", "fsdp_i_bf16"):
            t = Trainer(from_dict(TrainConfig, cfgs[name]))
            t.fit()
            result[name] = _full(t)
            encoder = t.objective.auxiliary.source.encoder  # frozen: a whole replica on every rank
            result[name + "_encoder_sharded"] = is_sharded(encoder) or any(
                isinstance(p, torch.distributed.tensor.DTensor) for p in encoder.parameters())
        if rank == 0:
            torch.save(result, out)
        # Both ranks leave together, their pending gloo work done: a rank that tore its group down while
        # the other still saved was seen to abort at exit under load ("terminate called ...").
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(stores, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    common = dict(steps=4, dropout=False, **TEACHER)
    fsdp = {"distributed.strategy": "fsdp"}
    cfgs = {"ddp": to_dict(make_cfg(stores, root / "ddp", **common)),
            "fsdp": to_dict(make_cfg(stores, root / "fsdp", **common, **fsdp))}
    mirai_i = dict(steps=2, dropout=False, **encoder_overrides(stores))
    cfgs |= {"ddp_i": to_dict(make_cfg(stores, root / "ddp_i", **mirai_i)),
             "fsdp_i": to_dict(make_cfg(stores, root / "fsdp_i", **mirai_i, **fsdp)),
             "fsdp_i_bf16": to_dict(make_cfg(stores, root / "fsdp_i_bf16", **mirai_i, **fsdp,
                                             **{"distributed.param_dtype": "bf16"}))}
    out = root / "result.pt"
    mp.start_processes(_worker, args=(2, _free_port(), cfgs, str(out)), nprocs=2, start_method="spawn")
    return root, cfgs, torch.load(out, weights_only=True)


def test_fsdp_trains_the_same_weights_as_ddp(two_ranks):
    _, _, result = two_ranks
    assert all(result["sharded"].values()), result["sharded"]
    full = result["fsdp"]["gpt"]["layers.0.attention.wqkv.weight"].numel()
    assert result["local_numel"] * 2 == full  # rank 0 holds half of the block's first matrix
    for name, want in result["ddp"].items():
        got = result["fsdp"][name]
        assert got.keys() == want.keys() and want, name
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")


def test_fsdp_with_mirai_i_replicates_the_encoder_and_matches_ddp(two_ranks):
    _, _, result = two_ranks
    assert not any(result[f"{name}_encoder_sharded"] for name in ("ddp_i", "fsdp_i", "fsdp_i_bf16"))
    for name, want in result["ddp_i"].items():
        assert want and result["fsdp_i"][name].keys() == want.keys(), name
        for k in want:
            torch.testing.assert_close(result["fsdp_i"][name][k], want[k], rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")


def test_fsdp_in_bf16_keeps_fp32_master_weights_and_trains_like_fp32(two_ranks):
    """``param_dtype: bf16`` computes the blocks in bf16 (the weights differ from the fp32 run's) while the
    sharded master weights stay fp32; two AdamW steps at lr 3e-3 move no weight more than 4 lr from fp32's."""
    _, _, result = two_ranks
    bf16, fp32 = result["fsdp_i_bf16"]["gpt"], result["fsdp_i"]["gpt"]
    assert all(v.dtype == torch.float32 for v in bf16.values())
    assert any(not torch.equal(bf16[k], fp32[k]) for k in fp32)
    for k in fp32:
        torch.testing.assert_close(bf16[k], fp32[k], rtol=0, atol=4 * 3e-3, msg=k)


def test_sharded_checkpoint_resumes_exactly_on_the_same_ranks(two_ranks):
    _, _, result = two_ranks
    for name, want in result["fsdp"].items():
        assert_same(result["resumed"][name], want)


def test_sharded_checkpoint_resumes_on_one_process_and_exports(two_ranks):
    root, cfgs, result = two_ranks
    step2 = root / "fsdp" / "checkpoints" / "step_0000002"
    assert (step2 / ".metadata").is_file() and len(list(step2.glob("*.distcp"))) == 2
    # The consolidated export is an ordinary checkpoint: sampling loads it.
    final = root / "fsdp" / "checkpoints" / "step_0000004"
    assert_same(weights(checkpoint.load(final, GPT, use_ema=True)), result["fsdp"]["ema"])
    assert_same(weights(checkpoint.load(final, GPT)), result["fsdp"]["gpt"])

    # Resume the 2-rank checkpoint of step 2 in one process: the exported weights come back exactly...
    cfg = from_dict(TrainConfig, {**cfgs["fsdp"], "run_dir": str(root / "fsdp")})
    one = Trainer(cfg)
    one.resume(step2)
    assert one.step == 2 and not is_sharded(one.gpt)
    assert_same(weights(one.gpt), weights(checkpoint.load(step2, GPT)))
    assert_same(weights(one.ema), weights(checkpoint.load(step2, GPT, use_ema=True)))
    # ...and the optimizer state, teacher and heads too: two more steps match the 2-rank run.
    for _ in range(2):
        one.train_step()
    for name, module in _modules(one).items():
        for k, v in weights(module).items():
            torch.testing.assert_close(v, result["fsdp"][name][k], rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")


def _bf16_forward_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        torch.manual_seed(0)
        model = build_gpt("GPT-Micro", vocab_size=64, grid_size=4, num_classes=10).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.5)  # large enough that RoPE's rounding reaches the logits
        cast = copy.deepcopy(model).to(torch.bfloat16)
        seen = []
        model.layers[0].attention.register_forward_pre_hook(lambda module, args: seen.append(str(args[1].cos.dtype)))
        shard_gpt(model, MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
        tokens, labels = torch.randint(0, 64, (2, 15)), torch.tensor([1, 2])
        with torch.no_grad():
            torch.save({"sharded": model(tokens, labels), "cast": cast(tokens, labels), "rope": seen}, out)
    finally:
        torch.distributed.destroy_process_group()


def test_fsdp_in_bf16_rotates_by_the_fp32_rope_table(tmp_path):
    """Blocks get the RoPE factors in fp32 under FSDP2's bf16 policy (LlamaGen's FSDP does not cast block
    inputs), so a sharded bf16 forward equals the bf16-cast model's, whose table stays fp32, bit for bit."""
    out = tmp_path / "forward.pt"
    mp.spawn(_bf16_forward_worker, args=(_free_port(), str(out)), nprocs=1)
    result = torch.load(out, weights_only=True)
    assert result["rope"] == ["torch.float32"]
    assert torch.equal(result["sharded"], result["cast"])


def test_activation_checkpointing_changes_no_weight(stores, tmp_path):
    """Per-block recomputation (one process) gives the same weights, bit for bit, and the same names."""
    runs = []
    for flag in (False, True):
        t = Trainer(make_cfg(stores, tmp_path / str(flag), dropout=False, **TEACHER,
                             **{"distributed.activation_checkpointing": flag}))
        for _ in range(2):
            t.train_step()
        runs.append(weights(t.gpt))
    assert_same(runs[0], runs[1])


def test_distributed_settings_are_checked(stores, tmp_path):
    with pytest.raises(ConfigError, match="choose ddp or fsdp"):
        make_cfg(stores, tmp_path, **{"distributed.strategy": "zero3"})
    with pytest.raises(ConfigError, match="choose auto, bf16 or fp32"):
        make_cfg(stores, tmp_path, **{"distributed.param_dtype": "fp8"})
    saved = to_dict(make_cfg(stores, tmp_path))
    # A resume may not switch strategy (the checkpoint layouts differ)...
    with pytest.raises(ConfigError, match="distributed.strategy"):
        resume_changes(saved, to_dict(make_cfg(stores, tmp_path, **{"distributed.strategy": "fsdp"})))
    # ...but may trade memory for time (activation checkpointing changes no weight).
    recompute = make_cfg(stores, tmp_path, **{"distributed.activation_checkpointing": True})
    assert resume_changes(saved, to_dict(recompute)) == {"distributed.activation_checkpointing": (False, True)}
    # ...and a checkpoint written before the setting existed counts as the default (ddp).
    del saved["distributed"]
    assert resume_changes(saved, to_dict(make_cfg(stores, tmp_path))) == {}
