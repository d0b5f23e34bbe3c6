"""attnlab.config: the one reader of config dataclasses."""

import json
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from attnlab.config import ConfigError, ConfigMixin, ConfigTypeError, UnknownKeyError, load_yaml, read_dataclass


@dataclass
class Inner:
    rate: float = 0.1
    sizes: tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    limit: int | None = None

    def __post_init__(self):
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit ({self.limit}) must be >= 0")


def test_yaml_reads_exponents_without_a_dot_as_floats():
    assert load_yaml("lr: 3e-4\nn: 10\ns: '3e-4'") == {"lr": 3e-4, "n": 10, "s": "3e-4"}


def test_nested_values_are_typed_and_converted():
    config = read_dataclass(Outer, {"inner": {"rate": 1, "sizes": [3, 4]}, "limit": None})
    assert config == Outer(inner=Inner(rate=1.0, sizes=(3, 4)))
    assert isinstance(config.inner.rate, float)


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ({"inner": {"rat": 1.0}}, UnknownKeyError, "unknown config key outer.inner.rat; known keys: rate, sizes"),
        ({"inner": {"rate": "fast"}}, ConfigTypeError, "outer.inner.rate: expected float, got str 'fast'"),
        ({"limit": True}, ConfigTypeError, "outer.limit"),
        ({"limit": -1}, ConfigError, r"limit \(-1\) must be >= 0"),
    ],
)
def test_errors_name_the_dotted_key(values, error, message):
    with pytest.raises(error, match=message):
        read_dataclass(Outer, values, "outer")


def test_error_classes_keep_the_builtin_kinds():
    assert issubclass(UnknownKeyError, KeyError) and issubclass(ConfigTypeError, TypeError)
    assert str(UnknownKeyError("unknown config key a")) == "unknown config key a"  # not quoted like KeyError


@dataclass
class Sized(ConfigMixin):
    width: int
    sizes: tuple[int, ...] = (1, 2)
    rate: float = 0.5

    presets: ClassVar = {"narrow": {"width": 4}, "wide": {"width": 64, "sizes": (8, 8)}}


def test_mixin_to_dict_is_plain_and_reads_back():
    config = Sized(width=3, sizes=(5, 6))
    assert config.to_dict() == {"width": 3, "sizes": [5, 6], "rate": 0.5}
    assert Sized.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_mixin_from_dict_names_the_bad_key():
    with pytest.raises(UnknownKeyError, match="unknown config key widht; known keys: rate, sizes, width"):
        Sized.from_dict({"widht": 3})
    with pytest.raises(ConfigTypeError, match="rate: expected float, got str '0.1'"):
        Sized.from_dict({"width": 3, "rate": "0.1"})


def test_mixin_presets_take_overrides_and_list_names():
    assert Sized.from_preset("wide", rate=1) == Sized(width=64, sizes=(8, 8), rate=1.0)
    assert Sized.from_preset("narrow", width=5).width == 5
    with pytest.raises(UnknownKeyError, match=r"unknown preset 'medium'; expected one of \['narrow', 'wide'\]"):
        Sized.from_preset("medium")


def test_mixin_without_presets_knows_none():
    @dataclass
    class Bare(ConfigMixin):
        width: int = 1

    with pytest.raises(UnknownKeyError, match=r"expected one of \[\]"):
        Bare.from_preset("any")
