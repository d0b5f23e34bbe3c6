"""Config dataclasses from plain values (YAML): every key checked, every error naming its key.

One reader for every config in attnlab (models, data, runs): an unknown key fails with its dotted
path and the known keys, a wrong type names the key, the value and the expected type, and the
dataclass's own checks (``__post_init__``) surface as :class:`ConfigError` too.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

__all__ = [
    "ConfigError",
    "ConfigMixin",
    "ConfigTypeError",
    "UnknownKeyError",
    "check_keys",
    "coerce",
    "load_yaml",
    "load_yaml_mapping",
    "preset",
    "read_dataclass",
    "to_plain",
]

_Config = TypeVar("_Config", bound="ConfigMixin")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the dotted key and the value."""


class UnknownKeyError(ConfigError, KeyError):
    """A key the config dataclass does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigTypeError(ConfigError, TypeError):
    """A value of the wrong type for its key."""


class DuplicateKeyError(ConfigError, yaml.YAMLError):
    """A key written twice in one YAML mapping (YAML 1.2 forbids it; PyYAML keeps the last silently)."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, plus YAML 1.2 floats (``3e-4`` is a float) and no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with "<<" may be overridden, as YAML intends
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(
                    f"duplicate key {key!r} on line {line} (first on line {seen[key]}); keep one of them"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also reads exponents without a dot (``1e-3``) as floats."""
    return yaml.load(text, Loader=_Loader)


def load_yaml_mapping(data: bytes, source: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``data`` (the bytes of file ``source``); an empty file is ``{}``.

    Raises:
        ConfigError: one line naming ``source``: not UTF-8, not valid YAML, a duplicate key (with
            its line), or a top-level list or scalar where a mapping of sections is expected.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(
            f"config {source}:{line} is not UTF-8 (byte 0x{data[error.start]:02x}); convert it, "
            f"e.g. iconv -f LATIN1 -t UTF-8 {source} > {source}.utf8"
        ) from error
    try:
        values = load_yaml(text)
    except DuplicateKeyError as error:
        raise ConfigError(f"config {source}: {error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"config {source} is not valid YAML: {' '.join(str(error).split())}") from error
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"config {source} must hold a mapping of sections (key: value lines), "
            f"got a top-level {type(values).__name__}: {values!r:.60}"
        )
    return dict(values)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against the type ``hint`` (ints pass for floats, lists for tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise _type_error(key, value, hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _type_error(key, value, hint)
        return read_dataclass(hint, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, hint)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise _type_error(key, value, hint)
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        items = [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, value, hint)
        return dict(value)
    return _coerce_scalar(value, hint, key)


def _coerce_scalar(value: Any, hint: Any, key: str) -> Any:
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, hint)
    if isinstance(hint, type) and isinstance(value, hint) and not isinstance(value, bool):
        return value
    raise _type_error(key, value, hint)


def _type_error(key: str, value: Any, hint: Any) -> ConfigError:
    return ConfigTypeError(f"{key}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")


def check_keys(known: Sequence[str], values: Mapping[str, Any], prefix: str, what: str = "") -> None:
    """Raise :class:`UnknownKeyError` for the first key of ``values`` not in ``known``."""
    for key in values:
        if key not in known:
            where = f" ({what})" if what else ""
            raise UnknownKeyError(f"unknown config key {prefix}{key}{where}; known keys: {', '.join(sorted(known))}")


def read_dataclass(cls: type, values: Mapping[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from ``values``, checking keys and types; errors name ``path.key``."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(values).__name__} {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    check_keys(list(fields), values, prefix)
    kwargs = {key: coerce(value, hints[key], prefix + key) for key, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(_name_the_key(str(error), list(fields), path or cls.__name__)) from error


def _name_the_key(message: str, names: Sequence[str], path: str) -> str:
    """``"{path}.{message}"`` when ``message`` starts with a field name (``data.corpus.size (-5) must
    be >= 1``, ``model.score: unknown score 'foo'``), so that the key reads as the user wrote it;
    ``"{path}: {message}"`` otherwise."""
    if any(message.startswith((f"{name} ", f"{name}: ")) for name in names):
        return f"{path}.{message}"
    return f"{path}: {message}"


def to_plain(value: Any) -> Any:
    """Dataclasses, tuples and paths as YAML-safe dicts, lists and strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def preset(presets: Mapping[str, Mapping[str, Any]], name: str, **overrides: Any) -> dict[str, Any]:
    """The values of preset ``name`` with ``overrides`` on top; an unknown name lists the known ones."""
    if name not in presets:
        raise UnknownKeyError(f"unknown preset {name!r}; expected one of {sorted(presets)}")
    return {**presets[name], **overrides}


class ConfigMixin:
    """``from_dict``, ``to_dict`` and ``from_preset`` for a config dataclass, over :func:`read_dataclass`.

    A subclass names its presets in the class-level ``presets`` mapping (name -> field values);
    without one, every preset name is unknown.
    """

    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    @classmethod
    def from_dict(cls: type[_Config], values: Mapping[str, Any]) -> _Config:
        """A config from plain values (e.g. a YAML section).

        Raises:
            UnknownKeyError: a key that is not a field (also a ``KeyError``), naming it and the known keys.
            ConfigTypeError: a value of the wrong type (also a ``TypeError``), naming the key and the value.
            ConfigError: the dataclass's own checks failed (also a ``ValueError``).
        """
        return read_dataclass(cls, values)

    @classmethod
    def from_preset(cls: type[_Config], name: str, **overrides: Any) -> _Config:
        """Preset ``name`` of ``cls.presets`` with ``overrides`` on top, read by :meth:`from_dict`.

        Raises:
            UnknownKeyError: ``name`` is not a preset; the message lists the presets.
        """
        return cls.from_dict(preset(cls.presets, name, **overrides))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples) that YAML and JSON write and :meth:`from_dict` reads back."""
        return to_plain(self)
