"""Channel spaces: the algebra under pyopt's dependency graph (pyopt/pruning/depgraph.py).

Every dimension of every tensor in a traced model is a *space*: an ordered set of indices. Operations
couple spaces: an add, a BatchNorm or a Linear's input unify two spaces (index i of one is index i of the
other), so they are pruned together. A space can be *refined* into parts:
    "prod" — a reshape splits a dim of 768 into (12 heads, 64): index h*64 + d is (h, d) (row-major);
    "cat"  — a concatenation or a split: the first |A| indices are A's, the next |B| are B's.
Unification is a union-find over spaces; unifying two refined spaces unifies their parts pairwise (two
different refinements of one space cannot be followed: the space is marked unsafe). The unrefined spaces
left at the end ("leaves") are the channel groups: pruning keeps a subset of each leaf, and every refined
space maps a leaf's kept channels to its own indices (kept_index): a kept head h keeps h*64 .. h*64+63.

Flags, with their reasons (strings naming the module and the op):
    protected   never pruned (model inputs and outputs, spatial dims, embedding rows, head_dim, ...)
    unsafe      a coupling pyopt cannot follow (unknown op, a slice of channels): pruning it is an error
    inexact     pruning changes the result even for zeroed channels (LayerNorm / softmax / mean over it)
    heads       the space is the heads dim of an attention (a batch dim of activation x activation products)
A flag on a refined space applies to all its parts (propagate_flags).
"""

from __future__ import annotations

import torch

FLAGS = ("protected", "unsafe", "inexact", "heads")


class Space:
    __slots__ = ("size", "parent", "parts", "uid", *FLAGS)

    def __init__(self, size: int, uid: int):
        self.size, self.parent, self.parts, self.uid = int(size), None, None, uid
        for f in FLAGS:
            setattr(self, f, [])

    def __repr__(self) -> str:
        return f"Space#{self.uid}({self.size})"


class Spaces:
    def __init__(self):
        self.all: list[Space] = []

    def new(self, size: int, **flags) -> Space:
        s = Space(size, len(self.all))
        self.all.append(s)
        for f, reason in flags.items():
            getattr(s, f).append(reason)
        return s

    def find(self, s: Space) -> Space:
        root = s
        while root.parent is not None:
            root = root.parent
        while s.parent is not None and s.parent is not root:  # path compression
            s.parent, s = root, s.parent
        return root

    def flag(self, s: Space, flag: str, reason: str) -> None:
        r = self.find(s)
        if reason not in getattr(r, flag):
            getattr(r, flag).append(reason)

    def taint(self, s: Space, reason: str) -> None:
        """Mark `s` and every leaf under it unsafe."""
        self.flag(s, "unsafe", reason)
        for leaf in self.leaves(s):
            self.flag(leaf, "unsafe", reason)

    def unify(self, a: Space, b: Space, where: str = "") -> None:
        a, b = self.find(a), self.find(b)
        if a is b:
            return
        if a.size != b.size:  # a rule got the shapes wrong: never prune what it touched
            self.taint(a, f"{where}: sizes {a.size} and {b.size} coupled")
            self.taint(b, f"{where}: sizes {a.size} and {b.size} coupled")
            return
        pa, pb = a.parts, b.parts
        if (
            pa is not None
            and pb is not None
            and not (
                pa[0] == pb[0] and [self.find(p).size for p in pa[1]] == [self.find(p).size for p in pb[1]]
            )
        ):
            self.taint(a, f"{where}: the same channels are split two different ways")
            self.taint(b, f"{where}: the same channels are split two different ways")
            pb = None
        b.parent = a
        for f in FLAGS:
            for reason in getattr(b, f):
                if reason not in getattr(a, f):
                    getattr(a, f).append(reason)
        if pa is None:
            a.parts = pb
        elif pb is not None:
            for x, y in zip(pa[1], pb[1], strict=True):
                self.unify(x, y, where)

    def refine(self, s: Space, kind: str, sizes: list[int], where: str = "") -> list[Space] | None:
        """The parts of `s` as `kind` ("prod" / "cat") with `sizes`; None if s is already split otherwise."""
        r = self.find(s)
        sizes = [int(n) for n in sizes]
        if len(sizes) == 1:
            return [r]
        if r.parts is None:
            r.parts = (kind, [self.new(n) for n in sizes])
            return list(r.parts[1])
        if r.parts[0] == kind and [self.find(p).size for p in r.parts[1]] == sizes:
            return list(r.parts[1])
        self.taint(r, f"{where}: the same channels are split two different ways")
        return None

    def leaves(self, s: Space) -> list[Space]:
        r = self.find(s)
        if r.parts is None:
            return [r]
        out = []
        for p in r.parts[1]:
            out += [leaf for leaf in self.leaves(p) if leaf not in out]
        return out

    def propagate_flags(self) -> None:
        """Flags of refined spaces apply to their parts (a protected output protects every head in it)."""
        for s in self.all:
            r = self.find(s)
            if r is s and r.parts is not None:
                self._push(r, {f: list(getattr(r, f)) for f in FLAGS if f != "heads"})

    def _push(self, s: Space, flags: dict) -> None:
        for p in s.parts[1]:
            p = self.find(p)
            for f, reasons in flags.items():
                for reason in reasons:
                    if reason not in getattr(p, f):
                        getattr(p, f).append(reason)
            if p.parts is not None:
                self._push(p, flags)

    def kept_index(self, s: Space, keep: dict[int, torch.Tensor]) -> torch.Tensor | None:
        """The kept indices of `s` (sorted), given the kept channels of the pruned leaves (by uid); None =
        all kept."""
        r = self.find(s)
        if r.parts is None:
            return keep.get(r.uid)
        kind, parts = r.parts
        subs = [self.kept_index(p, keep) for p in parts]
        if all(x is None for x in subs):
            return None
        sizes = [self.find(p).size for p in parts]
        full = [torch.arange(n) if x is None else x for x, n in zip(subs, sizes, strict=True)]
        if kind == "cat":
            offsets = [sum(sizes[:i]) for i in range(len(sizes))]
            return torch.cat([x + off for x, off in zip(full, offsets, strict=True)])
        idx = full[0]
        for x, n in zip(full[1:], sizes[1:], strict=True):
            idx = (idx[:, None] * n + x[None, :]).reshape(-1)
        return idx

    def channel_map(self, s: Space, leaf: Space) -> torch.Tensor:
        """For every index of `s`, the channel of `leaf` it belongs to, or -1."""
        r = self.find(s)
        if r is leaf:
            return torch.arange(r.size)
        if r.parts is None:
            return torch.full((r.size,), -1, dtype=torch.long)
        kind, parts = r.parts
        maps = [self.channel_map(p, leaf) for p in parts]
        if kind == "cat":
            return torch.cat(maps)
        out = maps[0]
        for m in maps[1:]:
            out = torch.maximum(out[:, None].expand(-1, len(m)), m[None, :].expand(len(out), -1)).reshape(-1)
        return out
