"""PAR's order, mask and RoPE table (docs/par.md sections 2-4), checked against the spec's tables."""

from __future__ import annotations

import pytest
import torch

from mirai.errors import ConfigError
from mirai.models.rope import rope_2d_table
from mirai.models.par import (
    forward_passes, from_par, group_mask, par_cells, par_ranks, par_rope_table, to_par,
)


def test_the_4x4_table_of_the_spec():
    # docs/par.md 2.2: entry = PAR rank of each cell of a 4x4 grid with 2x2 regions.
    expected = torch.tensor([[0, 4, 1, 5], [8, 12, 9, 13], [2, 6, 3, 7], [10, 14, 11, 15]])
    assert torch.equal(par_ranks(4, 2).view(4, 4), expected)


@pytest.mark.parametrize("grid", [4, 8, 16, 24])
@pytest.mark.parametrize("m", [2, 4])
def test_reordering_round_trips_and_groups_hold_one_token_per_region(grid, m):
    if grid % m:
        pytest.skip("regions must divide the grid")
    tokens = torch.randperm(grid * grid).repeat(3, 1)
    assert torch.equal(from_par(to_par(tokens, m), m), tokens)
    cells = par_cells(grid, m)
    assert sorted(cells.tolist()) == list(range(grid * grid))  # a permutation
    n, s = m * m, grid // m
    region = (cells // grid // s) * m + (cells % grid) // s
    assert torch.equal(region.view(-1, n), torch.arange(n).repeat(grid * grid // n, 1))


def test_the_8x8_pass_table_of_the_spec():
    # docs/par.md 2.2: the 0-based forward pass that produces each cell, 8x8 grid, m = 2 (19 passes):
    # rank k < n comes from pass k, a later rank from pass n - 1 + k // n.
    quarter = [[0, 4, 5, 6], [7, 8, 9, 10], [11, 12, 13, 14], [15, 16, 17, 18]]
    expected = torch.tensor([[q for q in row] + [q for q in row] for row in quarter] * 2)
    expected[0, 4], expected[4, 0], expected[4, 4] = 1, 2, 3
    ranks = par_ranks(8, 2).view(8, 8)
    assert torch.equal(torch.where(ranks < 4, ranks, 3 + ranks // 4), expected)
    assert forward_passes(8, 2) == 19 and forward_passes(16, 2) == 67 and forward_passes(16, 4) == 31
    assert forward_passes(24, 2) == 147 and forward_passes(24, 4) == 51 and forward_passes(16, 1) == 256


def test_group_mask_by_hand_for_n_4():
    # The 4x4 grid with 2x2 regions (n = 4): the 19 training positions C v0 v1 v2 | v3 M1 M2 M3 | v4..v7 |
    # v8..v11 | v12 v13 v14 (docs/par.md 3.1, 3.3). Row = query position, column = key; 1 = may attend.
    by_hand = [
        "1..................",  # C
        "11.................",  # v0   the sequential prefix is causal
        "111................",  # v1
        "1111...............",  # v2
        "11111111...........",  # v3   v3 and the learnable tokens see their whole group
        "11111111...........",  # M1
        "11111111...........",  # M2
        "11111111...........",  # M3
        "111111111111.......",  # v4   then each group of four sees itself and everything before
        "111111111111.......",  # v5
        "111111111111.......",  # v6
        "111111111111.......",  # v7
        "1111111111111111...",  # v8
        "1111111111111111...",  # v9
        "1111111111111111...",  # v10
        "1111111111111111...",  # v11
        "1111111111111111111",  # v12  the last group is cut short by the end of the sequence
        "1111111111111111111",  # v13
        "1111111111111111111",  # v14
    ]
    expected = torch.tensor([[c == "1" for c in row] for row in by_hand])
    assert torch.equal(group_mask(19, 4), expected)
    assert torch.equal(group_mask(10, 1), torch.ones(10, 10, dtype=torch.bool).tril())  # m = 1: causal


def test_rope_table_rows_for_class_learnable_and_image_positions():
    raster = rope_2d_table(4, 16)
    table = par_rope_table(raster, 4, 2, 1)
    assert table.shape == (1 + 16 + 3, 8, 2)
    assert not table[0].any() and not table[5:8].any()  # class and learnable tokens: all zero
    cells = par_cells(4, 2)
    assert torch.equal(table[1:5], raster[1 + cells[:4]])  # the initial tokens' own cells
    assert torch.equal(table[8:], raster[1 + cells[4:]])
    assert torch.equal(par_rope_table(raster, 4, 1, 1), raster)  # m = 1: LlamaGen's table


def test_regions_must_divide_the_grid():
    with pytest.raises(ConfigError, match="divisor"):
        par_cells(16, 3)


# ------------------------------------------------------------------------------------ the model
from mirai import checkpoint  # noqa: E402
from mirai.convert import read_llamagen  # noqa: E402
from mirai.errors import CheckpointError  # noqa: E402
from mirai.foresight.pairs import head_pairs  # noqa: E402
from mirai.models import GPT, build_gpt  # noqa: E402
from mirai.models.par import decode_schedule  # noqa: E402


def tiny(m: int = 2, **kw) -> GPT:
    torch.manual_seed(0)
    order = {"order": "par", "regions_per_side": m}
    model = build_gpt("GPT-Nano", vocab_size=32, grid_size=4, num_classes=3, **order, **kw).eval()
    with torch.no_grad():  # a non-zero output layer, so logits differ between positions
        model.output.weight.normal_(0, 0.5)
    return model


def test_par_with_one_region_is_llamagen_bit_for_bit():
    par = tiny(m=1)
    torch.manual_seed(0)
    raster = build_gpt("GPT-Nano", vocab_size=32, grid_size=4, num_classes=3).eval()
    raster.output.weight.data.copy_(par.output.weight)
    assert par.state_dict().keys() == raster.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(par.state_dict().values(), raster.state_dict().values()))
    tokens, labels = torch.randint(0, 32, (2, 15)), torch.tensor([0, 2])
    assert torch.equal(par(tokens, labels), raster(tokens, labels))
    assert torch.equal(par.to_sequence(tokens), tokens) and len(par.decode_schedule()) == 16


def test_learnable_tokens_carry_the_released_name_and_the_sequence_its_layout():
    model = tiny()
    assert model.state_dict()["spe_tok_embeddings.special_embeddings.weight"].shape == (3, 64)
    tokens, labels = torch.randint(0, 32, (2, 15)), torch.tensor([0, 2])
    logits, hidden = model.forward_with_hidden(tokens, labels, (1,))
    assert logits.shape == (2, 16, 32) and hidden[1].shape == (2, 16 + 3, 64)  # + 3 learnable positions
    read, predicted = model.sequence_cells()
    cells = par_cells(4, 2)
    assert read[:5].tolist() == [-1, *cells[:4].tolist()] and read[5:8].tolist() == [-1, -1, -1]
    assert read[8:].tolist() == cells[4:15].tolist() and predicted[:16].tolist() == cells.tolist()


def test_cached_decoding_under_teacher_forcing_equals_the_full_forward():
    model = tiny()
    sequence, labels = torch.randint(0, 32, (2, 16)), torch.tensor([1, 2])
    full = model(sequence[:, :-1], labels)  # (2, 16, V): position r predicts rank r
    plan = model.setup_kv_cache(2)
    schedule = decode_schedule(4, 2)
    assert plan.schedule == schedule and len(schedule) == forward_passes(4, 2) == 4 + 16 // 4 - 1
    produced = []
    for i, step in enumerate(schedule):
        fed = sequence[:, list(step.feed)]
        h = model.pass_inputs(step, fed, labels)
        h = torch.cat([h.new_zeros(2, plan.width - h.size(1), h.size(2)), h], dim=1)  # padding rows lead
        logits = model.decode_step(h, plan.positions[i], plan.slots[i], plan.masks[i])[:, -len(step.produce):]
        for i, rank in enumerate(step.produce):
            torch.testing.assert_close(logits[:, i], full[:, rank], rtol=1e-5, atol=1e-5)
            produced.append(rank)
    model.clear_kv_cache()
    assert produced == list(range(16))


def released_par_state_dict(n_layer: int = 2, dim: int = 64, vocab: int = 32, classes: int = 3,
                            learnable: int = 3, ffn: int = 256) -> dict[str, torch.Tensor]:
    """A state dict written with the key names of PAR's released checkpoints (LlamaGen's, plus the
    learnable tokens' ``spe_tok_embeddings``), not with the project's model; random weights."""
    shapes = {
        "tok_embeddings.weight": (vocab, dim),
        "cls_embedding.embedding_table.weight": (classes + 1, dim),  # + the null class of guidance
        "spe_tok_embeddings.special_embeddings.weight": (learnable, dim),
        "norm.weight": (dim,),
        "output.weight": (vocab, dim),
        "freqs_cis": (20, dim // 2 // 2, 2),  # saved by the released code, rebuilt on load
    }
    for i in range(n_layer):
        shapes |= {f"layers.{i}.attention.wqkv.weight": (3 * dim, dim), f"layers.{i}.attention.wo.weight": (dim, dim),
                   f"layers.{i}.feed_forward.w1.weight": (ffn, dim), f"layers.{i}.feed_forward.w3.weight": (ffn, dim),
                   f"layers.{i}.feed_forward.w2.weight": (dim, ffn), f"layers.{i}.attention_norm.weight": (dim,),
                   f"layers.{i}.ffn_norm.weight": (dim,)}
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in shapes.items()}


def test_a_released_par_state_dict_loads_strictly_and_a_wrong_m_is_refused(tmp_path):
    released = released_par_state_dict()
    torch.save({"model": released}, tmp_path / "par.pt")  # the released files' container
    ckpt = read_llamagen(tmp_path / "par.pt", grid_size=4)
    assert ckpt.args["order"] == "par" and ckpt.args["regions_per_side"] == 2
    loaded = ckpt.build(GPT)
    state = loaded.state_dict()
    assert state.keys() == released.keys() - {"freqs_cis"}  # strict: every released tensor has its place
    assert all(torch.equal(state[k], released[k]) for k in state)
    model = tiny()
    model.load_state_dict(state)
    tokens, labels = torch.randint(0, 32, (2, 15)), torch.tensor([0, 2])
    assert torch.equal(loaded.eval()(tokens, labels), model(tokens, labels))
    with pytest.raises(CheckpointError, match="2 regions per side.*regions_per_side=4 was asked"):
        read_llamagen(tmp_path / "par.pt", grid_size=4, regions_per_side=4)
    saved = checkpoint.save(tmp_path / "mirai", loaded)  # the order is recorded with the weights
    assert checkpoint.load(saved, GPT).args.regions_per_side == 2


def test_foresight_pairs_under_par_by_hand_on_4x4():
    cells = tiny().sequence_cells()
    # PAR ranks of the 4x4 grid (docs/par.md 2.2): row 0 = ranks 0 4 1 5, row 1 = 8 12 9 13, ...
    # Rank k >= 4 is read at position k + 4 (3 learnable tokens sit at 5..7); rank k < 4 at k + 1.
    (current,) = head_pairs(4, "grid2d", "encoder", cells=cells)
    pairs = dict(zip(current[0].tolist(), current[1].tolist()))
    assert pairs[1] == 0 and pairs[2] == 2 and pairs[4] == 10 and pairs[8] == 1 and 5 not in pairs  # M: none
    assert len(pairs) == 15 and set(pairs.values()) == set(range(16)) - {15}  # cell 15 (rank 15) is never read
    _, right, below = head_pairs(4, "grid2d", "ema", k=3, align_class_token=False, cells=cells)
    right = dict(zip(*[t.tolist() for t in right]))
    # Position 8 read cell 1 (rank 4); its right neighbour cell 2 is rank 1, read at position 2 < 8:
    # in the past, so dropped. Position 1 read cell 0 (rank 0); cell 1 is read at position 8: kept.
    assert 8 not in right and right[1] == 8
    below = dict(zip(*[t.tolist() for t in below]))
    assert below[1] == 12  # cell 0 -> cell 4 (rank 8), read at position 12
    for (s, t) in head_pairs(4, "grid2d", "ema", k=3, cells=cells):
        assert (t >= s).all()  # foresight never points at the past of the sequence


def test_par_drops_only_the_region_edge_pairs_docs_par_md_counts():
    """docs/par.md 8 ("what the rule costs"): the right and below heads lose one pair per region-edge
    cell (16 of 239 on 16x16 with M = 2); the current-cell head and Mirai-I lose none."""
    for grid, m, kept in ((16, 2, 223), (8, 2, 47), (16, 4, 191)):
        cells = build_gpt("GPT-Micro", vocab_size=32, grid_size=grid, num_classes=2,
                          order="par", regions_per_side=m).sequence_cells()
        raster = [len(s) for s, _ in head_pairs(grid, "grid2d", "ema", k=3, align_class_token=False)]
        par = [len(s) for s, _ in head_pairs(grid, "grid2d", "ema", k=3, align_class_token=False, cells=cells)]
        assert raster == [grid * grid - 1, grid * (grid - 1) - 1, grid * (grid - 1) - 1]
        assert par == [grid * grid - 1, kept, kept]
        (encoder,) = head_pairs(grid, "grid2d", "encoder", cells=cells)
        assert len(encoder[0]) == grid * grid - 1
    # The future heads of the PAR bench (configs/bench/fashion_par_grid16.yaml, mirai_e_future): what its comment says.
    future = [(1, 0), (1, 1), (2, 0)]
    cells = build_gpt("GPT-Micro", vocab_size=32, grid_size=16, num_classes=2, order="par",
                      regions_per_side=2).sequence_cells()
    raster = [len(s) for s, _ in head_pairs(16, "grid2d", "ema", offsets=future, align_class_token=False)]
    par = [len(s) for s, _ in head_pairs(16, "grid2d", "ema", offsets=future, align_class_token=False, cells=cells)]
    assert (raster, par) == ([239, 224, 223], [223, 209, 191])


# ------------------------------------------------------------------------------------ training
from helpers import MIRAI_E, assert_same, encoder_overrides, make_cfg, weights  # noqa: E402

from mirai.training.trainer import Trainer  # noqa: E402

PAR = {"model.overrides": '{"order": "par", "regions_per_side": 2}'}


@pytest.mark.parametrize("source", ["none", "encoder", "ema"])
def test_a_tiny_par_model_trains_and_resumes_exactly(stores, tmp_path, source):
    extra = {"none": {}, "encoder": encoder_overrides(stores), "ema": MIRAI_E}[source]
    whole = Trainer(make_cfg(stores, tmp_path / "whole", steps=6, **PAR, **extra))
    assert whole.gpt.parallel and whole.gpt.args.regions_per_side == 2
    logs = [whole.train_step() for _ in range(6)]
    assert logs[-1]["loss/ntp"] < logs[0]["loss/ntp"]
    if source != "none":
        assert "loss/foresight" in logs[-1]
    first = Trainer(make_cfg(stores, tmp_path / "split", steps=6, **PAR, **extra))
    for _ in range(3):
        first.train_step()
    first.save()
    second = Trainer(make_cfg(stores, tmp_path / "split", steps=6, **PAR, **extra))
    second.resume()
    for _ in range(3):
        second.train_step()
    assert_same(weights(whole.gpt), weights(second.gpt))
    assert_same(weights(whole.ema), weights(second.ema))


# ------------------------------------------------------------------------------------ sampling
from mirai.sampling.generate import generate  # noqa: E402


def test_par_decoding_makes_n_plus_n_over_n_minus_1_passes_and_agrees_with_the_full_forward():
    model = tiny()
    calls = []
    real = model.decode_step
    model.decode_step = lambda h, positions, *a: calls.append((h.size(1), int(positions[-1]))) or real(h, positions, *a)
    labels = torch.tensor([0, 1, 2])
    cached = generate(model, labels, cfg_scale=1.5, generator=torch.Generator().manual_seed(3))
    assert len(calls) == forward_passes(4, 2) == 7 and calls == [(4, p) for p in (0, 1, 2, 3, 7, 11, 15)]  # one width
    reference = generate(model, labels, cfg_scale=1.5, generator=torch.Generator().manual_seed(3),
                         use_kv_cache=False)
    assert cached.shape == (3, 16) and torch.equal(cached, reference)  # same draws, same tokens


def test_par_samples_come_back_in_raster_order():
    model = tiny()
    greedy = generate(model, torch.tensor([1]), temperature=0)
    # Greedy decoding in PAR order, by hand from the full forward: position r predicts rank r.
    sequence = torch.zeros(1, 16, dtype=torch.long)
    for step in model.decode_schedule():
        logits = model.logits_at(sequence[:, : step.produce[0]], torch.tensor([1]), step.produce)
        sequence[:, list(step.produce)] = logits.argmax(-1)
    assert torch.equal(greedy, from_par(sequence, 2))


def test_par_with_one_region_samples_what_llamagen_samples():
    par = tiny(m=1)
    torch.manual_seed(0)
    raster = build_gpt("GPT-Nano", vocab_size=32, grid_size=4, num_classes=3).eval()
    raster.load_state_dict(par.state_dict())
    labels = torch.tensor([0, 2])
    a = generate(par, labels, cfg_scale=2.0, top_k=8, generator=torch.Generator().manual_seed(5))
    b = generate(raster, labels, cfg_scale=2.0, top_k=8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_a_tiny_par_run_trains_and_samples_from_the_command_line(stores, tmp_path, capsys):
    import json

    import numpy as np

    from mirai.cli.main import main
    from mirai.config import to_dict

    config = tmp_path / "par.yaml"
    config.write_text(json.dumps(to_dict(make_cfg(stores, tmp_path / "run", steps=3, **PAR))))
    assert main(["train", "--config", str(config)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert checkpoint.load(summary["checkpoint"], GPT).args.order == "par"  # recorded with the weights
    out = tmp_path / "samples"
    assert main(["sample", "--gpt", summary["checkpoint"], "--vq", str(stores / "vq"), "--out", str(out),
                 "--per-class", "2", "--device", "cpu", "--batch-size", "4", "--cfg-scale", "1.5"]) == 0
    assert "in 7 forward passes per batch (PAR, 2x2 regions)" in capsys.readouterr().out
    assert np.load(out / "samples.npz")["arr_0"].shape == (6, 8, 8, 3)


def test_cell_states_of_a_par_model_sit_on_the_true_grid_cells():
    model = tiny()
    tokens, labels = torch.randint(0, 32, (2, 16)), torch.tensor([0, 1])
    states = model.cell_states(tokens, labels, 1)
    # Training positions: the state that read each cell is the same as in the training forward.
    sequence = model.to_sequence(tokens)
    train_states = model.hidden_state(sequence[:, :-1], labels, 1)
    read, _ = model.sequence_cells()
    for position, cell in enumerate(read.tolist()):
        if cell >= 0:
            torch.testing.assert_close(states[:, cell], train_states[:, position])
    last = int(par_cells(4, 2)[-1])  # never read in training: the whole-grid forward's last position
    whole = model._blocks(sequence, labels, set(), 1, whole_grid=True)[0]
    assert states.shape == (2, 16, 64) and last not in read.tolist()
    torch.testing.assert_close(states[:, last], whole[:, -1])


def test_flops_count_the_learnable_positions_and_diagnostic_heads_stay_raster():
    from mirai.analysis.flops import Convention, gpt_macs
    from mirai.foresight import ForesightConfig, build_auxiliary_loss
    from mirai.models import gpt_args

    conv = Convention(embedding=False)
    raster, par = gpt_args("GPT-B", grid_size=16), gpt_args("GPT-B", grid_size=16, order="par", regions_per_side=2)
    blocks = gpt_macs(raster, 12, conv)  # blocks only: 256 positions against PAR's 259
    assert gpt_macs(par, 12, conv) * 256 == blocks * 259
    assert gpt_macs(par, conv=conv) - gpt_macs(par, 12, conv) == gpt_macs(raster, conv=conv) - blocks  # output: N
    with pytest.raises(ConfigError, match="output_diagnostic.*raster"):
        build_auxiliary_loss(ForesightConfig(source="ema", output_diagnostic=True), tiny(), None)


def test_mirai_convert_reads_m_from_a_par_file_and_refuses_a_wrong_one(tmp_path, capsys):
    from mirai.cli.main import main

    from helpers import assert_cli_refuses

    torch.save({"model": tiny().state_dict()}, tmp_path / "par.pt")
    assert main(["convert", "llamagen", str(tmp_path / "par.pt"), str(tmp_path / "out"), "--grid-size", "4"]) == 0
    assert "PAR with 2x2 regions" in capsys.readouterr().out
    assert checkpoint.load(tmp_path / "out", GPT).args.regions_per_side == 2
    assert_cli_refuses(["convert", "llamagen", tmp_path / "par.pt", tmp_path / "bad", "--grid-size", "4",
                        "--regions-per-side", "4"], tmp_path, match="2 regions per side", output=tmp_path / "bad")
    assert_cli_refuses(["convert", "llamagen", tmp_path / "par.pt", tmp_path / "bad", "--grid-size", "5"],
                       tmp_path, match="cannot be split into 2x2", output=tmp_path / "bad")


def test_a_guidance_interval_between_par_passes_is_refused_naming_where_they_start():
    # PAR (2x2 regions, 8x8 grid) starts passes at tokens 0..4, 8, 12, ...: 5/64 lies in [0.078, 0.09)
    # but starts no pass, so the refusal names the starts rather than every i/64.
    from mirai.models.registry import gpt_args
    from mirai.sampling.checks import check_guidance

    args = gpt_args("GPT-Nano", vocab_size=32, grid_size=8, num_classes=3, order="par", regions_per_side=2)
    with pytest.raises(ConfigError, match=r"holds none .* token fractions i/64, i = 0, 1, 2, 3, 4, 8, 12, 16, \.\.\."):
        check_guidance(args, 2.0, (0.078, 0.09))
    check_guidance(args, 2.0, (0.06, 0.07))  # holds the pass that starts at token 4 (0.0625)
