"""Typed configuration: dataclasses <-> plain dicts / YAML, with dotted overrides (``--set a.b=c``).

Every stage describes its settings as (nested) dataclasses. This module turns them into dicts for manifests and run
directories, builds them back from YAML, and applies ``key=value`` overrides. An unknown key is always an error that
names the nearest valid key: a misspelt option that is silently ignored costs a research team a whole run.
A file names its base (``base: other.yaml`` at the top, or ``model: {base: model/x.yaml}`` for one section) and
states only what differs, so that each fact (CAV-MAE's architecture, say) is written once. The recipes and model
configs ship inside the package (``avmae/configs``): a command's ``--config`` takes a path or one of their names
(``pretrain_as2m``, ``model/tiny``), so an installed wheel runs its recipes from any folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown key, wrong type, bad value."""


def at_least(minimum: float, values: dict[str, float]) -> None:
    """Refuse any of ``{dotted key: value}`` below ``minimum``, naming the key: checked when a config is validated."""
    for key, value in values.items():
        if value < minimum:
            raise ConfigError(f"{key} must be at least {minimum}, got {value}")


def to_dict(obj: Any) -> Any:
    """A dataclass (possibly nested) as plain JSON/YAML-able values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dotted_values(obj: Any) -> dict[str, Any]:
    """A config as ``{dotted key: value}`` (``{"optim.lr": 1e-4, ...}``), the keys ``--set`` takes; an empty
    section is one key with ``{}``."""
    def flat(data: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            return {prefix.rstrip("."): data}
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}

    return flat(to_dict(obj), "")


def _unknown_key_error(cls: type, key: str, valid: list[str], where: str) -> ConfigError:
    # A dataclass may name, in a MOVED_KEYS class attribute (not a field), the keys that left it and where they went:
    # a recipe written before the move then gets directions instead of a guess.
    moved = getattr(cls, "MOVED_KEYS", {}).get(key)
    if moved:
        return ConfigError(f"config key '{where}{key}' has moved: use {moved}")
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"unknown config key '{where}{key}'{hint}")


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a number or a string that spells one, else None. YAML 1.1 (PyYAML) reads ``5e-5``
    and ``1e3`` as strings (its floats need a dot and a signed exponent), and ``--set optim.lr=5e-5`` is how people
    write a learning rate."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert one value against a field's type annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(annotation) or origin in (list, tuple, dict) or annotation is dict:
        return _coerce_container(value, annotation, where)
    return _coerce_scalar(value, annotation, where)


def _coerce_union(value: Any, args: tuple, where: str) -> Any:
    """The first of the union's types that takes ``value``; else the first one's error."""
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, where)
        except ConfigError as err:
            errors.append(str(err))
    raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")


def _coerce_container(value: Any, annotation: Any, where: str) -> Any:
    """A nested dataclass, a list or tuple (each item coerced), or a dict."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{where}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return dict(value)


def _coerce_scalar(value: Any, annotation: Any, where: str) -> Any:
    """bool, float, int or str; any other annotation (``Any`` included) takes the value as it is."""
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is float:
        number = _number(value)
        if number is not None:
            return number
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _number(value)  # 1e3 or 1000.0 where an integer is meant, but never 2.5 rounded
        if number is not None and number.is_integer():
            return int(number)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; missing keys keep their defaults, unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key_error(cls, key, list(fields), prefix)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict; values are parsed as YAML (``1e-4``, ``true``, ``[1,2]``). A
    mapping merges into the one it lands on, as a base's does (``optim={lr: 1e-4}`` changes the rate and keeps the
    recipe's steps and warm-up: replaced whole, the section fell back to the defaults, a 1,000-step run)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({_problem(err)})") from None
        node[parts[-1]] = merge(node.get(parts[-1]), value)
    return data


def _problem(err: yaml.YAMLError) -> str:
    return getattr(err, "problem", None) or str(err).splitlines()[0]


def _read_yaml(path: Path) -> dict[str, Any]:
    """One YAML file as a mapping; a syntax error is one line with the file, line and column."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {_problem(err)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level of a config must be a mapping")
    return loaded or {}


# Composition: any mapping of a config file may name, under this key, a YAML file (relative to the file that names
# it) whose mapping it extends: ``base: cavmae_finetune_as20k.yaml`` at the top of a recipe, or
# ``model: {base: model/cavmae_base.yaml}`` for one section. Bases chain; the keys written beside ``base`` win,
# mappings merge key by key, anything else (lists, numbers) is replaced whole.
BASE_KEY = "base"


def merge(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merge recursively, every other value of ``over`` replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = merge(base.get(key), value)
        return merged
    return over


def _with_bases(node: dict[str, Any], path: Path, chain: tuple[Path, ...], where: str) -> dict[str, Any]:
    resolved: dict[str, Any] = {}
    if BASE_KEY in node:
        ref = node[BASE_KEY]
        if not isinstance(ref, str) or not ref.strip():
            raise ConfigError(f"{path}: {where}{BASE_KEY} must name a YAML file, got {ref!r}")
        target = path.parent / ref
        shipped = None if target.is_file() else _shipped_name(ref)
        if shipped is not None:  # a user's recipe extending a shipped one by its name
            target = shipped_dir() / f"{shipped}{SHIPPED_SUFFIX}"
        if not target.is_file():
            raise ConfigError(f"{path}: {where}{BASE_KEY}: no such file {target}")
        resolved = _resolve_file(target, chain)
    for key, value in node.items():
        if key == BASE_KEY:
            continue
        if isinstance(value, dict):
            value = _with_bases(value, path, chain, f"{where}{key}.")
        resolved[key] = merge(resolved.get(key), value)
    return resolved


def _resolve_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    real = path.resolve()
    if real in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(real):], real))
        raise ConfigError(f"{path}: the bases form a cycle: {cycle}")
    return _with_bases(_read_yaml(path), path, (*chain, real), "")


# --- The configs that ship inside the package -------------------------------------------------------------------
# avmae/configs holds YAML only, so it is package data of ``avmae`` (pyproject.toml), not a package of its own.
# importlib.resources finds it wherever the package is installed: a checkout, an editable install or a wheel in
# site-packages (Path(__file__)-relative paths to the checkout's folders break once installed without -e).
SHIPPED_SUFFIX = ".yaml"


def shipped_dir() -> Path:
    """The folder of the shipped recipes and model configs (``avmae/configs`` of the imported package)."""
    return Path(str(importlib.resources.files("avmae").joinpath("configs")))


def shipped_names() -> list[str]:
    """Every shipped config's name: its path below ``avmae/configs`` without ``.yaml`` (``pretrain_as2m``,
    ``model/tiny``)."""
    root = shipped_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SHIPPED_SUFFIX}"))


def _shipped_name(ref: str | Path) -> str | None:
    """The shipped config ``ref`` names, if any: ``pretrain_as2m``, ``pretrain_as2m.yaml``, ``model/tiny`` or the
    checkout's spelling ``configs/pretrain_as2m.yaml`` (the README's, and the top-level link's)."""
    path = Path(ref)
    if path.is_absolute():
        return None
    name = path.as_posix().removeprefix("configs/")
    name = name.removesuffix(SHIPPED_SUFFIX)
    return name if name in shipped_names() else None


def find_config(ref: str | Path) -> Path:
    """The file a ``--config`` means: ``ref`` itself when it exists, else the shipped config of that name; neither is
    one line listing the shipped names."""
    path = Path(ref)
    if path.exists():
        return path
    name = _shipped_name(ref)
    if name is not None:
        return shipped_dir() / f"{name}{SHIPPED_SUFFIX}"
    raise ConfigError(f"{ref}: no such config file, and no shipped config of that name (shipped: "
                      f"{', '.join(shipped_names())})")


def read(path: str | Path) -> dict[str, Any]:
    """The mapping of a config file (a path or a shipped config's name: ``find_config``) with every ``base`` it names
    (and theirs) merged in."""
    return _resolve_file(find_config(path), ())


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Config of type ``cls`` from an optional YAML file (its bases resolved) plus overrides, applied last."""
    data = read(path) if path is not None else {}
    apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{path or 'config'}: {err}") from None


def dump(obj: Any, path: str | Path) -> None:
    """Write a dataclass config as YAML (the resolved config saved beside a run's outputs)."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
