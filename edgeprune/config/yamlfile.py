"""Read YAML and validate it with pydantic, reporting errors as ``file:line: field: why``.

PyYAML's composer keeps the source position of every node; we walk the node tree along
the pydantic error location to find the line of the offending field. One line per
problem, so a user can jump straight to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgeprune.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def _locate(node: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[yaml.Node | None, tuple[Any, ...]]:
    """Follow ``loc`` (a pydantic error location) through a composed YAML node tree.

    Returns the deepest node found and the part of ``loc`` that matched real keys: the
    rest are pydantic's union-branch tags (``int``, ``literal['auto']``), not fields.
    """
    matched: list[Any] = []
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == str(key)), None)
            if nxt is None:
                # a missing or unknown field: the mapping that should hold it, if the
                # key is not in the file; the key itself if it is (extra field)
                kn = next((k for k, _ in node.value if k.value == str(key)), None)
                return (kn or node), tuple(matched) + (key,) if isinstance(key, str) and not _is_tag(key) else tuple(matched)
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return node, tuple(matched)
        matched.append(key)
    return node, tuple(matched)


def _is_tag(key: str) -> bool:
    return key in ("int", "float", "str", "bool", "list", "dict", "none") or "[" in key or "-" in key


def read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """Parse ``path``; a syntax error becomes a ConfigError with file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
    return data, node


def validate(model: type[M], data: Any, path: Path, node: yaml.Node | None, prefix: tuple[Any, ...] = ()) -> M:
    """Validate ``data`` against ``model``; errors name file, line and dotted field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        grouped: dict[tuple[Any, ...], tuple[str, list[str]]] = {}
        for err in exc.errors():
            n, loc = _locate(node, prefix + tuple(err["loc"]))
            where = f"{path}:{n.start_mark.line + 1}" if n is not None else str(path)
            msg = err["msg"].replace("Value error, ", "")
            grouped.setdefault(loc, (where, []))[1].append(msg)
        lines = []
        for loc, (where, msgs) in grouped.items():
            field = ".".join(str(p) for p in loc) or "(top level)"
            lines.append(f"{where}: field '{field}': {' or '.join(dict.fromkeys(msgs))}")
        raise ConfigError("; ".join(lines)) from None


def load_model_file(model: type[M], path: Path) -> M:
    data, node = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: file is empty")
    return validate(model, data, path, node)
