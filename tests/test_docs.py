"""The documentation cannot rot: README.md, docs/*.md and the assets' READMEs are checked against the code.

* every fenced block whose info string is ``python runnable`` or ``bash runnable`` runs (tiny
  models, offline; python in a subprocess, bash with ``mirai`` and ``torchrun`` on PATH, both in a
  scratch directory laid out like the clone) and must exit 0;
* every relative link points at a file of the repository (and at a heading, for ``#anchor``);
* docs/configuration.md lists every field of every config dataclass, with the code's type and
  default (a field added without a row fails here, with the row to paste);
* install hints name the distribution, ``mirai-foresight``; ``mirai --version``, CITATION.cff and
  LICENSE agree with the package metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
import re
import subprocess
import sys
import types
import typing
from importlib.metadata import metadata, version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "src/mirai/assets").glob("*/*/README.md"))]
FENCE = re.compile(r"^(`{3,})([^`\n]*)\n(.*?)^\1[ \t]*$", re.M | re.S)
RUNNABLE = ("python runnable", "bash runnable")


def fenced_blocks(page: Path) -> list[tuple[str, int, str]]:
    """(info string, 1-based line of the opening fence, body) of every fenced block of ``page``."""
    text = page.read_text()
    return [(m.group(2).strip(), text.count("\n", 0, m.start()) + 1, m.group(3)) for m in FENCE.finditer(text)]


def runnable_blocks() -> list:
    return [pytest.param(info.split()[0], body, id=f"{page.relative_to(ROOT)}:{line}")
            for page in PAGES for info, line, body in fenced_blocks(page) if info in RUNNABLE]


def clone_like(tmp_path: Path) -> Path:
    """A scratch directory that reads like the clone's root (``src/`` and ``configs/`` link to the
    repository's), so blocks may name committed files by their path while writing only here."""
    for name in ("src", "configs"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    return tmp_path


def test_the_pages_have_runnable_blocks():
    # The runnable test below must not pass by finding nothing (a renamed info string, say).
    found = {Path(p.id.split(":")[0]).name for p in runnable_blocks()}
    assert {"README.md", "python-api.md"} <= found, found


@pytest.mark.parametrize(("language", "body"), runnable_blocks())
def test_runnable_block(language, body, tmp_path):
    cwd = clone_like(tmp_path)
    script = cwd / ("block.py" if language == "python" else "block.sh")
    script.write_text(body)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, script.name] if language == "python" else ["bash", "-eo", "pipefail", script.name]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


# ------------------------------------------------------------------------------- links
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the headings of ``page``: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_relative_links_point_at_files_and_headings():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # a URL
                continue
            path, _, anchor = target.partition("#")
            file = page.parent / path if path else page
            if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to missing files or headings:\n" + "\n".join(broken)


# ---------------------------------------------------------------------- configuration
# docs/configuration.md: each table follows a marker naming the dataclass and the prefix of its keys.
MARKER = re.compile(r"^<!-- fields of (\S+?)(?: as (\S+))? -->$", re.M)


def type_text(annotation) -> str:
    """How the reference writes a field's type (plain words: a table cell cannot hold ``|``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is typing.Any:
        return "any"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in args)
    if origin is typing.Literal:
        return " / ".join(str(a) for a in args)
    if origin is tuple:
        return "[" + ", ".join(type_text(a) for a in args) + "]"
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict or annotation is dict:
        return "mapping"
    if dataclasses.is_dataclass(annotation):
        return annotation.__name__
    return annotation.__name__


def default_text(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    value = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(value, default_flow_style=True, width=1000).removesuffix("\n...\n").strip()


def config_rows(cls, prefix: str = "") -> dict[str, tuple[str, str]]:
    """``{dotted key: (type, default)}`` of dataclass ``cls``: nested sections expanded, and a list of
    dataclasses both as its own row and as ``key[].field`` rows."""
    hints = typing.get_type_hints(cls)
    rows = {}
    for field in dataclasses.fields(cls):
        key, annotation = prefix + field.name, hints[field.name]
        if dataclasses.is_dataclass(annotation):
            rows.update(config_rows(annotation, key + "."))
            continue
        rows[key] = (type_text(annotation), default_text(field))
        item = [a for arg in typing.get_args(annotation) for a in (typing.get_args(arg) or (arg,))
                if dataclasses.is_dataclass(a)]
        if item:
            rows.update(config_rows(item[0], key + "[]."))
    return rows


def documented_tables() -> dict[tuple[str, str], dict[str, list[str]]]:
    """(class path, prefix) -> {key: [type, default, meaning]} for every marked table."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    tables = {}
    for marker in MARKER.finditer(text):
        rows = {}
        for line in text[marker.end():].strip("\n").split("\n\n")[0].splitlines()[2:]:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows[cells[0].strip("`")] = [c.strip("`") for c in cells[1:3]] + cells[3:]
        tables[(marker.group(1), marker.group(2) or "")] = rows
    return tables


def config_classes() -> list[str]:
    return ["mirai.training.config.TrainConfig", "mirai.bench.config.BenchConfig", "mirai.bench.config.Variant",
            "mirai.builders.tokenizer.train.TokenizerTrainConfig", "mirai.builders.encoder.FashionTrainConfig"]


def load_class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_configuration_reference_documents_every_field():
    tables = documented_tables()
    assert {path for path, _ in tables} == set(config_classes()), "docs/configuration.md: one table per config class"
    problems = []
    for (path, prefix), documented in tables.items():
        expected = config_rows(load_class(path), prefix)
        for key, (kind, default) in expected.items():
            row = documented.get(key)
            if row is None or row[:2] != [kind, default]:
                problems.append(f"{path}: {'add' if row is None else 'fix'} | `{key}` | `{kind}` | `{default}` | ... |")
            elif len(row) < 3 or not row[2]:
                problems.append(f"{path}: `{key}` has no meaning")
        problems += [f"{path}: `{key}` is not a field (any more): remove its row" for key in documented.keys() - expected]
    assert not problems, "docs/configuration.md is out of date:\n" + "\n".join(problems)


def test_config_rows_walk_nested_sections_and_lists():
    # The walker the reference is checked with: sections are expanded, lists of sections get key[] rows.
    rows = config_rows(load_class("mirai.training.config.TrainConfig"))
    assert rows["optim.betas"] == ("[float, float]", "[0.9, 0.95]")
    assert rows["foresight.lambdas"][0] == "list of LambdaSchedule or null"
    assert rows["foresight.lambdas[].values"] == ("list of float", "[2.0]")
    assert rows["foresight.source"] == ("none / encoder / ema", "none")
    assert "model" not in rows and "model.name" in rows


# ------------------------------------------------- distribution name, version, citation
def test_install_hints_name_the_distribution():
    # `mirai` on PyPI is an unrelated project: `pip install mirai[...]` would install it.
    wrong = re.compile(r"pip install\s+['\"]?mirai(?![-\w])")
    files = [*PAGES, ROOT / "DEVELOPERS.md", *(ROOT / "src" / "mirai").rglob("*.py")]
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files for m in wrong.finditer(p.read_text())]
    assert not hits, "install hints must name mirai-foresight:\n" + "\n".join(hits)
    # ... and only extras that the distribution defines (pyproject.toml's optional-dependencies).
    extras = set(metadata("mirai-foresight").get_all("Provides-Extra"))
    named = {e.strip() for p in files for group in re.findall(r"mirai-foresight\[([^\]]+)\]", p.read_text())
             for e in group.split(",")}
    assert named and named <= extras, f"install hints name extras the distribution lacks: {named - extras}"


def test_version_flag_reports_the_installed_distribution():
    from mirai.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert out.getvalue().strip() == f"mirai {version('mirai-foresight')}"


def test_citation_and_license_match_the_package():
    # CITATION.cff repeats the version and the license: they must not drift from pyproject.toml.
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == version("mirai-foresight")
    assert citation["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()
