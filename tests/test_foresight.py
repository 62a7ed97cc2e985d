import copy
import math

import pytest
import torch
from torch import nn

from mirai.config import from_dict
from mirai.errors import ConfigError
from mirai.foresight import (
    EMASource,
    EncoderSource,
    ForesightConfig,
    ForesightLoss,
    LambdaSchedule,
    MLPHead,
    OutputDiagnosticLoss,
    Progress,
    TransformerHead,
    build_auxiliary_loss,
    head_pairs,
)
from mirai.foresight.heads import default_hidden
from mirai.foresight.sources import Source
from mirai.models import build_gpt

G, V, CLASSES = 4, 32, 5


def tiny_gpt(**kw):
    return build_gpt("GPT-Nano", vocab_size=V, grid_size=G, num_classes=CLASSES, **kw)


def as_lists(head_pairs):
    return [list(zip(s.tolist(), t.tolist())) for s, t in head_pairs]


def at(epoch=100.0, fraction=0.5, step=1000):
    return Progress(step=step, epoch=epoch, fraction=fraction)


def run_loss(loss, batch, hidden, progress):
    """The loss as ``Objective`` runs it: weights from the progress (outside a compiled step), then
    the terms, none while the weights are None (the warm-up)."""
    weights, logs = loss.weights(progress)
    if weights is None:
        return {}, logs
    terms, step_logs = loss(batch, hidden, weights)
    return terms, {**step_logs, **logs}


def batch_of(b=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"tokens": torch.randint(0, V, (b, G * G), generator=gen),
            "labels": torch.randint(0, CLASSES, (b,), generator=gen)}


class PatchEncoder(nn.Module):
    """Stand-in for a foresight encoder: one feature per 4x4 patch of a 16x16 image, raster order."""

    feature_dim = 12
    grid_size = G

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, self.feature_dim, kernel_size=4, stride=4)
        self.dropout = nn.Dropout(0.5)  # must be off when used as a target

    def forward(self, images01):
        return self.dropout(self.proj(images01)).flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------- heads
def test_head_parameter_counts_match_the_paper():
    mlp = sum(p.numel() for p in MLPHead(768, 768, 2048).parameters())
    transformer = sum(p.numel() for p in TransformerHead(768, 768).parameters())
    assert round(mlp / 1e6, 2) == 7.34
    assert round(transformer / 1e6, 2) == 7.68
    assert default_hidden(768) == 2048 and default_hidden(1280) == 2048 and default_hidden(64) == 256


def test_transformer_head_mixes_positions_mlp_head_does_not():
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[0, 5] = torch.randn(16)  # change only the last position
    for head, mixes in ((MLPHead(16, 8), False), (TransformerHead(16, 8), True)):
        changed = (head(x) - head(y))[0, :5].abs().max() > 1e-6
        assert bool(changed) == mixes


def _plain_stack(head: MLPHead) -> nn.Sequential:
    """The same weights as an unfused Linear-SiLU-Linear-SiLU-Linear stack."""
    return nn.Sequential(head.fc1, nn.SiLU(), head.fc2, nn.SiLU(), head.fc3)


def _saved_bytes(fn) -> int:
    storages = {}

    def pack(t):
        if not isinstance(t, nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.sum().backward()
    return sum(storages.values())


def test_mlp_head_gradients_equal_the_unfused_stack_and_it_saves_less():
    torch.manual_seed(0)
    head = MLPHead(12, 10, 48).double()
    x = torch.randn(3, 5, 12, dtype=torch.double, requires_grad=True)
    target = torch.randn(3, 5, 10, dtype=torch.double)
    grads = []
    for module in (head, _plain_stack(head)):
        head.zero_grad()
        x.grad = None
        (module(x) * target).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in head.parameters()])
    for fused, plain in zip(*grads):
        torch.testing.assert_close(fused, plain)
    assert torch.autograd.gradcheck(lambda a: head(a), (x[:1, :2].detach().requires_grad_(),))
    # The fused head keeps one hidden-wide tensor per SiLU instead of two.
    x = torch.randn(4, 64, 12)
    fused = _saved_bytes(lambda: MLPHead(12, 10, 256)(x))
    plain = _saved_bytes(lambda: _plain_stack(MLPHead(12, 10, 256))(x))
    assert fused < 0.6 * plain


def test_mlp_head_under_bf16_autocast_matches_the_unfused_stack():
    torch.manual_seed(0)
    head = MLPHead(16, 8, 64)
    x = torch.randn(2, 7, 16)
    grads = []
    for module in (head, _plain_stack(head)):
        head.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        grads.append([p.grad for p in head.parameters()])
    for fused, plain in zip(*grads):
        assert fused.dtype == torch.float32
        torch.testing.assert_close(fused, plain, rtol=0.05, atol=0.05)


# ---------------------------------------------------------------------------------------- schedules
def test_const_and_step_schedules():
    assert LambdaSchedule()(at()) == 2.0
    half = LambdaSchedule(kind="step", values=[2, 1], at=[0.5])
    assert half(at(fraction=0.49)) == 2.0 and half(at(fraction=0.5)) == 1.0
    three = LambdaSchedule(kind="step", values=[2, 1, 0.5], at=[80, 200], unit="epoch")
    assert [three(at(epoch=e)) for e in (0, 79.9, 80, 199, 200, 300)] == [2, 2, 1, 1, 0.5, 0.5]
    by_step = LambdaSchedule(kind="step", values=[3, 0], at=[10], unit="step")
    assert by_step(at(step=9)) == 3 and by_step(at(step=10)) == 0


def test_cosine_schedule():
    cos = LambdaSchedule(kind="cosine", values=[2, 0])
    assert cos(at(fraction=0)) == pytest.approx(2) and cos(at(fraction=1)) == pytest.approx(0)
    assert cos(at(fraction=0.5)) == pytest.approx(1) and cos(at(fraction=0.25)) == pytest.approx(1 + math.sqrt(0.5))
    window = LambdaSchedule(kind="cosine", values=[2, 1], at=[10, 20], unit="epoch")
    assert window(at(epoch=5)) == 2 and window(at(epoch=15)) == pytest.approx(1.5) and window(at(epoch=30)) == 1


@pytest.mark.parametrize("spec", [
    dict(kind="const", values=[1, 2]),
    dict(kind="step", values=[2, 1]),
    dict(kind="step", values=[2, 1, 0.5], at=[0.6, 0.3]),
    dict(kind="step", values=[2, 1], at=[1.5]),
    dict(kind="cosine", values=[2, 0], unit="epoch"),
    dict(kind="const", values=[-1]),
])
def test_bad_schedules_are_rejected(spec):
    with pytest.raises(ConfigError):
        from_dict(LambdaSchedule, spec)


# ---------------------------------------------------------------------------------------- config
def test_config_defaults_follow_the_paper():
    ema = from_dict(ForesightConfig, {"source": "ema"})
    assert ema.num_heads() == 3 and ema.warmup_spec() == (15.0, "epoch")
    assert ema.schedules() == [LambdaSchedule(kind="step", values=[2.0, 1.0], at=[0.5])] * 3
    enc = from_dict(ForesightConfig, {"source": "encoder"})
    assert enc.num_heads() == 1 and enc.warmup_spec() == (0.0, "epoch") and enc.schedules() == [LambdaSchedule()]
    assert [ema.resolve_layer(n) for n in (12, 24, 36, 48)] == [8, 16, 24, 32]
    assert enc.encoder_spec(768) == "dinov2_vitb14" and enc.encoder_spec(1024) == "dinov2_vitl14"
    per_head = from_dict(ForesightConfig, {"source": "ema", "k": 2, "lambdas": [{"values": [1]}, {"values": [3]}]})
    assert [s(at()) for s in per_head.schedules()] == [1, 3]


@pytest.mark.parametrize("data", [
    {"source": "ema", "k": 0},
    {"source": "ema", "k": 2, "lambdas": [{"values": [1]}] * 3},
    {"source": "ema", "layout": "raster1d", "offsets": [[0, 1]]},
    {"source": "ema", "k": 2, "offsets": [[0, 1]]},
    {"source": "encoder", "output_diagnostic": True},
    {"source": "ema", "head": "transformer", "head_hidden": 512},
    {"source": "ema", "warmup_unit": "step"},
    {"source": "ema", "warmup": -1},
    {"source": "ema", "warmup": 2, "warmup_unit": "fraction"},
    {"source": "encoder", "lambdas": []},
    {"source": "ema", "typo": 1},
])
def test_bad_configs_are_rejected(data):
    with pytest.raises(ConfigError):
        from_dict(ForesightConfig, data)


@pytest.mark.parametrize("data", [
    {"k": -3}, {"offsets": [[0, 1], [0, 1]]}, {"offsets": [[1]]}, {"layout": "gird2d"}, {"layer": 0},
    {"teacher_decay": 1.5}, {"warmup": -1}, {"lambdas": [{"kind": "step", "values": [1, 2], "at": []}]},
    {"lambdas": []}, {"k": 3, "lambdas": [{"values": [1]}] * 2}, {"warmup": 1, "warmup_unit": "fraction"},
    {"head": "transformer", "head_hidden": 64},
])
def test_bad_values_are_rejected_without_foresight_too(data):
    """``source: none`` ignores these settings, but one override of the source would read them."""
    with pytest.raises(ConfigError, match="foresight|offsets|layout|schedule|lambda"):
        from_dict(ForesightConfig, {"source": "none", **data})


def test_unread_valid_settings_are_kept_without_foresight():
    cfg = from_dict(ForesightConfig, {"k": 3, "lambdas": [{"values": [1]}] * 3, "teacher_decay": 0.9,
                                      "output_diagnostic": True, "warmup": 0.5, "warmup_unit": "fraction"})
    assert cfg.num_heads() == 0 and len(cfg.ignored_settings()) == 6


def test_disabled_config_builds_nothing():
    assert build_auxiliary_loss(ForesightConfig(), tiny_gpt(), None) is None
    # A valid config answers for its (absent) heads instead of calling "none" an unknown source.
    assert ForesightConfig().num_heads() == 0 and ForesightConfig(k=3).schedules() == []
    assert ForesightConfig(warmup=5).warmup_spec() == (0.0, "step")
    # A config built in Python, not through from_dict, is checked before any head is built.
    with pytest.raises(ConfigError, match="foresight.k must be between 1 and 64 heads"):
        build_auxiliary_loss(ForesightConfig(source="ema", k=100), tiny_gpt(), tiny_gpt())


# ---------------------------------------------------------------------------------------- sources
def test_ema_teacher_targets_are_the_ema_models_block_output_in_eval_mode():
    model = tiny_gpt(class_dropout_prob=0.5)
    ema = copy.deepcopy(model).train()
    ema.layers[0].attention.eval()  # a mixed-mode module tree must come back exactly as it was
    modes = [m.training for m in ema.modules()]
    batch = batch_of()
    targets = EMASource(model, ema, layer=1).targets(batch)
    assert [m.training for m in ema.modules()] == modes
    reference = copy.deepcopy(ema).eval().hidden_state(batch["tokens"][:, :-1], batch["labels"], 1)
    assert targets.shape == (4, G * G, 64) and not targets.requires_grad
    torch.testing.assert_close(targets, reference)  # no dropout, true labels, same weights


def test_ema_source_checks_the_layer():
    with pytest.raises(ConfigError):
        EMASource(tiny_gpt(), tiny_gpt(), layer=3)


def test_encoder_source_runs_the_encoder_frozen_or_reads_the_cache():
    encoder = PatchEncoder().train()
    images = torch.rand(4, 3, 16, 16)
    batch = {**batch_of(), "images": images}
    source = EncoderSource(encoder)
    targets = source.targets(batch)
    assert encoder.training and source.feature_dim == 12
    torch.testing.assert_close(targets, encoder.eval()(images))
    cache = torch.randn(10, G * G, 12)
    # Row image * num_views + view: images 1, 0, 2, 0 at views 1, 1, 0, 1 of 2 are rows 3, 1, 4, 1.
    rows = {"image_index": torch.tensor([1, 0, 2, 0]), "view_index": torch.tensor([1, 1, 0, 1])}
    cached = EncoderSource(features=cache, num_views=2)
    assert cached.batch_fields == frozenset() and source.batch_fields == {"images"}
    assert torch.equal(cached.targets({**batch_of(), **rows}), cache[[3, 1, 4, 1]])
    with pytest.raises(ConfigError):
        source.targets({**batch_of(), "images": torch.rand(4, 3, 8, 8)})  # a 2x2 feature grid for 4x4 tokens


# ---------------------------------------------------------------------------------------- the loss
class HiddenAsTarget(Source):
    """A source whose targets are the student's own hidden states: perfect alignment through identity heads."""

    feature_dim = 64

    def __init__(self):
        self.hidden = None

    def targets(self, batch):
        return self.hidden


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_weights_heads_by_lambda_and_reduces(reduction):
    source = HiddenAsTarget()
    pairs = head_pairs(G, "grid2d", "encoder", offsets=[(0, 0), (0, 0)], pair_with="next")  # target = student pos
    schedules = [LambdaSchedule(values=[2.0]), LambdaSchedule(values=[0.5])]
    loss = ForesightLoss(source, [nn.Identity(), nn.Identity()], pairs, schedules, layer=1, reduction=reduction)
    source.hidden = torch.randn(3, G * G, 64)
    terms, logs = run_loss(loss, batch_of(3), {1: source.hidden}, at())
    expected = -(2.0 + 0.5) / (2 if reduction == "mean" else 1)
    assert terms["foresight"].item() == pytest.approx(expected, abs=1e-5)
    assert logs["foresight/loss0"] == pytest.approx(-1.0, abs=1e-5)
    assert logs["foresight/lambda0"] == 2.0 and logs["foresight/lambda1"] == 0.5


def test_warmup_turns_foresight_off_until_it_ends():
    model, ema = tiny_gpt(), tiny_gpt()
    loss = build_auxiliary_loss(from_dict(ForesightConfig, {"source": "ema"}), model, ema)
    batch = batch_of()
    _, hidden = model.forward_with_hidden(batch["tokens"][:, :-1], batch["labels"], loss.hidden_layers)
    terms, logs = run_loss(loss, batch, hidden, at(epoch=14.9))
    assert terms == {} and logs["foresight/lambda0"] == 0.0
    terms, logs = run_loss(loss, batch, hidden, at(epoch=15.0, fraction=0.2))
    assert set(terms) == {"foresight"} and logs["foresight/lambda2"] == 2.0
    weights = loss.weights(at(epoch=16.0, fraction=0.3))[0]  # a (K,) float32 input of a compiled step
    assert weights.dtype == torch.float32 and weights.tolist() == [2.0] * 3
    assert loss.weights(at(epoch=17.0, fraction=0.4))[0] is weights  # refilled only when a lambda changes
    assert build_auxiliary_loss(from_dict(ForesightConfig, {"source": "encoder"}), model, None,
                                encoder=PatchEncoder()).warmup == (0.0, "epoch")
    steps = from_dict(ForesightConfig, {"source": "ema", "warmup": 100, "warmup_unit": "step"})
    assert build_auxiliary_loss(steps, model, ema).weights(at(step=99))[0] is None
    # One call with a Progress (the docs' form) gives what the two-step form gives.
    for progress in (at(epoch=14.9), at(epoch=15.0, fraction=0.2)):
        one_call, two_step = loss(batch, hidden, progress), run_loss(loss, batch, hidden, progress)
        assert one_call[1].keys() == two_step[1].keys()
        assert {k: v.item() for k, v in one_call[0].items()} == {k: v.item() for k, v in two_step[0].items()}


def test_no_gradient_reaches_the_teacher_and_only_heads_are_parameters():
    model = tiny_gpt()
    ema = copy.deepcopy(model)
    loss = build_auxiliary_loss(from_dict(ForesightConfig, {"source": "ema", "warmup": 0}), model, ema)
    assert loss.hidden_layers == (1,)  # round(2/3 * 2 blocks)
    head_params = {id(p) for p in loss.heads.parameters()}
    assert {id(p) for p in loss.parameters()} == head_params
    assert all(k.startswith("heads.") for k in loss.state_dict())
    batch = batch_of()
    logits, hidden = model.forward_with_hidden(batch["tokens"][:, :-1], batch["labels"], loss.hidden_layers)
    terms, _ = run_loss(loss, batch, hidden, at())
    terms["foresight"].backward()
    assert all(p.grad is None for p in ema.parameters())
    assert model.layers[0].attention.wqkv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in loss.parameters())


def test_no_gradient_reaches_the_encoder():
    model, encoder = tiny_gpt(), PatchEncoder()
    loss = build_auxiliary_loss(from_dict(ForesightConfig, {"source": "encoder"}), model, None, encoder=encoder)
    assert loss.heads[0].fc3.out_features == PatchEncoder.feature_dim
    assert not any(p is q for p in loss.parameters() for q in encoder.parameters())
    batch = {**batch_of(), "images": torch.rand(4, 3, 16, 16)}
    _, hidden = model.forward_with_hidden(batch["tokens"][:, :-1], batch["labels"], loss.hidden_layers)
    run_loss(loss, batch, hidden, at())[0]["foresight"].backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert model.tok_embeddings.weight.grad is not None


class ViewStore:
    """Stand-in for a code store: 3 images x 2 views of random pixels."""

    num_views = 2

    def __init__(self):
        self.pixels = torch.rand(3, 2, 3, 16, 16)

    def __len__(self):
        return 3

    def source_images(self, indices, views):
        return self.pixels[torch.as_tensor(indices), torch.as_tensor(views)]


def test_cached_features_are_the_encoders_features_of_every_stored_view():
    cfg = from_dict(ForesightConfig, {"source": "encoder", "cache_features": True})
    encoder = PatchEncoder().eval()
    with pytest.raises(ConfigError, match="code store"):
        build_auxiliary_loss(cfg, tiny_gpt(), None, encoder=encoder)
    store = ViewStore()
    loss = build_auxiliary_loss(cfg, tiny_gpt(), None, encoder=encoder, store=store)
    assert loss.source.encoder is None and loss.batch_fields == frozenset()
    assert loss.heads[0].fc3.out_features == PatchEncoder.feature_dim
    expected = encoder(store.pixels.flatten(0, 1))  # rows image * num_views + view
    torch.testing.assert_close(loss.source.features.float(), expected, atol=2e-3, rtol=2e-3)  # float16 cache


def test_ema_source_needs_the_ema_model():
    with pytest.raises(ConfigError):
        build_auxiliary_loss(from_dict(ForesightConfig, {"source": "ema"}), tiny_gpt(), None)


def _optimise(loss, model, batch, steps=12):
    opt = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=3e-3)
    values = []
    for _ in range(steps):
        _, hidden = model.forward_with_hidden(batch["tokens"][:, :-1], batch["labels"], loss.hidden_layers)
        term = run_loss(loss, batch, hidden, at())[0]["foresight"]
        opt.zero_grad()
        term.backward()
        opt.step()
        values.append(term.item())
    return values


@pytest.mark.parametrize("head", ["mlp", "transformer"])
def test_training_lowers_the_alignment_loss_with_the_ema_teacher(head):
    torch.manual_seed(0)
    model = tiny_gpt()
    ema = tiny_gpt()  # a different network, so the alignment starts far from perfect
    loss = build_auxiliary_loss(from_dict(ForesightConfig, {"source": "ema", "warmup": 0, "head": head}), model, ema)
    values = _optimise(loss, model, batch_of(8))
    assert values[-1] < values[0] - 0.3, values


def test_training_lowers_the_alignment_loss_with_an_encoder():
    torch.manual_seed(0)
    model = tiny_gpt()
    loss = build_auxiliary_loss(from_dict(ForesightConfig, {"source": "encoder"}), model, None, encoder=PatchEncoder())
    values = _optimise(loss, model, {**batch_of(8), "images": torch.rand(8, 3, 16, 16)})
    assert values[-1] < values[0] - 0.3, values


# ---------------------------------------------------------------------------------------- diagnostic
def test_output_diagnostic_predicts_the_tokens_the_ema_pairs_point_at():
    model = tiny_gpt()
    cfg = from_dict(ForesightConfig, {"source": "ema", "output_diagnostic": True, "warmup": 0})
    loss = build_auxiliary_loss(cfg, model, None)  # needs no teacher
    assert isinstance(loss, OutputDiagnosticLoss) and loss.hidden_layers == (model.args.n_layer,)
    assert {id(p) for p in loss.parameters()} == {id(p) for p in loss.heads.parameters()}
    # head 0 (offset 0, 0) at position p predicts tokens[:, p], the next token, like NTP
    assert torch.equal(loss.student0, loss.target0)
    batch = batch_of()
    _, hidden = model.forward_with_hidden(batch["tokens"][:, :-1], batch["labels"], loss.hidden_layers)
    terms, logs = run_loss(loss, batch, hidden, at(fraction=0.1))  # lambda 2 before the step at half of training
    # A zero-initialised output layer predicts uniformly: every head starts at ln V.
    assert logs["output_foresight/loss1"] == pytest.approx(math.log(V), rel=1e-4)
    assert terms["output_foresight"].item() == pytest.approx(3 * 2.0 * math.log(V), rel=1e-4)
    terms["output_foresight"].backward()
    assert model.output.weight.grad.abs().sum() > 0 and model.layers[0].attention.wqkv.weight.grad is not None
    assert all(p.grad is not None for p in loss.parameters())



def test_describe_names_source_heads_block_lambda_warmup_and_what_differs_from_the_default():
    cfg = from_dict(ForesightConfig, {"source": "encoder", "layout": "raster1d", "k": 2,
                                      "lambdas": [{"values": [2]}, {"values": [1]}]})
    assert cfg.describe(n_layer=6, model_dim=64) == (
        "encoder dinov2_vitb14, 2 heads +0 +1 at block 4, lambda const 2; const 1, warm-up none, layout raster1d")
    ema = from_dict(ForesightConfig, {"source": "ema", "teacher_decay": 0.9, "pair_with": "next"})
    assert ema.describe() == ("ema, 3 heads (0,0) (0,1) (1,0), lambda step 2->1 at 0.5 (fraction), "
                              "warm-up 15 epochs, pair_with next, teacher_decay 0.9")
    assert from_dict(ForesightConfig, {}).describe() == "none"
    assert LambdaSchedule(kind="cosine", values=[2, 1], at=[0.1, 0.9], unit="epoch").describe() == (
        "cosine 2->1 at 0.1, 0.9 (epoch)")
