"""The run config's keys as a Markdown reference, generated from the dataclasses themselves so that it cannot
drift from them: ``python -m avmae.config_reference > docs/config_reference.md``.

Every field of ``RunConfig`` and of the dataclasses it nests becomes one row (dotted key, type, default, help). The
help is the field's own comment in the source: the comment lines right above it and the comment at the end of its
line; a section's introduction is its dataclass's docstring."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing

from avmae.recipe.config import RunConfig

REGENERATE = "python -m avmae.config_reference > docs/config_reference.md"


def field_comments(cls: type) -> dict[str, str]:
    """Each field of ``cls`` -> its comment in the class's source (the block above it, then its trailing one)."""
    lines, _ = inspect.getsourcelines(cls)
    source = textwrap.dedent("".join(lines))
    comments: dict[int, str] = {}  # line number (1-based) -> comment text
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                                tokenize.ENDMARKER):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    class_node = ast.parse(source).body[0]
    found = {}
    for node in class_node.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        line = node.lineno - 1
        while line in comments and line not in code_lines:  # a comment-only line right above the field
            above.insert(0, comments[line])
            line -= 1
        trailing = [comments[node.end_lineno]] if node.end_lineno in comments else []
        found[node.target.id] = " ".join(above + trailing)
    return found


def type_name(hint: object) -> str:
    """A type hint as a reader writes it in YAML terms: ``"a" | "b"``, ``int | None``, ``tuple[float, ...]``."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return " | ".join(f'"{value}"' if isinstance(value, str) else repr(value) for value in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(hint))
    if origin is not None:
        args = ", ".join("..." if arg is Ellipsis else type_name(arg) for arg in typing.get_args(hint))
        return f"{origin.__name__}[{args}]" if args else origin.__name__
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(repr(item) for item in value) + "]"
    return repr(value)


def cell(text: str) -> str:
    """Text safe inside one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def sections(cls: type, prefix: str = "") -> list[tuple[str, type, list[tuple[str, str, str, str]]]]:
    """(section key, dataclass, rows of key/type/default/help) for ``cls`` and, after it, every dataclass it nests."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    rows, nested = [], []
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            # mkdocs' heading anchors drop the dots: "## model.encoder" is #modelencoder
            rows.append((key, hint.__name__, f"see [{key}](#{key.replace('.', '')})", comments[field.name]))
            nested.extend(sections(hint, f"{key}."))
        else:
            rows.append((key, type_name(hint), f"`{cell(default_text(field))}`", comments[field.name]))
    return [(prefix.rstrip("."), cls, rows)] + nested


def reference() -> str:
    out = ["# Config reference", "",
           "<!-- Generated from the config dataclasses; do not edit. Regenerate with:",
           f"     {REGENERATE} -->", "",
           "Every key of a run config (`avmae-train --config`, `--set key=value`), with its type, its default and what "
           "it does. A recipe states only the keys that differ from these defaults. Types: `\"a\" | \"b\"` is one of "
           "those strings, `null` in YAML is Python's `None`, a tuple is a YAML list. Keys are nested sections in "
           "YAML (`model: {encoder: {size: large}}`) and dotted with `--set` (`model.encoder.size=large`).", ""]
    for name, cls, rows in sections(RunConfig):
        title = name or "top level"
        out += [f"## {title}", ""]
        doc = inspect.getdoc(cls)
        if doc and not doc.startswith(f"{cls.__name__}("):  # dataclasses invent a signature docstring
            out += [" ".join(doc.split()), ""]
        out += [f"`{cls.__module__}.{cls.__name__}`", "", "| key | type | default | help |", "|---|---|---|---|"]
        out += [f"| `{key}` | `{cell(kind)}` | {default} | {cell(help_text) or '–'} |"
                for key, kind, default, help_text in rows]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference(), end="")
