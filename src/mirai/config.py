"""Validated dataclass configs with YAML files and ``key=value`` command-line overrides.

Every config in Mirai is a (possibly nested) dataclass. ``load_config`` reads a YAML file,
applies dotted overrides such as ``optim.lr=3e-4`` and builds the dataclass, checking
that every key exists and every value has the declared type. Dataclasses may define
``validate()`` to check relations between fields; it runs after construction.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar, Union

import yaml

from mirai.errors import ConfigError

T = TypeVar("T")


def _first_line(err: Exception) -> str:
    """YAML's error text spans several lines; the CLI reports one."""
    return " ".join(str(err).split())


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=3e-4)")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    if any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"override {text!r}: key {key.strip()!r} has an empty part; keys are dotted names "
                          "such as optim.lr")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: cannot parse value {raw!r} as YAML ({_first_line(err)}); "
                          "quote strings that hold YAML syntax") from None
    return key.strip().split("."), value


def keys_overlap(a: list[str] | tuple[str, ...], b: list[str] | tuple[str, ...]) -> bool:
    """Whether two dotted key paths name the same key, or one a section holding the other."""
    shorter = min(len(a), len(b))
    return tuple(a[:shorter]) == tuple(b[:shorter])


def check_distinct_overrides(overrides: Iterable[str], where: str = "") -> None:
    """Refuse (``ConfigError``) one list of overrides that sets a key twice, or a key and a key inside it.

    Applied in order, the later one would silently win (``a=1 a=2``) or replace the earlier one's
    section (``foresight.lambda_=1 foresight=null``): a typo or a stale flag, never an intent. Layers
    (a bench's ``train_overrides`` then a variant's) may re-set keys; each list on its own may not."""
    prefix = f"{where}: " if where else ""
    seen: dict[tuple[str, ...], str] = {}
    previous = ""
    for text in overrides:
        if "=" not in text and previous.endswith("="):  # the shell split `optim.lr= 2e-3` in two words
            raise ConfigError(f"{prefix}overrides {previous!r} {text!r}: a space after "
                              f"'='? write {previous}{text} (or quote a value with spaces)")
        previous = text
        path = tuple(parse_override(text)[0])
        for other, earlier in seen.items():
            if keys_overlap(path, other):
                clash = "set twice" if path == other else "set both whole and inside it"
                shared = path[:min(len(path), len(other))]
                raise ConfigError(f"{prefix}{'.'.join(shared)} is {clash} "
                                  f"({earlier!r} and {text!r}); keep the one you mean")
        seen[path] = text


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def _describe(annotation: Any) -> str:
    """A type annotation in words, for error messages: ``int | Literal["auto"]`` -> "an integer or 'auto'"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(annotation):
        return "a mapping"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             dict: "a mapping", list: "a list"}
    return words.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if isinstance(value, str) and not value.strip():  # '' as a path would silently mean the current folder
        raise ConfigError(f"{where} is empty ({value!r}); give a value")
    if value is None and not (origin in (Union, types.UnionType) and type(None) in args):
        raise ConfigError(f"{where} is empty (null); give {_describe(annotation)}")  # e.g. the override 'steps='
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: expected {_describe(annotation)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)  # YAML reads "1e-4" (no dot) as a string
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):  # no setting means anything as NaN or infinity
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _did_you_mean(cls: type, unknown: list[str], where: str) -> str:
    """``"; did you mean data.val_images?"``: each unknown key as a key of one of ``cls``'s sections, or as a
    close spelling of one of its own keys; "" when neither fits."""
    hints, fields = typing.get_type_hints(cls), [f for f in dataclasses.fields(cls) if f.init]
    # Dotted keys as a command line gives them: "config.data" -> "data.", "variants.baseline" -> itself.
    section = where.removeprefix("config").lstrip(".")
    prefix = section + "." if section else ""
    guesses = []
    for key in unknown:
        nested = [f"{prefix}{f.name}.{key}" for f in fields if dataclasses.is_dataclass(hints[f.name])
                  and key in {g.name for g in dataclasses.fields(hints[f.name])}]
        close = difflib.get_close_matches(key, [f.name for f in fields], n=1)
        guesses += nested or [f"{prefix}{name}" for name in close]
    return f"; did you mean {' or '.join(guesses)}?" if guesses else ""


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and ill-typed values."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {names}{_did_you_mean(cls, unknown, where)}")
    # A blank value for a required string (default "") is the setting left unset: its section's own
    # check then names what to give (data.codes: "the code store from `mirai extract`").
    required = {f.name for f in dataclasses.fields(cls) if f.default == ""}
    kwargs = {k: "" if k in required and isinstance(v, str) and not v.strip() else _coerce(v, hints[k], f"{where}.{k}")
              for k, v in data.items()}
    # A section left out takes its defaults, which must pass the same checks as given values (a
    # required setting, such as a training config's data.codes, has no usable default).
    for f in dataclasses.fields(cls):
        if f.init and f.name not in data and f.default_factory is not dataclasses.MISSING \
                and dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = from_dict(hints[f.name], {}, f"{where}.{f.name}")
    try:
        obj = cls(**kwargs)
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err
    except ConfigError as err:  # a section's own check ("top_k must be ..."): say which section's top_k
        section = where.partition(".")[2]
        if section and f"{section}." not in str(err) and not str(err).startswith(where):
            raise ConfigError(f"{where}: {err}") from None
        raise
    return obj


def to_dict(cfg: Any) -> dict:
    """Plain-data (YAML/JSON-safe) view of a dataclass config."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``: dotted keys, lists, scalars and empty
    mappings as leaves (how configs and records are compared key by key)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        out.update(flatten(value, name + ".") if isinstance(value, dict) and value else {name: value})
    return out


def deep_merge(base: dict, update: dict) -> dict:
    """``update`` laid over ``base``: sections merge key by key, values replace."""
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def find_config(path: str | Path) -> Path:
    """``path`` itself, else the config of that name shipped with Mirai (``fashion/baseline.yaml``
    or ``configs/fashion/baseline.yaml``), so the named configs work from any directory."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        # Shallowest first: the folder's own configs, not the copies its runs keep deep in checkpoints/.
        inside = [str(p) for p in sorted(path.rglob("*.yaml"), key=lambda p: (len(p.parts), str(p)))]
        raise ConfigError(f"config {path} is a directory; give a YAML file in it" + (
            f", e.g. {', '.join(inside[:3])}" + (f" and {len(inside) - 3} more" if len(inside) > 3 else "")
            if inside else " (it holds none)"))
    packaged = _shipped(path)
    if packaged is not None:
        return packaged
    raise _missing(path)


def _shipped_parts(path: Path) -> tuple[str, ...]:
    """``path`` as a name inside the shipped configs: ``configs/fashion/x.yaml`` -> (fashion, x.yaml)."""
    return path.parts[1:] if path.parts[:1] == ("configs",) else path.parts


def _shipped(path: Path) -> Path | None:
    """The config shipped with Mirai under the name ``path`` (``fashion/x.yaml``, ``configs/fashion/x.yaml``)."""
    parts = _shipped_parts(path)
    packaged = PACKAGED_CONFIGS.joinpath(*parts) if parts and not path.is_absolute() else None
    return packaged if packaged is not None and packaged.is_file() else None


def _missing(path: Path) -> ConfigError:
    """The error for a config that is nowhere: close shipped names, and what Mirai ships where."""
    parts = _shipped_parts(path)
    shipped = sorted(str(p.relative_to(PACKAGED_CONFIGS)) for p in PACKAGED_CONFIGS.rglob("*.yaml"))
    close = difflib.get_close_matches(str(Path(*parts)) if parts else str(path), shipped, n=3, cutoff=0.7)
    folders = sorted({name.split("/")[0] for name in shipped})
    counts = ", ".join(f"{f}/ ({sum(name.startswith(f + '/') for name in shipped)})" for f in folders)
    return ConfigError(f"config file {path} does not exist" + (f"; did you mean {' or '.join(close)}?" if close else "")
                       + f" (Mirai ships {counts} in {PACKAGED_CONFIGS}; name one as e.g. fashion/baseline.yaml)")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps
    the later value silently, which hides a stale line in an edited config."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` lays keys under this mapping's own; only explicit keys can clash
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise ConfigError(f"key {key!r} appears twice (lines {seen[key] + 1} and "
                                      f"{key_node.start_mark.line + 1}); keep the one you mean")
            except TypeError:
                break  # an unhashable key: PyYAML's own error names it below
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a YAML config. A top-level ``base: other.yaml`` (beside this file, else a shipped config
    name such as ``fashion/mirai_i.yaml``) is read first and this file's keys are laid over it, so
    ablation configs state only what differs. A key given twice in one mapping is a ``ConfigError``."""
    path = find_config(path)
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path} includes itself through 'base'")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file; give the YAML config") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {_first_line(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is not None:
        beside = path.parent / str(base)
        found = beside if beside.exists() else _shipped(Path(str(base)))
        if found is None:
            raise ConfigError(f"config file {path}: its base {base!r} is not beside it ({beside}), and as a "
                              f"shipped name: {_missing(Path(str(base)))}")
        data = deep_merge(read_yaml(found, _seen + (path.resolve(),)), data)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Read ``path`` (YAML; optional), apply ``overrides`` and build a validated ``cls``."""
    overrides = list(overrides)
    check_distinct_overrides(overrides)
    data = read_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides))


def saved_config_error(path: str | Path, err: Exception) -> ConfigError:
    """The error for a config that a checkpoint saved (``path``: its ``config.json`` or ``train_config.yaml``)
    and this Mirai cannot rebuild; ``err`` names the bad key or value (``from_dict``'s checks). The file
    was not written by hand, so the fix is the version that wrote it, or an unedited copy."""
    return ConfigError(f"{path}: {err}. The checkpoint was written by another version of Mirai (load it with that "
                       "version) or the file was edited (restore it from the checkpoint's source)")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file through a temporary name and a rename: a reader, or another process
    writing the same file, never sees half of it (the temporary name is per process)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write a dataclass config as YAML atomically (the file beside every checkpoint)."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
