"""YAML files a user writes (job specs, platform profiles), loaded so errors can name the line.

``load(path)`` returns plain dicts and lists, except that every mapping is a :class:`Node` that
remembers the line of each key. ``Checker`` turns a mapping into checked values and raises
:class:`ConfigError` with ``file:line: where: field 'x': expected Y, got Z``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import GwiError, cut


class ConfigError(GwiError, ValueError):
    """A spec or profile is invalid; the message names the file, line, owner and field."""


class Node(dict):
    """A YAML mapping that knows where it and each of its keys are (1-based lines)."""

    line: int = 0
    key_lines: dict

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Node:
    loader.flatten_mapping(node)
    out = Node()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for k_node, v_node in node.value:
        key = loader.construct_object(k_node, deep=True)
        if key in out:
            raise ConfigError(f"{loader.name}:{k_node.start_mark.line + 1}: duplicate key {quote(key)}")
        out[key] = loader.construct_object(v_node, deep=True)
        out.key_lines[key] = k_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# PyYAML follows YAML 1.1, where 3e-3 (no dot) is a string; YAML 1.2 and every user read it as a number
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def load(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    return loads(text, str(path))


# A plan or profile is a page of YAML. The bounds stop a few hundred bytes of nested aliases (a
# "billion laughs") from expanding into gigabytes in whatever walks the values afterwards.
MAX_BYTES = 1_000_000
MAX_VALUES = 100_000


def loads(text: str, name: str = "<string>") -> Any:
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{name}: {len(text):,} characters; a plan or profile is at most {MAX_BYTES:,}")
    loader = _Loader(text)
    loader.name = name
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node)
        if n > MAX_VALUES:
            raise ConfigError(f"{name}: expands to more than {MAX_VALUES:,} values (aliases of aliases?); "
                              "write the values out or use fewer aliases")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 0
        raise ConfigError(f"{name}:{line}: invalid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: invalid YAML: {e}") from None
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node) -> int:
    """How many values ``root`` stands for once every alias is written out, counted once per
    distinct node (aliases share nodes), stopping as soon as the count passes the bound."""
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = [k for pair in node.value for k in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        if children_done:
            sizes[id(node)] = min(1 + sum(sizes[id(k)] for k in kids), MAX_VALUES + 1)
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def quote(v: Any, limit: int = 80) -> str:
    """``repr(v)`` for an error message, cut to ``limit`` characters: a message names the value, it
    does not reprint a list of a million items."""
    return cut(repr(v), limit)


def type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            Node: "a mapping", dict: "a mapping"}.get(type(v), type(v).__name__)


def closest(word: str, options: Iterable[str]) -> str:
    m = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {quote(m[0])}?)" if m else ""


class Checker:
    """Checks the fields of one mapping; every error names ``file:line: owner: field``."""

    def __init__(self, file: str, node: Any, owner: str, parent: "Checker | None" = None, key: str | None = None):
        self.file, self.owner = file, owner
        line = parent.line(key) if parent is not None and key is not None else getattr(node, "line", 0)
        if not isinstance(node, dict):
            where = f"{file}:{line}: " if line else f"{file}: "
            raise ConfigError(f"{where}{owner}: expected a mapping, got {type_name(node)} ({quote(node)})")
        self.node: dict = node

    def line(self, key: str | None = None) -> int:
        n = self.node
        return n.line_of(key) if isinstance(n, Node) and key is not None else getattr(n, "line", 0)

    def error(self, key: str | None, message: str) -> ConfigError:
        line = self.line(key)
        where = f"{self.file}:{line}" if line else self.file
        field = f"field '{key}': " if key else ""
        return ConfigError(f"{where}: {self.owner}: {field}{message}")

    def only(self, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for k in self.node:
            if k not in allowed:
                raise self.error(k, f"unknown field{closest(k, allowed)}; expected one of: {', '.join(sorted(allowed))}")

    def get(self, key: str, kind: str, default: Any = ..., *, choices: Iterable[str] | None = None,
            minimum: float | None = None, exclusive_min: bool = False) -> Any:
        """``kind``: str, int, number, bool, list, mapping, str-list, any. ``...`` default = required."""
        if key not in self.node or (self.node[key] is None and default is not ...):
            if default is ...:
                raise self.error(key, "required field is missing")
            return default
        v = self.node[key]
        ok = {
            "str": isinstance(v, str) and v != "",
            "int": isinstance(v, int) and not isinstance(v, bool),
            "number": isinstance(v, (int, float)) and not isinstance(v, bool),
            "bool": isinstance(v, bool),
            "list": isinstance(v, list),
            "mapping": isinstance(v, dict),
            "str-list": isinstance(v, list) and all(isinstance(i, str) and i for i in v),
            "any": True,
        }[kind]
        if kind == "str-list" and isinstance(v, str) and v:
            v, ok = [v], True  # a single name is a list of one
        if not ok:
            want = {"str": "a non-empty string", "int": "an integer", "number": "a number", "bool": "true or false",
                    "list": "a list", "mapping": "a mapping", "str-list": "a list of names"}[kind]
            raise self.error(key, f"expected {want}, got {type_name(v)} ({quote(v)})")
        if choices is not None:
            choices = list(choices)
            bad = [i for i in (v if isinstance(v, list) else [v]) if i not in choices]
            if bad:
                raise self.error(key, f"unknown value {quote(bad[0])}{closest(bad[0], choices)}; "
                                      f"expected one of: {', '.join(sorted(map(str, choices)))}")
        if minimum is not None and kind in ("int", "number"):
            if v < minimum or (exclusive_min and v == minimum):
                op = ">" if exclusive_min else ">="
                raise self.error(key, f"expected a value {op} {minimum:g}, got {quote(v)}")
        if isinstance(v, float) and kind == "number":
            v = float(v)
        return v

    def sub(self, key: str, owner: str | None = None) -> "Checker":
        return Checker(self.file, self.node.get(key), owner or f"{self.owner}: field '{key}'", parent=self, key=key)


class Fields(Checker):
    """A :class:`Checker` whose messages name nested fields with dots (``field 'limits.stall_s'``)
    and leave out the owner at the top level (``spec.yaml:2: field 'store': ...``)."""

    def __init__(self, file: str, node: dict, owner: str, prefix: str = ""):
        super().__init__(file, node, owner)
        self.prefix = prefix

    def error(self, key: str | None, message: str) -> ConfigError:
        line = self.line(key)
        where = f"{self.file}:{line}" if line else self.file
        who = f"{self.owner}: " if self.owner else ""
        name = self.prefix + key if key else self.prefix.rstrip(".")
        what = f"field '{name}': " if name else ""
        return ConfigError(f"{where}: {who}{what}{message}")

    def sub(self, key: str, owner: str | None = None) -> "Fields":
        """The mapping under ``key`` (empty when absent or null), checked with the same owner."""
        v = self.node.get(key)
        if v is None:
            v = node_at(self.line(key))
        if not isinstance(v, dict):
            raise self.error(key, f"expected a mapping, got {type_name(v)} ({quote(v)})")
        return Fields(self.file, v, self.owner if owner is None else owner, self.prefix + key + ".")

    def name(self, key: str, default: Any = ...) -> str:
        v = self.get(key, "str", default)
        if not NAME.fullmatch(v):
            raise self.error(key, f"expected a name of letters, digits, '-' and '_' starting with a letter or "
                                  f"digit, got {quote(v)}")
        return v

    def positive(self, key: str, default: Any = None) -> float | None:
        v = self.get(key, "number", default, minimum=0, exclusive_min=True)
        return None if v is None else float(v)

    def unique(self, key: str, values: list) -> None:
        dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if dup is not None:
            raise self.error(key, f"{quote(dup)} is listed twice")


NAME = re.compile(r"[a-z0-9][a-z0-9_-]*", re.IGNORECASE)


def node_at(line: int, items: Iterable[tuple[str, Any, int]] = ()) -> Node:
    """A mapping built from (key, value, line) entries, that still knows where each key came from."""
    n = Node()
    n.line, n.key_lines = line, {}
    for k, v, ln in items:
        n[k] = v
        n.key_lines[k] = ln
    return n


def entries(node: dict | None) -> list[tuple[str, Any, int]]:
    """(key, value, line) of a mapping, the input of :func:`node_at`."""
    if not node:
        return []
    return [(k, v, node.line_of(k) if isinstance(node, Node) else 0) for k, v in node.items()]
