"""Strict YAML configuration on dataclasses: every key is known, every value has its declared type.

A schema is a (possibly nested) dataclass; :func:`load_config` builds it from a YAML file or a dict and fails
early, naming the full dotted key, on unknown keys (with a "did you mean"), wrong types and missing required
keys. :func:`dump_config` writes the resolved configuration beside a run's outputs so the folder records
exactly what ran; loading that file with the same schema gives an equal object.

Supported field types: ``bool, int, float, str, pathlib.Path``, nested dataclasses, ``X | None``,
``Literal[...]``, ``list[T]``, ``tuple[T, ...]`` and ``tuple[A, B]`` (given as YAML lists), ``dict`` and
``dict[str, T]``, ``typing.Any``. An int is accepted where a float is expected, and so is a string such as
``"1e-3"``: PyYAML reads ``1e-3`` (no dot) as a string under YAML 1.1.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from molscore.files import write_text_atomic

T = TypeVar("T")

__all__ = ["ConfigError", "dump_config", "load_config"]


class ConfigError(ValueError):
    """A configuration does not match its schema; the message names the key and the fix."""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("pathlib.", "")


def _fail(key: str, where: str, msg: str) -> typing.NoReturn:
    raise ConfigError(f"config key '{key}'{where}: {msg}")


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (lists to tuples, ...)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    got = f"got {value!r} ({type(value).__name__})"

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and value is not None:  # X | None: the error about X is the useful one
            return _convert(value, options[0], key, where)
        for arg in options:
            try:
                return _convert(value, arg, key, where)
            except ConfigError:
                pass
        _fail(key, where, f"expected {_type_name(tp)}, {got}")
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return value
        hint = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        _fail(key, where, f"expected one of {list(args)}, {got}{extra}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            _fail(key, where, f"expected a mapping of {tp.__name__} fields, {got}")
        return _build(tp, value, key, where)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(key, where, f"expected bool (true/false), {got}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, where, f"expected int, {got}")
        return value
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        _fail(key, where, f"expected float, {got}")
    if tp is str:
        if not isinstance(value, str):
            _fail(key, where, f"expected str, {got} (quote it in YAML if it is meant as text)")
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            _fail(key, where, f"expected a path (str), {got}")
        return Path(value)
    if tp is list or origin is list:
        if not isinstance(value, list | tuple):
            _fail(key, where, f"expected a list ({_type_name(tp)}), {got}")
        if not args:
            return list(value)
        return [_convert(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is tuple or origin is tuple:
        if not isinstance(value, list | tuple):
            _fail(key, where, f"expected a list ({_type_name(tp)}), {got}")
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value))
        if len(value) != len(args):
            _fail(key, where, f"expected {len(args)} items ({_type_name(tp)}), got {len(value)}: {value!r}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_convert(v, a, f"{key}[{i}]", where) for i, (v, a) in pairs)
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            _fail(key, where, f"expected a mapping ({_type_name(tp)}), {got}")
        if not args:
            return dict(value)
        return {
            _convert(k, args[0], f"{key}.{k}", where): _convert(v, args[1], f"{key}.{k}", where) for k, v in value.items()
        }
    if isinstance(tp, type):
        if not isinstance(value, tp):
            _fail(key, where, f"expected {_type_name(tp)}, {got}")
        return value
    raise TypeError(f"config schema field '{key}' has an unsupported type {tp!r}; use one listed in molscore.config")


def _build(schema: type[T], data: Mapping, prefix: str, where: str) -> T:
    """Build dataclass ``schema`` from mapping ``data``; ``prefix`` is the dotted key of ``data``."""
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    hints = typing.get_type_hints(schema)
    dotted = (lambda name: f"{prefix}.{name}") if prefix else (lambda name: name)
    section = f"'{prefix}'" if prefix else "the top level"

    for name in data:
        if name not in fields:
            hint = difflib.get_close_matches(str(name), list(fields), n=1)
            extra = f"; did you mean '{dotted(hint[0])}'?" if hint else ""
            raise ConfigError(
                f"unknown config key '{dotted(name)}'{where}; allowed keys of {section}: "
                f"{', '.join(fields) or '(none)'}{extra}"
            )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], dotted(name), where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{dotted(name)}'{where} ({_type_name(hints[name])}); add it")
    try:
        return schema(**kwargs)
    except (ValueError, TypeError) as err:  # the schema's own __post_init__ checks
        raise ConfigError(f"invalid config section {section}{where}: {err}") from err


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_config(source: str | os.PathLike | Mapping, schema: type[T]) -> T:
    """Read a YAML file (or take a dict) and build the dataclass ``schema`` from it, strictly.

    Parameters
    ----------
    source : str, path or mapping
        Path of a YAML file (read with a ``yaml.SafeLoader`` that rejects duplicate keys; an empty file is ``{}``)
        or an already parsed dict.
    schema : dataclass type
        The (possibly nested) dataclass to build; fields without defaults are required keys.

    Returns
    -------
    schema instance

    Raises
    ------
    FileNotFoundError
        ``source`` is a path that does not exist.
    ConfigError
        Unknown key, wrong type, missing required key, or the schema's own validation failed; the message
        names the dotted key and the file.
    """
    if not (dataclasses.is_dataclass(schema) and isinstance(schema, type)):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    if isinstance(source, Mapping):
        data, where = source, ""
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: '{path}' (resolved: '{path.resolve()}')")
        where = f" in {path}"
        try:
            data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
        data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"config{where} must be a mapping of keys to values, got {type(data).__name__}")
    return _build(schema, data, "", where)


def _plain(value: Any) -> Any:
    """Dataclass fields to YAML-safe builtins: tuples to lists, paths to str."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dump_config(config: Any, path: str | os.PathLike) -> Path:
    """Write the resolved ``config`` (a dataclass instance) as YAML to ``path``, atomically.

    Keys keep the schema's field order. The file loads back with :func:`load_config` into an equal object.

    Returns
    -------
    Path
        The written file.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"dump_config needs a dataclass instance, got {type(config).__name__}")
    from molscore import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# resolved {type(config).__name__}, molscore {__version__}\n"
    text += yaml.safe_dump(_plain(dataclasses.asdict(config)), sort_keys=False, default_flow_style=None)
    return write_text_atomic(path, text)
