"""Which modules a model-level function acts on: the one meaning of `include=` / `exclude=`.

A selector is None, a glob pattern on the qualified module name (fnmatch, so `*` also crosses dots:
"encoder.*", "*.fc?"), an nn.Module subclass (matched with isinstance), or a list mixing them. include=None
selects everything the function handles; exclude wins over include. The model itself has the name "".
"""

from __future__ import annotations

import fnmatch

from torch import nn


def patterns(arg, name: str) -> list:
    """The selector `arg` as a list of patterns / types; TypeError naming the argument otherwise."""
    if arg is None:
        return []
    items = [arg] if isinstance(arg, (str, type)) else arg
    try:
        items = list(items)
    except TypeError:
        items = [None]
    for item in items:
        if not (isinstance(item, str) or (isinstance(item, type) and issubclass(item, nn.Module))):
            raise TypeError(
                f"{name} must be a glob pattern (str), an nn.Module type, or a list of them; got {arg!r}"
            )
    return items


def matches(qualname: str, module: nn.Module, pats: list) -> bool:
    return any(
        fnmatch.fnmatchcase(qualname, p) if isinstance(p, str) else isinstance(module, p) for p in pats
    )


class Selector:
    """include / exclude, validated once: `selector(name, module)` says whether the module is selected."""

    def __init__(self, include=None, exclude=None) -> None:
        self.all = include is None
        self.include, self.exclude = patterns(include, "include"), patterns(exclude, "exclude")

    def __call__(self, qualname: str, module: nn.Module) -> bool:
        if matches(qualname, module, self.exclude):
            return False
        return self.all or matches(qualname, module, self.include)
