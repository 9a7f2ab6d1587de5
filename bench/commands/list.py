"""``bench list losses|backbones|datasets [PATTERN]``: what the registry holds, with parameters and defaults."""

from __future__ import annotations

import argparse
import fnmatch
import inspect


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered losses, backbones or datasets", description=__doc__)
    p.add_argument("kind", choices=["losses", "backbones", "datasets"])
    p.add_argument("pattern", nargs="?", default="*",
                   help="shell wildcard, e.g. '*face'; 'timm/mobilenet*' lists the timm models it matches")
    p.set_defaults(handler=run)


def format_entries(kind: str, pattern: str = "*") -> str:
    from registry import BACKBONES, DATASETS, LOSSES

    registry = {"losses": LOSSES, "backbones": BACKBONES, "datasets": DATASETS}[kind]
    lines = []
    for name in registry.names(pattern):
        entry = registry.entry(name)
        params = ", ".join(f"{k}={'<required>' if v is inspect.Parameter.empty else repr(v)}"
                           for k, v in entry.parameters().items())
        bound = ", ".join(f"{k}={v!r}" for k, v in entry.defaults.items())
        lines.append(f"{name:<22} {entry.summary}")
        if bound:
            lines.append(f"{'':<22}   fixed: {bound}")
        lines.append(f"{'':<22}   params: {params or '-'}")
    for family in registry.families():
        if pattern.startswith(family.prefix):  # 'timm/mobilenet*': the names the family answers
            matched = [n for n in registry.names(pattern, include_families=True) if n.startswith(family.prefix)]
            if matched:
                lines.append(f"{family.prefix + '<name>':<22} {family.summary}")
                lines += [f"{'':<22}   {name}" for name in matched]
        elif fnmatch.fnmatch(family.prefix + "<name>", pattern):
            lines.append(f"{family.prefix + '<name>':<22} {family.summary}")
    return "\n".join(lines) if lines else f"no {kind} match {pattern!r}"


def run(args: argparse.Namespace) -> int:
    print(format_entries(args.kind, args.pattern))
    return 0
