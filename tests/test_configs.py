"""Every YAML shipped in configs/ loads into its validated dataclass (a typo there fails here, not mid-run)."""

from pathlib import Path

import pytest

from mirai.bench.config import BenchConfig, plan_runs
from mirai.builders.tokenizer.train import TokenizerTrainConfig
from mirai.config import load_config
from mirai.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "mirai" / "configs"


def shipped(folder: str) -> list[Path]:
    paths = sorted((CONFIGS / folder).glob("*.yaml"))
    assert paths, f"no configs in {folder}"
    return paths


def differing_keys(a: TrainConfig, b: TrainConfig) -> set[str]:
    """The dotted keys whose values differ between two resolved training configs."""
    from mirai.config import flatten, to_dict

    a, b = flatten(to_dict(a)), flatten(to_dict(b))
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def run_config(bench: BenchConfig, variant: str, seed: int = 0) -> TrainConfig:
    """The training config that ``bench`` gives one (variant, seed) run."""
    return next(run.cfg for run in plan_runs(bench) if run.variant == variant and run.seed == seed)


@pytest.mark.parametrize("path", shipped("fashion") + shipped("imagenet"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_training_configs_validate(path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent.parent.parent)  # `base:` and asset paths are relative to the repository
    cfg = load_config(TrainConfig, path)
    assert cfg.steps > 0 or cfg.epochs > 0


@pytest.mark.parametrize("path", shipped("tokenizer"), ids=lambda p: p.name)
def test_tokenizer_configs_validate(path):
    load_config(TokenizerTrainConfig, path)


@pytest.mark.parametrize("path", shipped("bench"), ids=lambda p: p.name)
def test_bench_configs_plan_every_run(path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent.parent.parent)
    bench = load_config(BenchConfig, path)
    runs = plan_runs(bench)  # builds and validates every variant's training config
    assert len(runs) == len(bench.variants) * len(bench.seeds)
    assert "baseline" in bench.variants


def test_the_long_grid16_runs_differ_from_fashion_grid16_only_in_their_length(monkeypatch):
    """RESULTS.md 4.11 compares FIDs across these two benches: same scoring, same training but for the schedule."""
    from mirai.bench.store import SCORING_KEYS

    monkeypatch.chdir(CONFIGS.parent.parent.parent)
    short, long = (load_config(BenchConfig, CONFIGS / "bench" / name)
                   for name in ("fashion_grid16.yaml", "fashion_grid16_long.yaml"))
    assert all(getattr(short, key) == getattr(long, key) for key in SCORING_KEYS)
    assert long.steps == 2 * short.steps and short.steps in long.schedule()
    assert set(long.variants) <= set(short.variants)
    for variant in long.variants:  # each long run pairs with the short run of the same name
        differ = differing_keys(run_config(short, variant), run_config(long, variant))
        assert "steps" in differ and differ <= {"steps", "run_dir", "save_every", "eval_every", "keep_last"}, differ


def test_ill_typed_values_are_named_in_words():
    """A value that fits no branch of a union, or a bare ``dict`` field, says what is expected in words."""
    from mirai.errors import ConfigError

    base = ["data.codes=codes"]
    for override, match in [("data.workers=abc", "data.workers: expected an integer or 'auto', got 'abc'"),
                            ("data.workers=1.5", "expected an integer or 'auto', got 1.5"),
                            ("foresight.encoder=3", "foresight.encoder: expected a string or a mapping or null, got 3")]:
        with pytest.raises(ConfigError, match=match):
            load_config(TrainConfig, CONFIGS / "fashion" / "mirai_i.yaml", base + [override])


@pytest.mark.parametrize("key", ["vocab_size", "grid_size", "num_classes"])
def test_model_overrides_of_what_the_code_store_fixes_are_refused(key):
    # The store's value would silently win; model.<key> is the field that is checked against the store.
    from mirai.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"model.overrides sets {key}, which the code store fixes: set model.{key}"):
        load_config(TrainConfig, CONFIGS / "fashion" / "baseline.yaml", ["data.codes=codes", f"model.overrides={{{key}: 8}}"])


@pytest.mark.parametrize("overrides, match", [
    (["optim.lr=1e-3", "optim.lr=2e-3"], r"optim.lr is set twice \('optim.lr=1e-3' and 'optim.lr=2e-3'\); keep the one you mean"),
    (["foresight.lambda_=1", "foresight=null"], "foresight is set both whole and inside it"),
    (["optim={lr: 1e-3}", "optim.lr=2e-3"], "optim is set both whole and inside it"),
    (["optim.lr=1", "optim.lr.x=2"], "optim.lr is set both whole and inside it"),
    (["optim.lr=", "2e-3"], r"overrides 'optim.lr=' '2e-3': a space after '='\? write optim.lr=2e-3"),
])
def test_one_list_of_overrides_may_set_a_key_once(overrides, match, tmp_path):
    """Applied in order, the later override would silently win or wipe the earlier one's section."""
    from mirai.bench.demo import DemoSettings
    from mirai.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        load_config(TrainConfig, CONFIGS / "fashion" / "mirai_i.yaml", ["data.codes=codes", *overrides])
    bench = load_config(BenchConfig, CONFIGS / "bench" / "fashion_grid16.yaml")
    with pytest.raises(ConfigError, match="variant 'baseline': " + match):
        bench.variants["baseline"]["overrides"] = overrides
        plan_runs(bench)
    with pytest.raises(ConfigError, match="overrides: " + match):
        DemoSettings(out=tmp_path / "demo", overrides=tuple(overrides)).validate()


@pytest.mark.parametrize("override, match", [
    ("steps=10", "the demo sets steps itself; use --steps"), ("seed=3", "use --seed"), ("device=cpu", "use --device"),
    ("run_dir=x", "use --out"), ("data.codes=x", "to train on other code stores, use mirai bench convergence"),
    ("data={codes: x}", "mirai bench convergence"), ("optim..lr=1", "key 'optim..lr' has an empty part"),
])
def test_the_demo_refuses_overrides_of_what_its_flags_and_stores_set(override, match, tmp_path):
    """Before any tokenizing: a demo trained on another device, seed, length or store than it scores."""
    from mirai.bench.demo import DemoSettings, run_demo
    from mirai.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        run_demo(DemoSettings(out=tmp_path / "demo", overrides=(override,), device="cpu"))
    assert not (tmp_path / "demo").exists()


def test_the_demo_s_own_overrides_give_way_to_the_user_s(tmp_path):
    """`mirai demo optim.lr=5e-4` replaces the demo's short-run learning rate (one value, not two)."""
    from mirai.bench.demo import DemoSettings, demo_bench

    codes = {"train": tmp_path / "train", "test": tmp_path / "test"}
    own = demo_bench(DemoSettings(out=tmp_path), codes).train_overrides
    assert "optim.lr=2e-3" in own
    mine = demo_bench(DemoSettings(out=tmp_path, overrides=("optim.lr=5e-4",)), codes).train_overrides
    assert [text for text in mine if text.startswith("optim.lr")] == ["optim.lr=5e-4"]
    assert set(own) - set(mine) == {"optim.lr=2e-3"}
    section = demo_bench(DemoSettings(out=tmp_path, overrides=("optim={lr: 5e-4}",)), codes).train_overrides
    assert not [text for text in section if text.startswith("optim.")]



# Rows of the appendix's published results (docs/method.md §8): model, epochs, and the three configs
# (baseline, + Mirai-I, + Mirai-E) that reproduce the row.
PUBLISHED_ROWS = [
    ("GPT-B", 300, "llamagen_b", "mirai_i_b", "mirai_e_b"),
    ("GPT-L", 300, "llamagen_l", "mirai_i_l", "mirai_e_l"),
    ("GPT-XL", 300, "llamagen_xl", "mirai_i_xl", "mirai_e_xl"),
    ("GPT-B", 80, "llamagen_b_384", "mirai_i_b_384", "mirai_e_b_384"),
    ("GPT-XXL", 40, "llamagen_xxl", "mirai_i_xxl", "mirai_e_xxl"),  # Table 12
    ("GPT-B", 80, "par_b_m2", "par_b_m2_mirai_i", "par_b_m2_mirai_e"),  # Table 13
    ("GPT-S", 80, "lowres_gpt_s", "lowres_gpt_s_mirai_i", "lowres_gpt_s_mirai_e"),  # Table 14
]


@pytest.mark.parametrize("row", PUBLISHED_ROWS, ids=lambda row: row[2])
def test_paper_configs_train_the_published_model_for_the_published_epochs(row, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent.parent.parent)
    model, epochs, *names = row
    for name in names:
        cfg = load_config(TrainConfig, CONFIGS / "imagenet" / f"{name}.yaml")
        assert (cfg.model.name, cfg.epochs, cfg.steps) == (model, epochs, 0), name


def test_a_config_file_sets_a_key_once_and_may_build_on_a_shipped_config(tmp_path):
    """PyYAML keeps the later of two equal keys silently; a user's file may name a shipped base."""
    from mirai.errors import ConfigError

    twice = tmp_path / "twice.yaml"
    twice.write_text("data: {codes: x}\nsteps: 5\noptim:\n  lr: 1.0e-3\n  lr: 2.0e-3\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: key 'lr' appears twice \(lines 4 and 5\); keep the one"):
        load_config(TrainConfig, twice)
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: fashion/mirai_i.yaml\nsteps: 3\n")
    cfg = load_config(TrainConfig, mine)
    assert cfg.steps == 3 and cfg.foresight.source == "encoder"  # the shipped file's keys, under this one's
    mine.write_text("base: fashion/mirai_ii.yaml\n")
    with pytest.raises(ConfigError, match=r"its base 'fashion/mirai_ii.yaml' is not beside it .*did you mean "
                                          r"fashion/mirai_i.yaml"):
        load_config(TrainConfig, mine)


def test_yaml_merge_keys_still_load_and_a_base_is_never_read_from_the_working_directory(tmp_path, monkeypatch):
    """An anchor's keys merged with `<<:` may be overridden (not a repeated key); a missing base is
    looked for beside the file and among the shipped configs only, not where the command runs."""
    from mirai.config import read_yaml
    from mirai.errors import ConfigError

    merged = tmp_path / "merged.yaml"
    merged.write_text("common: &o {lr: 1.0e-3, batch_size: 8}\noptim: {<<: *o, lr: 2.0e-3}\n")
    assert read_yaml(merged)["optim"] == {"lr": 2.0e-3, "batch_size": 8}
    merged.write_text("? [a, b]\n: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML.*unhashable"):
        read_yaml(merged)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.yaml").write_text("base: fashion/mirai_i.yaml\nsteps: 3\n")
    (tmp_path / "fashion").mkdir()
    (tmp_path / "fashion" / "mirai_i.yaml").write_text("data: {codes: DECOY}\n")  # in the working directory
    monkeypatch.chdir(tmp_path)
    data = read_yaml(tmp_path / "sub" / "mine.yaml")
    assert data["steps"] == 3 and data["foresight"]["source"] == "encoder" and data["data"]["codes"] != "DECOY"


def test_the_named_grid16_mirai_e_config_trains_the_screen_s_best_variant(monkeypatch):
    """configs/fashion/mirai_e_grid16.yaml is RESULTS.md 4.9's measured setting: the bench variant's training
    config but for where it writes and how often it saves (what the bench sets for every run)."""
    monkeypatch.chdir(CONFIGS.parent.parent.parent)
    screen = load_config(BenchConfig, CONFIGS / "bench" / "fashion_grid16_mirai_e_screen.yaml")
    measured = run_config(screen, "mirai_e_far_lambda1_teacher09")
    named = load_config(TrainConfig, CONFIGS / "fashion" / "mirai_e_grid16.yaml")
    differ = differing_keys(measured, named)
    assert differ <= {"run_dir", "save_every", "eval_every", "keep_last", "model.grid_size", "foresight.k"}, differ
    assert named.model.grid_size == 16 and named.foresight.num_heads() == measured.foresight.num_heads() == 3
    assert named.foresight.offsets == [(2, 0), (2, 1), (3, 0)] and named.foresight.teacher_decay == 0.9


def test_the_mirai_e_size_bench_differs_from_the_screen_only_in_the_model(monkeypatch):
    """RESULTS.md 4.9 sets the size bench's GPT-Micro-S runs beside the screen's GPT-Micro runs of the same
    variants: same scoring, same training but for the model's name (and where each run writes)."""
    from mirai.bench.store import SCORING_KEYS

    monkeypatch.chdir(CONFIGS.parent.parent.parent)
    screen, size = (load_config(BenchConfig, CONFIGS / "bench" / name)
                    for name in ("fashion_grid16_mirai_e_screen.yaml", "fashion_grid16_mirai_e_size.yaml"))
    assert [key for key in SCORING_KEYS if getattr(screen, key) != getattr(size, key)] == []
    assert screen.steps == size.steps and set(size.variants) <= set(screen.variants)
    for variant in size.variants:
        a, b = run_config(screen, variant), run_config(size, variant)
        differ = differing_keys(a, b)
        # the named config pins grid_size 16 and k null (test above); the screen's variant leaves them to the data
        assert "model.name" in differ and differ <= {"model.name", "run_dir", "model.grid_size", "foresight.k"}, differ
        assert (a.model.name, b.model.name) == ("GPT-Micro", "GPT-Micro-S")


def test_a_training_key_on_the_bench_command_line_names_train_overrides(monkeypatch):
    """`mirai bench convergence ... optim.lr=2e-3` overrides the bench config, which has no `optim`: the error
    says where a training key goes and what the bench's train_overrides hold, so the user keeps them."""
    from mirai.bench.config import load_bench
    from mirai.errors import ConfigError

    monkeypatch.chdir(CONFIGS.parent.parent.parent)
    path = CONFIGS / "bench" / "fashion_grid16_mirai_e_size.yaml"
    with pytest.raises(ConfigError, match=r"'optim.lr=2e-3' sets the training config.*train_overrides, which "
                       r"hold \['model.name=GPT-Micro-S', 'data.codes=.*replaces the whole list"):
        load_bench(path, ["seeds=[0]", "optim.lr=2e-3"])
    with pytest.raises(ConfigError, match=r"'model.name=GPT-Mini', 'foresight.layer=2' set the training config"):
        load_bench(path, ["model.name=GPT-Mini", "foresight.layer=2"])
    with pytest.raises(ConfigError, match=r"'seed=1', 'save_every=10': the bench sets run_dir, seed, .* itself; "
                       r"choose seeds with seeds=\[...\] or --seed"):
        load_bench(path, ["seed=1", "save_every=10"])  # keys the bench sets per run: its own are seeds, eval_at
    bench = load_bench(path, ["seeds=[1]", "train_overrides=[model.name=GPT-Micro, optim.lr=0.002]"])
    assert bench.seeds == [1] and bench.train_overrides == ["model.name=GPT-Micro", "optim.lr=0.002"]
    assert [run.cfg.optim.lr for run in plan_runs(bench)] == [0.002, 0.002]


@pytest.mark.parametrize("cls, data, where, guess", [
    (TrainConfig, {"val_images": 9}, "config", "did you mean data.val_images?"),
    (TrainConfig, {"data": {"val_image": 9}}, "config", "did you mean data.val_images?"),
    (TrainConfig, {"stepz": 9}, "config", "did you mean steps?"),
    ("Variant", {"overide": []}, "variants.baseline", "did you mean variants.baseline.overrides?"),
])
def test_an_unknown_key_suggests_the_key_meant_as_a_command_line_spells_it(cls, data, where, guess):
    from mirai.bench.config import Variant
    from mirai.config import from_dict
    from mirai.errors import ConfigError

    with pytest.raises(ConfigError, match=guess.replace(".", r"\.").replace("?", r"\?") + "$"):
        from_dict(Variant if cls == "Variant" else cls, data, where)
