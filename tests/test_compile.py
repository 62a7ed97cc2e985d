"""torch.compile: KV-cache decoding (one graph for a whole generation, eager's tokens) and the training step
(eager's weights, no graph break)."""

from __future__ import annotations

import functools
import importlib

import numpy as np
import pytest
import torch
import torch._dynamo
from helpers import MIRAI_E, encoder_overrides, make_cfg

from mirai.errors import ConfigError
from mirai.models import build_gpt
from mirai.sampling.generate import filter_logits, generate
from mirai.training.trainer import Trainer


@pytest.fixture
def dynamo():
    """A clean Dynamo cache that raises on any recompilation; the counters of what it compiled."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def use_backend(monkeypatch, backend: str, **kw) -> None:
    """Compile with ``backend`` (``aot_eager``: Dynamo's capture and AOTAutograd without Inductor's
    C++ build, which costs about a minute per graph on a 2-core machine)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend, **kw))


def tiny(**kw):
    torch.manual_seed(0)
    model = build_gpt("GPT-Nano", vocab_size=32, grid_size=4, num_classes=3, **kw).eval()
    with torch.no_grad():  # a non-zero output layer, so that draws are not uniform
        model.output.weight.normal_(0, 0.5)
    return model


def draw(model, seed: int, **kw) -> torch.Tensor:
    return generate(model, torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(seed),
                    **{"cfg_scale": 1.5, "top_k": 20, **kw})


@pytest.mark.parametrize("order", [{}, {"order": "par", "regions_per_side": 2}], ids=["raster", "par"])
def test_compiled_decoding_draws_eager_tokens_from_one_graph(order, dynamo):
    model = tiny(**order)
    # Guidance from a quarter of the sequence on: unguided and guided passes share the graph. The
    # second generation reuses the graph of the first, with another guidance scale, temperature and top-p.
    for seed, cfg_scale, temperature, top_p in ((3, 1.5, 1.0, 0.9), (4, 3.0, 0.7, 0.6)):
        kw = {"guidance_interval": (0.25, 1.0), "cfg_scale": cfg_scale, "temperature": temperature, "top_p": top_p}
        assert torch.equal(draw(model, seed, compile=True, **kw), draw(model, seed, **kw))
    assert dynamo["stats"]["unique_graphs"] == 1  # fullgraph=True: a graph break would have raised


def test_top_p_as_a_tensor_filters_as_the_number_does():
    # A compiled pass takes top-p as a 0-dim tensor; the most likely token always stays.
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.0, 2.5], [1.0, 1.0, 1.0, 0.0, -2.0, 5.0]])
    for top_k, top_p in ((None, 1e-6), (None, 0.3), (None, 0.95), (2, 0.8), (4, 0.99)):
        expect = filter_logits(logits, top_k, top_p)
        assert torch.equal(filter_logits(logits, top_k, torch.tensor(top_p)), expect), (top_k, top_p)
    for off in (1, 1.0, np.float32(1.0), np.float64(0.0)):  # any number type outside (0, 1) filters nothing
        assert torch.equal(filter_logits(logits, None, off), logits), off
    assert torch.isfinite(filter_logits(logits, None, torch.tensor(0.9))).tolist() == [
        [False, True, True, False, True, True], [False, False, False, False, False, True]]


def test_a_top_p_that_rounds_to_zero_keeps_the_most_likely_token():
    # 1e-300 passes the (0, 1] check but is 0 at the logits' float32 precision: it must draw greedily, not
    # drop every token (which ended in a non-finite-probabilities error blaming the guidance scale).
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [1.0, 1.0, 0.0, 5.0]])
    for top_p in (1e-300, torch.tensor(1e-300)):
        assert torch.isfinite(filter_logits(logits, None, top_p)).tolist() == [
            [False, True, False, False], [False, False, False, True]]
    model = tiny()
    assert torch.equal(draw(model, 1, top_p=1e-300), draw(model, 1, temperature=0))


def test_compiled_decoding_runs_under_bf16_autocast(dynamo, monkeypatch):
    use_backend(monkeypatch, "aot_eager")
    model = tiny(order="par", regions_per_side=2)
    tokens = draw(model, 5, compile=True, dtype=torch.bfloat16)
    assert torch.equal(tokens, draw(model, 5, dtype=torch.bfloat16))
    assert dynamo["stats"]["unique_graphs"] == 1


def test_a_sweep_may_build_more_graphs_than_dynamos_default_and_is_told_at_the_project_limit(monkeypatch):
    use_backend(monkeypatch, "aot_eager")
    # the module (mirai.sampling re-exports the function under the same name)
    monkeypatch.setattr(importlib.import_module("mirai.sampling.generate"), "GRAPH_LIMIT", 3)
    torch._dynamo.reset()
    model = tiny()
    with torch._dynamo.config.patch(recompile_limit=2):  # Dynamo's own limit (8 by default) is raised to ours
        for top_k in (1, 2, 3):  # a constant of the graph: one graph each
            draw(model, 0, compile=True, top_k=top_k)
        with pytest.raises(ConfigError, match=r"built 3 graphs in this process .* torch.compiler.reset\(\)"):
            draw(model, 0, compile=True, top_k=4)
    torch._dynamo.reset()


def test_compile_needs_the_kv_cache():
    with pytest.raises(ConfigError, match="use_kv_cache"):
        draw(tiny(), 0, compile=True, use_kv_cache=False)


VARIANTS = {"baseline": lambda stores: {}, "mirai_e": lambda stores: {**MIRAI_E, "foresight.warmup": 0},
            "mirai_i": encoder_overrides}


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_training_steps_match_eager_without_graph_breaks(variant, stores, tmp_path, monkeypatch):
    # fullgraph=True turns any graph break into an error.
    use_backend(monkeypatch, "aot_eager", fullgraph=True)
    torch._dynamo.reset()
    overrides = {**VARIANTS[variant](stores), "dropout": "false", "steps": 2}
    runs = {}
    for compiled in (False, True):
        trainer = Trainer(make_cfg(stores, tmp_path / str(compiled), compile=str(compiled).lower(), **overrides))
        runs[compiled] = [{k: float(v) for k, v in trainer.train_step().items() if k.startswith("loss/")}
                          for _ in range(2)]
        runs[compiled].append({k: v.detach().clone() for k, v in trainer.objective.state_dict().items()})
    torch._dynamo.reset()
    *eager_logs, eager_weights = runs[False]
    *compiled_logs, compiled_weights = runs[True]
    assert "loss/foresight" in eager_logs[-1] or variant == "baseline"
    for a, b in zip(eager_logs, compiled_logs):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5) for k in a)
    # Compiling in place keeps the state-dict names (checkpoints of compiled runs load anywhere).
    assert eager_weights.keys() == compiled_weights.keys()
    for name, tensor in eager_weights.items():
        torch.testing.assert_close(compiled_weights[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("variant", ["mirai_e", "mirai_i"])
def test_compiled_training_never_recompiles_across_the_warmup_end_and_a_lambda_milestone(
        variant, stores, tmp_path, monkeypatch, dynamo):
    # The progress (warm-up, lambda schedule) is read outside the compiled steps and the weights go in
    # as a tensor: Dynamo compiles the NTP-only warm-up step and the foresight step once each, and
    # error_on_recompile (the fixture) fails any step that would compile one of them again.
    use_backend(monkeypatch, "aot_eager", fullgraph=True)
    source = MIRAI_E if variant == "mirai_e" else encoder_overrides(stores)
    overrides = {**source, "foresight.warmup": 2, "foresight.warmup_unit": "step", "dropout": "false", "steps": 5,
                 "foresight.lambdas": "[{kind: step, values: [2, 1], at: [3], unit: step}]"}
    trainer = Trainer(make_cfg(stores, tmp_path / "run", compile="true", **overrides))
    logs = [trainer.train_step() for _ in range(4)]
    assert [log["foresight/lambda0"] for log in logs] == [0.0, 0.0, 2.0, 1.0]  # as the eager run logs them
    assert ["loss/foresight" in log for log in logs] == [False, False, True, True]
    assert dynamo["stats"]["unique_graphs"] == 2


def test_compile_with_activation_checkpointing_is_refused_before_training(stores, tmp_path):
    # Together they fail inside PyTorch at the first backward (recomputed tensors differ from the
    # compiled forward's): the config says so at once instead.
    with pytest.raises(ConfigError, match="compile=true cannot be combined with distributed.activation_checkpointing"):
        make_cfg(stores, tmp_path / "run", compile="true", **{"distributed.activation_checkpointing": "true"})
