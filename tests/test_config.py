"""attnlab.config: the one reader of config dataclasses."""

from dataclasses import dataclass, field

import pytest

from attnlab.config import ConfigError, ConfigTypeError, UnknownKeyError, load_yaml, read_dataclass


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
