"""Shared by the fault-matrix tests: the record of figures (trials and losses per fault)."""

from __future__ import annotations

FIGURES: list[str] = []


class Figures:
    """``record(fault, trials, lost=..., **more)``: one line of the fault matrix."""

    def record(self, fault: str, trials: int, *, lost: int, **more: object) -> None:
        extra = "".join(f" {k}={v}" for k, v in more.items())
        FIGURES.append(f"{fault}: trials={trials} lost={lost}{extra}")
