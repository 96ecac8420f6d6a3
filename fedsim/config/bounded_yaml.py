"""YAML loading with a bound on what aliases expand to.

YAML aliases let a 1 KB file stand for billions of values (nine anchors of nine
aliases each: 9⁹ list items). Loading such a file is cheap, because PyYAML shares the
aliased objects, but everything after it (validation, copies, error messages) walks
the expansion. Here the composed document is measured as it would expand, counting
each aliased node once per use, before any Python object is built; a document past
:data:`MAX_EXPANDED_NODES`, or one whose aliases refer to themselves, is refused.

The same walk refuses a key written twice in one mapping (PyYAML silently keeps the
last: a second ``rounds:`` far down a file would win unseen), naming both lines, and a
number longer than :data:`MAX_NUMBER_CHARS` characters (Python refuses to convert
integers past 4,300 digits, and nothing in a scenario needs a hundred). A document
nested deeper than PyYAML's recursive composer can follow is refused too.
"""

from __future__ import annotations

from typing import Any

import yaml

# A scenario file has a few hundred nodes; a generous sweep (many seeds and variants)
# a few thousand. Counting stops here, long before the expansion costs anything.
MAX_EXPANDED_NODES = 100_000
MAX_NUMBER_CHARS = 100
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlBombError(yaml.YAMLError):
    """A document whose aliases expand past the bound, or refer to themselves."""


class YamlValueError(yaml.YAMLError):
    """A document with a duplicate key or an overlong number (the message says where)."""


def _check_node(node: yaml.Node) -> None:
    """Refuse duplicate keys in a mapping node and overlong numbers in a scalar."""
    long_number = isinstance(node, yaml.ScalarNode) and len(node.value) > MAX_NUMBER_CHARS
    if long_number and node.tag in _NUMBER_TAGS:
        raise YamlValueError(
            f"line {node.start_mark.line + 1}: a number of {len(node.value):,} characters "
            f"(at most {MAX_NUMBER_CHARS})"
        )
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                continue  # a merge (<<) may be overridden by the keys written beside it
            line = key.start_mark.line + 1
            if key.value in seen:
                raise YamlValueError(
                    f"key '{key.value}' is written twice in one mapping, on lines "
                    f"{seen[key.value]} and {line} (YAML would keep only the last)"
                )
            seen[key.value] = line


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def expanded_size(root: yaml.Node, limit: int = MAX_EXPANDED_NODES) -> int:
    """Number of nodes ``root`` stands for once every alias is expanded.

    Each distinct node is visited once (sizes are memoised), so the count costs as
    much as the document's text, however large its expansion.

    Raises
    ------
    YamlBombError
        If the count passes ``limit`` or an alias refers to a node that contains it.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > limit:
                raise YamlBombError(
                    f"its aliases expand to more than {limit:,} values; write the values out "
                    "or use fewer nested aliases"
                )
            continue
        _check_node(node)
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise YamlBombError("an alias refers to a node that contains it (recursive)")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


class BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader that measures each document before constructing it."""

    def construct_document(self, node: yaml.Node) -> Any:
        """Refuse a bomb, then build the document as :class:`yaml.SafeLoader` does."""
        expanded_size(node)
        return super().construct_document(node)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses alias bombs (raises :class:`YamlBombError`).

    Raises
    ------
    YamlBombError
        For an alias bomb or a document nested too deeply to read.
    YamlValueError
        For a key written twice in a mapping or an overlong number.
    """
    try:
        return yaml.load(text, Loader=BoundedSafeLoader)  # a SafeLoader subclass
    except RecursionError:  # PyYAML composes and constructs recursively
        raise YamlBombError("it is nested too deeply") from None
