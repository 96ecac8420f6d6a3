"""YAML loading with a bound on what aliases expand to.

YAML aliases let a 1 KB file stand for billions of values (nine anchors of nine
aliases each: 9⁹ list items). Loading such a file is cheap, because PyYAML shares the
aliased objects, but everything after it (validation, copies, error messages) walks
the expansion. Here the composed document is measured as it would expand, counting
each aliased node once per use, before any Python object is built; a document past
:data:`MAX_EXPANDED_NODES`, or one whose aliases refer to themselves, is refused.
"""

from __future__ import annotations

from typing import Any

import yaml

# A scenario file has a few hundred nodes; a generous sweep (many seeds and variants)
# a few thousand. Counting stops here, long before the expansion costs anything.
MAX_EXPANDED_NODES = 100_000


class YamlBombError(yaml.YAMLError):
    """A document whose aliases expand past the bound, or refer to themselves."""


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
    """``yaml.safe_load`` that refuses alias bombs (raises :class:`YamlBombError`)."""
    return yaml.load(text, Loader=BoundedSafeLoader)  # a SafeLoader subclass
