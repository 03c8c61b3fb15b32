"""``docs/configuration.md``, rendered from the model: every section, every key with its
type, default and help text.

``make docs`` (``python -m casa.config.reference > docs/configuration.md``) writes it;
``tests/test_configuration_reference.py`` fails when the file and the model differ.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

from casa.config.load import REPLACED_KEYS
from casa.config.model import SECTIONS

INTRO = """\
# casa.toml reference

<!-- Generated from the model in src/casa/config/model.py by `make docs`: do not edit by hand. -->

casa reads one file, `casa.toml`: `$CASA_HOME/casa.toml`, or the file given with
`casa --config FILE`. Without one, every key has its default. The file is validated as a
whole: every unknown section or key and every bad value is reported at once, each by its
dotted key (such as `gateway.scheduler_port`). Sizes are written as a number with `k`, `m`,
`g` or `t`, such as `"512k"` or `"8g"`. What the services do with these settings is
explained in [facility.md](facility.md) and, for a site of several hosts,
[deployment.md](deployment.md).
"""

_TYPES = {"int": "integer", "float": "number", "str": "string", "list": "list of strings"}


def _toml(value: Any) -> str:
    """``value`` as written in casa.toml."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _markdown(text: str) -> str:
    """A docstring's reStructuredText literals and roles as Markdown."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _describe(doc: str, name: str) -> str:
    """A section's docstring without the ``[name]``: its heading already says."""
    doc = inspect.cleandoc(doc).removeprefix(f"``[{name}]``: ")
    return _markdown(doc[:1].upper() + doc[1:])


def render_section(name: str, cls: type) -> str:
    """One section: its heading, its docstring, and a table of its keys."""
    lines = [f"## `[{name}]`", "", _describe(cls.__doc__ or "", name), ""]
    lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        kind = _TYPES[f.type]
        choices = f.metadata.get("choices")
        if choices:
            kind = " \\| ".join(f"`{_toml(c)}`" for c in choices)
        default = f"`{_toml(_default(f))}`"
        lines.append(f"| `{name}.{f.name}` | {kind} | {default} | {_cell(f.metadata['help'])} |")
    return "\n".join(lines) + "\n"


def render_reference() -> str:
    """The whole of ``docs/configuration.md``."""
    parts = [INTRO]
    parts += [render_section(name, cls) for name, cls in SECTIONS.items()]
    replaced = ["## Replaced keys", ""]
    replaced.append("A file that still has one of these keys is refused with what to write now:")
    replaced.append("")
    for key, explain in REPLACED_KEYS.items():
        doc = " ".join(inspect.cleandoc(explain.__doc__ or "").split())
        replaced.append(f"- `{key}`: {_markdown(doc)}")
    parts.append("\n".join(replaced) + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render_reference(), end="")
