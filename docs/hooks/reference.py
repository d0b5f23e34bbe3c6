"""MkDocs hook: the command-line and config reference, generated from the code at build time.

``docs/site/cli.md`` (and ``cli.ja.md``) hold two markers; this hook replaces them when MkDocs
reads the page, so the reference cannot drift from the code:

- ``<!-- cli-reference -->``: every subcommand of ``attnlab.cli.main.build_parser()`` (nested
  ones such as ``data prepare`` included) with its usage and one row per argument;
- ``<!-- config-reference -->``: every key of a run config, read from the config dataclasses
  (``RunConfig``, ``TrainingConfig``, the data sections and each model type's config), with its
  type, default and the description from the dataclass's ``Attributes:`` docstring.

The same functions are called by ``tests/docs/test_site.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from collections.abc import Iterator
from typing import Any

CLI_MARKER = "<!-- cli-reference -->"
CONFIG_MARKER = "<!-- config-reference -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: fill the markers of any page that holds them."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference())
    return markdown


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser, prefix: str = "attnlab") -> Iterator[tuple[str, Any, str]]:
    """``(full command, parser, help)`` for every leaf subcommand, depth first, in parser order."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, child in action.choices.items():
            command = f"{prefix} {name}"
            nested = any(isinstance(a, argparse._SubParsersAction) for a in child._actions)
            if nested:
                yield from subcommands(child, command)
            else:
                yield command, child, helps.get(name, "")


def cli_reference() -> str:
    """Markdown: one section per subcommand of ``attnlab`` (usage, help, a table of arguments)."""
    from attnlab.cli.main import build_parser

    parser = build_parser()
    parts = [_usage_block(parser), _argument_table(parser)]
    for command, child, help_text in subcommands(parser):
        parts += [f"### `{command}`", _escape(help_text) if help_text else "", _usage_block(child)]
        parts.append(_argument_table(child))
    return "\n\n".join(part for part in parts if part) + "\n"


def _usage_block(parser: argparse.ArgumentParser) -> str:
    """The usage line as argparse wraps it, at a fixed width (not the terminal's)."""
    formatter = argparse.HelpFormatter(parser.prog, width=90)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return f"```text\n{formatter.format_help().strip()}\n```"


def _argument_table(parser: argparse.ArgumentParser) -> str:
    rows = [_argument_row(a) for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]
    rows = [row for row in rows if row]
    if not rows:
        return ""
    return "\n".join(["| argument | default | what it does |", "|---|---|---|", *rows])


def _argument_row(action: argparse.Action) -> str:
    if isinstance(action, argparse._HelpAction) or action.default is argparse.SUPPRESS:
        return ""  # -h, and the copies of the global options that every subcommand carries
    name = ", ".join(action.option_strings) if action.option_strings else (action.metavar or action.dest)
    if action.option_strings and action.nargs != 0:
        name += f" {action.metavar or action.dest.upper()}"
    help_text = action.help or ""
    if action.choices and not isinstance(action.choices, dict):
        help_text = f"{help_text} (one of: {', '.join(map(str, action.choices))})".strip()
    default = action.default
    shown = "" if default in (None, False, (), [], argparse.SUPPRESS) else f"`{default}`"
    return f"| `{_escape(name)}` | {_escape(shown)} | {_escape(help_text)} |"


# ---------------------------------------------------------------------------------------------
# Run configs
# ---------------------------------------------------------------------------------------------


def config_sections() -> list[tuple[str, str, type]]:
    """``(dotted key, when it applies, dataclass)`` for every section of a run config, nested ones included."""
    from attnlab.models.registry import MODEL_REGISTRY
    from attnlab.training.config import RunConfig, TrainingConfig
    from attnlab.training.data_config import ImageDataConfig, TextDataConfig

    sections = [("", "", RunConfig), ("training", "", TrainingConfig)]
    sections += _with_nested("data", "task: classification", ImageDataConfig)
    sections += _with_nested("data", "task: translation", TextDataConfig)
    sections += [("model", f"type: {kind}", entry.config_class) for kind, entry in MODEL_REGISTRY.items()]
    return sections


def config_reference() -> str:
    """Markdown: one table per config section: key, type, default, description."""
    from attnlab.models.registry import MODEL_REGISTRY

    parts = []
    for key, when, cls in config_sections():
        parts.append(f"### `{key or 'top level'}`" + (f" ({when})" if when else ""))
        parts.append(f"`{cls.__module__}.{cls.__qualname__}`")
        if key == "model":
            presets = sorted(MODEL_REGISTRY[when.removeprefix("type: ")].presets)
            parts.append("presets (`model.preset`): " + (", ".join(f"`{p}`" for p in presets) or "none"))
        parts.append(_field_table(cls))
    return "\n\n".join(parts) + "\n"


def _with_nested(key: str, when: str, cls: type) -> list[tuple[str, str, type]]:
    """``cls`` and every dataclass-typed field below it, as ``key.field``."""
    found = [(key, when, cls)]
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            found += _with_nested(f"{key}.{field.name}", when, hints[field.name])
    return found


def _field_table(cls: type) -> str:
    hints = typing.get_type_hints(cls)
    described = attribute_docs(cls)
    rows = ["| key | type | default | what it sets |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        kind = "section" if dataclasses.is_dataclass(hint) else _type_name(hint)
        rows.append(
            f"| `{field.name}` | {_escape(kind)} | {_escape(_default(field))} | "
            f"{_escape(described.get(field.name, ''))} |"
        )
    return "\n".join(rows)


def attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style class docstring, as ``{name: one-line text}``."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Attributes:\n((?:[ \t]+.*\n?|\n)*)", doc, flags=re.MULTILINE)
    if not match:
        return {}
    entries: dict[str, str] = {}
    current = None
    for line in match.group(1).splitlines():
        head = re.match(r"^    (\w+)(?: \([^)]*\))?: ?(.*)$", line)
        if head:
            current = head.group(1)
            entries[current] = head.group(2).strip()
        elif current and line.strip():
            entries[current] += " " + line.strip()
    return {name: _plain_roles(text) for name, text in entries.items()}


def _plain_roles(text: str) -> str:
    """Sphinx roles (``:class:`~a.B` ``) as code spans, which Markdown renders."""
    return re.sub(r":\w+:`~?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", text).replace("``", "`")


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        return "(section)" if dataclasses.is_dataclass(value) else f"`{value!r}`"
    return "required"


def _type_name(hint: Any) -> str:
    """``int | None``, ``tuple[float, ...]``, ``ImageDataConfig | TextDataConfig``: module paths dropped."""
    text = hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint)
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+(\w+)", r"\1", text)


def _escape(text: str) -> str:
    """A table cell: pipes escaped, no line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")
