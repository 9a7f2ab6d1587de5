"""The one YAML reader of grids, ``--set`` values and stored params.

PyYAML follows YAML 1.1, where ``1e-3`` and ``1.0e6`` are strings (a float needs a dot and a signed
exponent there). Researchers write ``lr: 1e-3``; read as text it passed ``float(lr) > 0`` and then failed
inside the optimizer after the study was created. This loader reads them as YAML 1.2 does, as floats.
A key written twice in one mapping (``base: {dataset: mnist, dataset: digits}``) is an error naming the
line, not a silent last-one-wins.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["load", "Loader"]

_FLOAT_12 = re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$""")


class Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` with YAML 1.2 exponent floats and duplicate keys rejected."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found key {key!r} twice (first on line {seen[key].line + 1}); keep one", key_node.start_mark)
                seen[key] = key_node.start_mark
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                break
        return super().construct_mapping(node, deep=deep)


Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789"))


def load(text: str) -> Any:
    """``yaml.safe_load`` with `Loader`'s two changes."""
    return yaml.load(text, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader
