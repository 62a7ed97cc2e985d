import contextlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import assert_cli_refuses, files_under
from safetensors.torch import save_file

from mirai import checkpoint
from mirai.errors import BusyError, CheckpointError, ConfigError, DataError
from mirai.models import build_gpt, build_vq
from mirai.sampling import filter_logits, generate, guide
from mirai.sampling import pipeline
from mirai.sampling.pipeline import SampleSettings, class_labels, load_for_sampling, sample_to_npz


def random_model(**kw):
    model = build_gpt("GPT-Nano", vocab_size=30, grid_size=4, num_classes=6, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def tiny_gpt(seed: int = 0, **kw):
    """A random 3-class GPT over 2x2 grids of 16 codes, matching ``tiny_vq``."""
    torch.manual_seed(seed)
    model = build_gpt("GPT-Nano", vocab_size=16, grid_size=2, num_classes=3, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def tiny_vq():
    torch.manual_seed(0)
    return build_vq("VQ-Tiny", codebook_size=16, codebook_dim=4).eval()


@contextlib.contextmanager
def held_by_another_process(folder):
    """``mirai.locks.exclusive_dir(folder)`` held by a second Python process while the block runs."""
    code = ("import sys\nfrom mirai.locks import exclusive_dir\nwith exclusive_dir(sys.argv[1], 'test'):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
@pytest.mark.parametrize("kw", [{}, {"top_k": 5}, {"top_p": 0.8, "temperature": 0.7}])
def test_kv_cache_equals_full_recomputation(cfg_scale, kw):
    model = random_model()
    labels = torch.tensor([0, 3, 5, 1])
    cached = generate(model, labels, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(7), **kw)
    naive = generate(model, labels, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(7),
                     use_kv_cache=False, **kw)
    assert cached.shape == (4, 16)
    assert torch.equal(cached, naive)


def test_kv_cache_with_grouped_query_attention():
    model = random_model(n_head=2, n_kv_head=1)
    labels = torch.tensor([2, 4])
    a = generate(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    b = generate(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(1), use_kv_cache=False)
    assert torch.equal(a, b)


def test_seeded_generation_is_reproducible_and_bf16_runs():
    model = random_model()
    labels = torch.tensor([1, 2])
    a = generate(model, labels, generator=torch.Generator().manual_seed(3))
    b = generate(model, labels, generator=torch.Generator().manual_seed(3))
    c = generate(model, labels, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    bf = generate(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(3), dtype=torch.bfloat16)
    assert bf.shape == (2, 16) and bf.min() >= 0 and bf.max() < 30
    assert model.layers[0].attention.kv_cache is None  # cache released


def test_guidance_formula():
    cond, uncond = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.5, 0.0, 4.0]])
    assert torch.allclose(guide(torch.cat([cond, uncond]), 3.0), uncond + 3.0 * (cond - uncond))
    assert torch.allclose(guide(torch.cat([cond, uncond]), 1.0), cond)


def test_guidance_interval_switches_guidance_off():
    model = random_model()
    labels = torch.tensor([0, 1])
    off = generate(model, labels, cfg_scale=1.0, generator=torch.Generator().manual_seed(2))
    # Guidance from the last token on: every earlier draw is the unguided one.
    last = generate(model, labels, cfg_scale=4.0, guidance_interval=(15 / 16, 1.0),
                    generator=torch.Generator().manual_seed(2))
    full = generate(model, labels, cfg_scale=4.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(off[:, :-1], last[:, :-1]) and not torch.equal(off, full)
    # An interval that holds no pass would guide nothing at twice the cost: refused, empty or between positions.
    for interval in ((0.0, 0.0), (0.5, 0.5), (0.51, 0.55), (0.95, 1.0)):
        with pytest.raises(ConfigError, match=r"holds none of this model's decoding passes .* i/16"):
            generate(model, labels, cfg_scale=4.0, guidance_interval=interval)
    generate(model, labels, cfg_scale=1.0, guidance_interval=(0.5, 0.5))  # no guidance: nothing to hold


def test_top_k_mask():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5]])
    out = filter_logits(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[False, True, False, False, True]]


def test_top_p_mask_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15]])
    logits = probs.log()
    # Sorted: 0.5, 0.3, 0.15, 0.05. p=0.7: 0.5 < 0.7 -> keep 0.3 too (0.8 >= 0.7), drop the rest.
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[False, True, True, False]]
    # p=0.5: the top token alone reaches p.
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, False, False]]
    # A tiny p still keeps the most likely token.
    assert torch.isfinite(filter_logits(logits, top_p=1e-6)).sum() == 1


def test_greedy_temperature_zero():
    model = random_model()
    a = generate(model, torch.tensor([1]), temperature=0.0, generator=torch.Generator().manual_seed(0))
    b = generate(model, torch.tensor([1]), temperature=0.0, generator=torch.Generator().manual_seed(99))
    assert torch.equal(a, b)


# ------------------------------------------------------------------------ checks of every value
BAD_VALUES = [
    ("cfg_scale", -1.0), ("cfg_scale", float("nan")), ("cfg_scale", float("inf")),
    ("temperature", -0.5), ("temperature", float("nan")), ("temperature", float("inf")),
    ("top_k", -3), ("top_k", 0), ("top_k", 31), ("top_k", 2.5),
    ("top_p", 0.0), ("top_p", -0.1), ("top_p", 1.5), ("top_p", float("nan")),
    ("guidance_interval", (0.6, 0.2)), ("guidance_interval", (-0.1, 0.5)), ("guidance_interval", (0.0, 1.5)),
    ("guidance_interval", (float("nan"), 1.0)), ("guidance_interval", (0.5,)),
]


@pytest.mark.parametrize("key, value", BAD_VALUES)
def test_bad_sampling_values_are_refused_by_generate_and_settings(key, value):
    model = random_model()  # vocabulary 30
    with pytest.raises(ConfigError, match=key):
        generate(model, torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0), **{key: value})
    if key != "top_k" or value != 31:  # the settings do not know the vocabulary; sample_to_npz checks it
        with pytest.raises(ConfigError, match=key):
            SampleSettings(**{key: value})


def test_good_edge_values_still_sample():
    model = random_model()
    for kw in ({"top_k": 30}, {"top_k": 1}, {"top_p": 1.0}, {"cfg_scale": 0.0}, {"guidance_interval": (0.0, 1.0)}):
        assert generate(model, [0, 5], generator=torch.Generator().manual_seed(0), **kw).shape == (2, 16)
        SampleSettings(**kw)


@pytest.mark.parametrize("labels, match", [
    (torch.tensor([6]), "null class.*ids 0..5"),  # 6 is the null class of a 6-class model: not a class
    ([6], "null class"), (torch.tensor([0, 7]), r"\[7\].*outside.*6 classes"), ([-1], r"\[-1\].*outside"),
    ([], "non-empty"), (torch.tensor([[0, 1]]), "1-D"), ([0.5, 1.0], "integer"), (["a"], "integer"),
])
def test_generate_refuses_labels_outside_the_classes(labels, match):
    with pytest.raises(ConfigError, match=match):
        generate(random_model(), labels, generator=torch.Generator().manual_seed(0))


def test_generate_takes_a_list_of_labels_like_a_tensor():
    model = random_model()
    a = generate(model, [0, 5], cfg_scale=2.0, generator=torch.Generator().manual_seed(4))
    b = generate(model, torch.tensor([0, 5]), cfg_scale=2.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_guidance_is_refused_without_a_trained_null_class():
    model = random_model(class_dropout_prob=0.0)
    with pytest.raises(ConfigError, match="without class dropout.*cfg_scale 1, or train with class dropout"):
        generate(model, torch.tensor([0, 1]), cfg_scale=2.0)
    assert generate(model, torch.tensor([0, 1]), cfg_scale=1.0).shape == (2, 16)  # no guidance: fine


def test_llamagen_checkpoints_still_allow_guidance(tmp_path):
    source = random_model()  # LlamaGen's models are trained with class dropout 0.1
    torch.save({"model": source.state_dict()}, tmp_path / "c2i.pt")
    gpt = load_for_sampling(tmp_path / "c2i.pt", "gpt", grid_size=4)
    assert gpt.args.class_dropout_prob == 0.1
    labels = torch.tensor([0, 5])
    assert torch.equal(generate(gpt, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(1)),
                       generate(source, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(1)))


def save_with_nan(path, module, llamagen=False):
    """A checkpoint of ``module`` whose first weight holds a NaN: a LlamaGen ``.pt``, or a Mirai
    directory as written before checksums (``checkpoint.save`` now refuses NaN weights)."""
    state = {k: v.clone() for k, v in module.state_dict().items()}
    state[sorted(state)[0]].view(-1)[0] = float("nan")
    if llamagen:
        torch.save({"model": state}, path)
        return path
    path = checkpoint.save(path, module)
    save_file(state, str(path / "model.safetensors"))
    config = json.loads((path / "config.json").read_text())
    config.pop("sha256", None)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("kind, llamagen", [("gpt", False), ("vq", False), ("gpt", True)])
def test_nan_weights_are_refused_at_load_naming_the_checkpoint(tmp_path, kind, llamagen):
    module = tiny_gpt() if kind == "gpt" else tiny_vq()
    path = save_with_nan(tmp_path / ("nan.pt" if llamagen else "nan"), module, llamagen)
    with pytest.raises(CheckpointError, match=f"{kind.upper()} checkpoint {path} holds NaN/inf weights.*earlier"):
        load_for_sampling(path, kind, grid_size=2)


def test_sample_counts_seeds_and_batch_sizes_are_checked(tmp_path):
    gpt, vq = tiny_gpt(), tiny_vq()
    for num in (0, -5):
        with pytest.raises(ConfigError, match="num_samples must be an integer between 1 and 1000000"):
            class_labels(3, num)
    with pytest.raises(ConfigError, match="seed"):
        class_labels(3, 4, seed=-1)
    for kw, match in (({"batch_size": 0}, "batch_size"), ({"seed": -1}, "seed"), ({"seed": 2**40}, "seed")):
        with pytest.raises(ConfigError, match=match):
            sample_to_npz(gpt, vq, [0, 1], tmp_path / "s.npz", SampleSettings(), progress=False, **kw)
    with pytest.raises(ConfigError, match="top_k must be an integer between 1 and 16"):
        sample_to_npz(gpt, vq, [0, 1], tmp_path / "s.npz", SampleSettings(top_k=17), progress=False)
    with pytest.raises(ConfigError, match=r"class label\(s\) \[3\]"):
        sample_to_npz(gpt, vq, [0, 3], tmp_path / "s.npz", SampleSettings(), progress=False)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


# ------------------------------------------------------------------ resumable sample sets
LABELS = class_labels(3, 12, seed=0)
BASE = dict(settings=SampleSettings(cfg_scale=1.0), seed=0, batch_size=4, progress=False)


def interrupted_run(monkeypatch, gpt, vq, out, batches=1, **kw):
    """Run ``sample_to_npz`` until ``batches`` batches are saved, then stop it as Ctrl-C would."""
    real, calls = pipeline.sample_batch, []

    def stop_after(*args, **kwargs):
        if len(calls) == batches:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "sample_batch", stop_after)
    with pytest.raises(KeyboardInterrupt):
        sample_to_npz(gpt, vq, LABELS, out, **{**BASE, **kw})
    monkeypatch.setattr(pipeline, "sample_batch", real)


def test_interrupted_sampling_resumes_to_the_one_go_result_and_records_its_settings(tmp_path, monkeypatch):
    gpt, vq = tiny_gpt(), tiny_vq()
    one_go = sample_to_npz(gpt, vq, LABELS, tmp_path / "a" / "samples.npz", **BASE, sources={"gpt": "G"})
    interrupted_run(monkeypatch, gpt, vq, tmp_path / "b" / "samples.npz", batches=2)
    assert len(list((tmp_path / "b" / "samples.npz.parts").glob("0*.npz"))) == 2
    resumed = sample_to_npz(gpt, vq, LABELS, tmp_path / "b" / "samples.npz", **BASE)
    a, b = np.load(one_go), np.load(resumed)
    for key in ("arr_0", "labels", "tokens"):
        assert np.array_equal(a[key], b[key]), key
    assert len(b["arr_0"]) == 12 and b["labels"].tolist() == LABELS.tolist()
    assert not (tmp_path / "b" / "samples.npz.parts").exists()
    record = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert record["settings"]["cfg_scale"] == 1.0 and record["seed"] == 0 and record["batch_size"] == 4
    assert record["num_samples"] == 12 and record["gpt"]["checkpoint"] == "G" and len(record["gpt"]["sha256"]) == 64


CHANGES = {
    "checkpoint": ({"gpt": "other"}, "the GPT's weights differ"),
    "cfg_scale": ({"settings": SampleSettings(cfg_scale=2.0)}, "settings.cfg_scale: 1.0 -> 2.0"),
    "temperature": ({"settings": SampleSettings(cfg_scale=1.0, temperature=0.5)}, "settings.temperature"),
    "batch_size": ({"batch_size": 5}, "batch_size: 4 -> 5"),
    "seed": ({"seed": 1}, "seed: 0 -> 1"),
    "labels": ({"labels": class_labels(3, 12, seed=1)}, "the class labels differ"),
    "count": ({"labels": class_labels(3, 16, seed=0)}, "num_samples: 12 -> 16"),
}


def kept_files(root):
    """``files_under(root)`` but the lock files (a run that takes a lock writes its pid there)."""
    return {k: v for k, v in files_under(root).items() if not k.endswith(".lock")}


def rerun(gpt, vq, out, change):
    kw = {**BASE, **{k: v for k, v in change.items() if k not in ("gpt", "labels")}}
    model = tiny_gpt(seed=1) if "gpt" in change else gpt
    return sample_to_npz(model, vq, change.get("labels", LABELS), out, **kw)


def test_compiled_decoding_is_recorded_where_it_changes_the_draws(tmp_path, monkeypatch):
    # bf16/fp16: compiled kernels round differently from eager ones, so a set is not resumed across the switch
    # (refused before anything is compiled); fp32: both draw the same tokens, so a finished set is reused.
    gpt, vq = tiny_gpt(), tiny_vq()
    bf16 = {**BASE, "settings": SampleSettings(cfg_scale=1.0, precision="bf16")}
    interrupted_run(monkeypatch, gpt, vq, tmp_path / "bf16.npz", settings=bf16["settings"])
    with pytest.raises(ConfigError, match=r"sampled differently \(compiled_decoding: None -> True\)"):
        sample_to_npz(gpt, vq, LABELS, tmp_path / "bf16.npz", **bf16, compile=True)
    out = sample_to_npz(gpt, vq, LABELS, tmp_path / "fp32.npz", **BASE)
    monkeypatch.setattr(pipeline, "sample_batch", lambda *a, **k: pytest.fail("sampled again"))
    assert sample_to_npz(gpt, vq, LABELS, out, **BASE, compile=True) == out
    assert "compiled_decoding" not in json.loads(out.with_suffix(".json").read_text())


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_resuming_with_anything_changed_is_refused_and_keeps_the_parts(tmp_path, monkeypatch, name):
    gpt, vq = tiny_gpt(), tiny_vq()
    out = tmp_path / "samples.npz"
    interrupted_run(monkeypatch, gpt, vq, out)
    before = kept_files(tmp_path)
    change, diff = CHANGES[name]
    with pytest.raises(ConfigError, match=rf"unfinished sample set .* sampled differently \(.*{diff}.*new --out.*delete"):
        rerun(gpt, vq, out, change)
    assert kept_files(tmp_path) == before and not out.exists()


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_finished_sample_file_is_reused_or_refused_never_overwritten(tmp_path, monkeypatch, name):
    gpt, vq = tiny_gpt(), tiny_vq()
    out = sample_to_npz(gpt, vq, LABELS, tmp_path / "samples.npz", **BASE)
    before = files_under(tmp_path)
    monkeypatch.setattr(pipeline, "sample_batch", lambda *a, **k: pytest.fail("sampled again"))
    assert sample_to_npz(gpt, vq, LABELS, out, **BASE) == out  # the same request: nothing to do
    change, diff = CHANGES[name]
    with pytest.raises(ConfigError, match=rf"samples.npz was sampled differently \(.*{diff}.*delete .*samples.npz"):
        rerun(gpt, vq, out, change)
    assert files_under(tmp_path) == before


def test_parts_without_a_record_are_refused(tmp_path, monkeypatch):
    gpt, vq = tiny_gpt(), tiny_vq()
    out = tmp_path / "samples.npz"
    interrupted_run(monkeypatch, gpt, vq, out)
    (out.with_name("samples.npz.parts") / "record.json").unlink()  # as left by an older Mirai
    with pytest.raises(ConfigError, match="no record of how it was sampled.*delete"):
        sample_to_npz(gpt, vq, LABELS, out, **BASE)


@pytest.mark.parametrize("damage, match", [("short", "does not hold its batch's 4 samples"), ("garbage", "unreadable")])
def test_a_damaged_part_is_refused_at_merge_not_merged(tmp_path, monkeypatch, damage, match):
    gpt, vq = tiny_gpt(), tiny_vq()
    out = tmp_path / "samples.npz"
    interrupted_run(monkeypatch, gpt, vq, out)
    part = out.with_name("samples.npz.parts") / "000000.npz"
    if damage == "short":
        with np.load(part) as data:
            kept = {k: data[k][:3] for k in ("arr_0", "labels", "tokens")}
        np.savez(part, **kept)
    else:
        part.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=f"{match}.*delete it"):
        sample_to_npz(gpt, vq, LABELS, out, **BASE)
    assert not out.exists()
    part.unlink()  # the fix the message gives: the batch is sampled again
    assert len(np.load(sample_to_npz(gpt, vq, LABELS, out, **BASE))["arr_0"]) == 12


# --------------------------------------------------------------------- one writer per folder
def test_sampling_into_a_parts_folder_another_process_holds_is_refused(tmp_path):
    out = tmp_path / "samples.npz"
    with held_by_another_process(out.with_name("samples.npz.parts")):
        with pytest.raises(BusyError, match="in use by another mirai process"):
            sample_to_npz(tiny_gpt(), tiny_vq(), LABELS, out, **BASE)
    assert not out.exists()


def test_cli_refuses_an_output_folder_another_sampler_holds(tmp_path):
    gpt, vq = checkpoint.save(tmp_path / "gpt", tiny_gpt()), checkpoint.save(tmp_path / "vq", tiny_vq())
    out = tmp_path / "out"
    with held_by_another_process(out):
        assert_cli_refuses(["sample", "--gpt", gpt, "--vq", vq, "--out", out, "--device", "cpu"], tmp_path,
                           match=r"--out .*out is in use by another mirai process", output=out)
    assert not (out / "samples.npz").exists() and not (out / "samples.npz.parts").exists()


def test_cli_resume_with_another_guidance_scale_is_refused(tmp_path, monkeypatch, capsys):
    from mirai.cli.main import main

    gpt, vq = checkpoint.save(tmp_path / "gpt", tiny_gpt()), checkpoint.save(tmp_path / "vq", tiny_vq())
    out = tmp_path / "out"
    argv = ["sample", "--gpt", gpt, "--vq", vq, "--out", out, "--device", "cpu", "--num-samples", "12",
            "--batch-size", "4"]
    argv = [str(a) for a in argv]

    real, calls = pipeline.sample_batch, []

    def ctrl_c_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "sample_batch", ctrl_c_after_one)
    assert main(argv + ["--cfg-scale", "1"]) == 130 and "the 1 finished batch is kept in" in capsys.readouterr().err
    monkeypatch.undo()  # stopped after one batch: it and the record are kept
    assert_cli_refuses(argv + ["--cfg-scale", "2"], tmp_path, match="--cfg-scale: 1.0 -> 2.0.*new --out", output=out)
    assert main(argv + ["--cfg-scale", "1"]) == 0
    assert json.loads((out / "samples.json").read_text())["settings"]["cfg_scale"] == 1.0
    assert len(np.load(out / "samples.npz")["arr_0"]) == 12


def test_cli_refuses_guidance_from_a_run_trained_without_class_dropout(stores, tmp_path):
    from helpers import make_cfg

    from mirai.cli.main import main
    from mirai.training.trainer import train

    result = train(make_cfg(stores, tmp_path / "run", steps=2, dropout=False))
    argv = ["sample", "--gpt", result.checkpoint, "--vq", stores / "vq", "--out", tmp_path / "out", "--device", "cpu",
            "--per-class", "1"]
    assert_cli_refuses(argv + ["--cfg-scale", "2"], tmp_path, output=tmp_path / "out",
                       match="trained without class dropout.*--cfg-scale 1")
    assert not (tmp_path / "out").exists()  # refused before the output folder was made
    assert_cli_refuses(argv + ["--cfg-scale", "1", "--classes", "3"], tmp_path, match=r"\[3\] are outside .* 3 classes")
    assert main([str(a) for a in argv + ["--cfg-scale", "1"]]) == 0  # without guidance it samples


def test_cli_ranks_share_the_output_lock_and_a_held_folder_stops_them_all(tmp_path):
    import os
    import socket

    from mirai.cli.main import main

    def two_ranks(argv):
        """``mirai ARGV`` as two gloo ranks (as torchrun starts them); their exit codes."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen(
            [sys.executable, "-m", "mirai.cli.main", *map(str, argv)], stdout=subprocess.DEVNULL,
            env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}) for r in range(2)]
        return [p.wait(timeout=300) for p in procs]

    gpt, vq = checkpoint.save(tmp_path / "gpt", tiny_gpt()), checkpoint.save(tmp_path / "vq", tiny_vq())
    argv = ["sample", "--gpt", gpt, "--vq", vq, "--device", "cpu", "--num-samples", "10", "--batch-size", "2"]
    assert two_ranks(argv + ["--out", tmp_path / "ddp"]) == [0, 0]  # rank 1 is not locked out by rank 0
    assert main([str(a) for a in argv + ["--out", tmp_path / "one"]]) == 0
    ddp, one = np.load(tmp_path / "ddp" / "samples.npz"), np.load(tmp_path / "one" / "samples.npz")
    assert all(np.array_equal(ddp[k], one[k]) for k in ("arr_0", "labels", "tokens"))
    with held_by_another_process(tmp_path / "held"):
        assert two_ranks(argv + ["--out", tmp_path / "held"]) == [1, 1]  # both stop; neither samples
    assert sorted(p.name for p in (tmp_path / "held").iterdir()) == [".lock"]
