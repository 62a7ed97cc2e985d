import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mirai.errors import ConfigError
from mirai.models import GPT_CONFIGS, build_gpt
from mirai.models.gpt import check_token_ids, ffn_hidden_dim
from mirai.models.rope import apply_rope, rope_2d_table, rope_factors

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from rope_speed import llamagen_rope  # noqa: E402  (LlamaGen's formula, the benchmark's reference)


def tiny(**kw):
    return build_gpt("GPT-Nano", vocab_size=kw.pop("vocab_size", 40), grid_size=kw.pop("grid_size", 4),
                     num_classes=kw.pop("num_classes", 5), **kw)


def test_gpt_b_state_dict_matches_llamagen_names_and_shapes():
    with torch.device("meta"):
        model = build_gpt("GPT-B", vocab_size=16384, grid_size=16, num_classes=1000)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected_block = {
        "attention.wqkv.weight": (2304, 768),
        "attention.wo.weight": (768, 768),
        "feed_forward.w1.weight": (2048, 768),
        "feed_forward.w3.weight": (2048, 768),
        "feed_forward.w2.weight": (768, 2048),
        "attention_norm.weight": (768,),
        "ffn_norm.weight": (768,),
    }
    expected = {
        "tok_embeddings.weight": (16384, 768),
        "cls_embedding.embedding_table.weight": (1001, 768),
        "norm.weight": (768,),
        "output.weight": (16384, 768),
    }
    for i in range(12):
        expected.update({f"layers.{i}.{k}": v for k, v in expected_block.items()})
    assert shapes == expected
    assert sum(math.prod(s) for s in shapes.values()) == pytest.approx(111e6, rel=0.01)


def test_named_configs_and_overrides():
    assert set(GPT_CONFIGS) >= {"GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-XXXL", "GPT-1B", "GPT-3B", "GPT-S"}
    with torch.device("meta"):
        s = build_gpt("GPT-S")
        b = build_gpt("GPT-B")
        three_b = build_gpt("GPT-3B", vocab_size=16, grid_size=2)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert 0.4 < count(s) / count(b) < 0.6
    assert three_b.args.head_dim == 100
    m = tiny(n_layer=3, dim=32, n_head=4)
    assert len(m.layers) == 3 and m.tok_embeddings.weight.shape == (40, 32)
    with pytest.raises(ConfigError, match="unknown GPT argument"):
        build_gpt("GPT-Nano", bogus=1)
    with pytest.raises(ConfigError, match="unknown GPT config"):
        build_gpt("GPT-Q")


def test_ffn_width_rounds_like_llamagen():
    from mirai.models.registry import gpt_args

    assert ffn_hidden_dim(gpt_args("GPT-B")) == 2048
    assert ffn_hidden_dim(gpt_args("GPT-L")) == 2816  # int(2*4096/3)=2730 -> multiple of 256
    assert ffn_hidden_dim(gpt_args("GPT-Nano")) == 256


def test_initial_loss_is_log_vocab():
    model = tiny(vocab_size=37).train()
    tokens = torch.randint(0, 37, (4, 16))
    logits = model(tokens[:, :-1], torch.randint(0, 5, (4,)))
    assert logits.shape == (4, 16, 37)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    assert loss.item() == pytest.approx(math.log(37), abs=1e-5)


def test_init_statistics_and_dropout_defaults():
    model = build_gpt("GPT-Mini", vocab_size=64, grid_size=8, num_classes=10)
    w = model.layers[0].attention.wqkv.weight
    assert w.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(model.output.weight) == 0
    assert model.tok_dropout.p == 0.1 and model.layers[0].attention.resid_dropout.p == 0.1
    assert model.layers[0].feed_forward.ffn_dropout.p == 0.1 and model.cls_embedding.dropout_prob == 0.1


def test_class_dropout_uses_null_class():
    model = tiny(class_dropout_prob=1.0).train()
    emb = model.cls_embedding(torch.tensor([0, 1, 2]))
    null = model.cls_embedding.embedding_table.weight[5]
    assert torch.equal(emb[:, 0], null.expand(3, -1))


def test_rope_table_against_hand_computation():
    g, head_dim = 3, 8
    table = rope_2d_table(g, head_dim, base=10000.0, cls_token_num=1)
    assert table.shape == (1 + g * g, head_dim // 2, 2)
    assert torch.count_nonzero(table[0]) == 0  # class position: all-zero table
    # Row half uses frequencies 1 and 1/100 (base^(-2i/half) with half=4); column half the same.
    freqs = torch.tensor([1.0, 10000 ** (-2 / 4)])
    for cell in range(g * g):
        r, c = divmod(cell, g)
        angles = torch.cat([r * freqs, c * freqs])
        assert torch.allclose(table[1 + cell, :, 0], angles.cos(), atol=1e-6)
        assert torch.allclose(table[1 + cell, :, 1], angles.sin(), atol=1e-6)
    x = torch.randn(1, 1 + g * g, 1, head_dim)
    y = apply_rope(x, rope_factors(table))
    pair = x[0, 5, 0, :2]
    angle = table[5, 0, 1].atan2(table[5, 0, 0])
    rot = torch.stack([pair[0] * angle.cos() - pair[1] * angle.sin(), pair[1] * angle.cos() + pair[0] * angle.sin()])
    assert torch.allclose(y[0, 5, 0, :2], rot, atol=1e-6)
    assert torch.count_nonzero(y[0, 0]) == 0


@pytest.mark.parametrize("head_dim", [16, 20, 32, 64, 100])  # 20, 100 (GPT-3B): pairs not a multiple of 8
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_is_bit_identical_to_llamagens_forward_and_backward(head_dim, dtype):
    # As Attention calls it: q and k heads as a strided view of the fused qkv projection's output.
    g, heads = 4, 3
    table = rope_2d_table(g, head_dim)
    qkv = torch.randn(2, 1 + g * g, 3 * heads * head_dim, dtype=dtype, requires_grad=True)
    view = qkv[..., : 2 * heads * head_dim].view(2, 1 + g * g, 2 * heads, head_dim)
    grad_out = torch.randn(2, 1 + g * g, 2 * heads, head_dim, dtype=dtype)
    ours, theirs = apply_rope(view, rope_factors(table)), llamagen_rope(view, table)
    assert ours.dtype == dtype and torch.equal(ours, theirs)
    assert torch.equal(*(torch.autograd.grad((y * grad_out).sum(), qkv)[0] for y in (ours, theirs)))


def test_rope_refuses_a_table_that_does_not_fit():
    with pytest.raises(ValueError, match="head size divisible by 4.*got 15"):
        rope_2d_table(4, 15)
    table = rope_2d_table(4, 16)
    factors = rope_factors(table)
    for x in (torch.randn(1, 5, 2, 16), torch.randn(1, 17, 2, 32)):  # other length; other head size
        with pytest.raises(ValueError, match=r"factors of shapes \(1, 17, 1, 8, 2\).*should be"):
            apply_rope(x, factors)
    x = torch.randn(1, 17, 2, 16)
    # Only the factors of one table: the table itself, a hand-made or reordered tuple, one factor.
    for wrong in (table, factors[::-1], tuple(factors), factors.cos):
        with pytest.raises(TypeError, match=r"pass rope_factors\(table\)"):
            apply_rope(x, wrong)
    mixed = type(factors)(factors.cos, rope_factors(table[:1]).sin)  # would broadcast silently
    with pytest.raises(ValueError, match=r"\(1, 1, 1, 8, 2\) do not fit"):
        apply_rope(x, mixed)
    for bad in (torch.randn(1, 17, 16), torch.randn(1, 17, 2, 15)):  # no head axis; odd head size
        with pytest.raises(ValueError, match=r"\(B, T, H, D\) with an even D"):
            apply_rope(bad, factors)
    with pytest.raises(ValueError, match=r"shape \(T, D/2, 2\).*got \(17, 8\)"):
        rope_factors(table[..., 0])



def test_hidden_states_and_early_stop():
    model = tiny(n_layer=3).eval()
    tokens, labels = torch.randint(0, 40, (2, 15)), torch.tensor([0, 4])
    logits, hidden = model.forward_with_hidden(tokens, labels, (2,))
    assert set(hidden) == {2} and hidden[2].shape == (2, 16, 64)
    assert torch.equal(model.hidden_state(tokens, labels, 2), hidden[2])
    assert torch.equal(model(tokens, labels), logits)
    for call in (lambda: model.forward_with_hidden(tokens, labels, (2, 9)), lambda: model.hidden_state(tokens, labels, 0)):
        with pytest.raises(ValueError, match=r"outside this GPT's blocks 1..3"):
            call()


def test_bad_tokens_and_grid_give_clear_errors():
    model = tiny().eval()
    # The id range is checked where batches are made (host side), not in forward.
    for bad, got in ((torch.full((1, 3), 40), r"\[40, 40\]"), (np.array([[3, -1]]), r"\[-1, 3\]")):
        with pytest.raises(ValueError, match=rf"token ids must lie in \[0, 40\); got {got}"):
            check_token_ids(bad, model.args.vocab_size)
    check_token_ids(np.zeros((0, 4), dtype=np.int64), 40)
    check_token_ids(torch.tensor([[0, 39]]), 40)
    with pytest.raises(ValueError, match="do not fit"):
        model(torch.zeros(1, 16, dtype=torch.long), torch.tensor([0]))


def test_bf16_cast_keeps_rope_in_fp32():
    model = tiny().to(torch.bfloat16)
    assert model.freqs_cis.dtype == torch.float32
    assert torch.equal(model.freqs_cis, tiny().freqs_cis)  # its fp32 values, not bf16 values cast back
    assert model.output.weight.dtype == torch.bfloat16
