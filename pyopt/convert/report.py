"""Report: what a model-level function (prune, quantize, sparsify) did, one row per layer.

A list of dicts, so it is easy to test and to serialise (`report.to_json()`); `str(report)` is a table.
Rows share the keys "layer" (qualified module name) and "action"; each function adds its own columns
(e.g. "sparsity", "mode", "format", "reason").
"""

from __future__ import annotations

import json


class Report(list):
    def __init__(self, title: str, rows=()):
        super().__init__(rows)
        self.title = title
        self.summary: dict = {}

    def add(self, layer: str, action: str, **info) -> dict:
        row = {"layer": layer, "action": action, **info}
        self.append(row)
        return row

    def to_json(self) -> str:
        return json.dumps({"title": self.title, "summary": self.summary, "rows": list(self)}, default=str)

    def __str__(self) -> str:
        cols: list[str] = []
        for row in self:
            cols += [k for k in row if k not in cols]
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
        table = [cols] + [[fmt(r.get(c, "")) for c in cols] for r in self]
        widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
        lines = [self.title] + [
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table
        ]
        lines += [f"{k}: {fmt(v)}" for k, v in self.summary.items()]
        return "\n".join(lines)

    __repr__ = __str__
