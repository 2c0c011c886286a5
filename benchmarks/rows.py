"""The rows of the printed table: a ratio of two variants measured in the same run."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from benchmarks.timing import Timing


@dataclass(frozen=True)
class Row:
    item: str
    case: str
    baseline: str
    candidate: str
    base: Timing | None
    cand: Timing | None
    goal: str = ""
    # A ratio measured otherwise than as baseline / candidate seconds (counts, exponents).
    value: str = ""

    @property
    def wall_ratio(self) -> float | None:
        return self.base.wall / self.cand.wall if self.base and self.cand else None

    @property
    def cpu_ratio(self) -> float | None:
        if not (self.base and self.cand) or min(self.base.cpu, self.cand.cpu) <= 0:
            return None
        return self.base.cpu / self.cand.cpu

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["base"] = self.base.as_dict() if self.base else None
        out["cand"] = self.cand.as_dict() if self.cand else None
        return out | {"wall_ratio": self.wall_ratio, "cpu_ratio": self.cpu_ratio}


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def table(rows: list[Row]) -> str:
    head = ("item", "case", "candidate vs baseline", "wall", "cpu", "goal")
    body = [
        (
            r.item,
            r.case,
            f"{r.candidate} vs {r.baseline}" if r.baseline else "",
            r.value or _fmt(r.wall_ratio),
            "" if r.value else _fmt(r.cpu_ratio),
            r.goal,
        )
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
        for line in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
