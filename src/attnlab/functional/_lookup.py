"""The one name lookup behind ``resolve_score`` and ``resolve_normalizer``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

_Fn = TypeVar("_Fn", bound=Callable)


def resolve_by_name(
    value: str | _Fn, kind: str, argument: str, functions: Mapping[str, _Fn], modules: Mapping[str, str], signature: str
) -> _Fn:
    """``value`` if it is callable, else ``functions[value]``; a module's name or an unknown name raises.

    Args:
        value: a name or a callable.
        kind: what is looked up, for messages (``"score"``, ``"normalizer"``).
        argument: the keyword that takes it (``score``, ``normalize``), for messages.
        functions: the parameter-free parts by name.
        modules: names of parts with learned weights -> their module class names.
        signature: the callable's signature, for messages, e.g. ``"(query, key) -> scores"``.

    Raises:
        ValueError: ``value`` names a module (the message says which to build) or nothing
            (the message lists the names).
    """
    if callable(value):
        return value
    if value in functions:
        return functions[value]
    if value in modules:
        raise ValueError(
            f"{kind} {value!r} has learned weights: pass a module, e.g. {argument}={modules[value]}(...), "
            f"or use MultiHeadAttention({argument}={value!r}), which builds one"
        )
    known = sorted([*functions, *modules])
    raise ValueError(f"unknown {kind} {value!r}; expected one of {known} or a callable {signature}")
