"""Training-loop hooks: work that runs beside the step at a cadence (evaluation, metrics,
checkpoints, stop conditions), registered once instead of written inline in the loop.

A hook is a function of a `HookContext`, with `every` (run after each step whose number is a
multiple of it; 0: never on that account), `at_start` (also once at step 0, before any update,
on a fresh run; a resumed run has already done it) and `at_end` (also after the last step).
Hooks run in the order they were added, so a hook that adds metrics comes before the one that
writes them, and the checkpoint before a stop condition that raises. levanter's
`trainer.add_hook(fn, every=N)` is the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class HookContext:
    """What a hook sees: `step` = updates done (0 before the first), the train state after it,
    `metrics` = this step's record (mutable: hooks add to it before the metrics hook writes it),
    and whether this is the last step of the run."""

    step: int
    state: Any
    metrics: dict[str, Any]
    last: bool


@dataclasses.dataclass(frozen=True)
class Hook:
    fn: Callable[[HookContext], None]
    every: int = 0
    at_start: bool = False
    at_end: bool = False
    name: str = ""

    def due(self, ctx: HookContext) -> bool:
        """Whether this hook runs at ctx.step (see the module docstring)."""
        if ctx.step == 0:
            return self.at_start
        return (self.every > 0 and ctx.step % self.every == 0) or (self.at_end and ctx.last)


class Hooks:
    """An ordered list of hooks; `run(ctx)` calls the ones due at ctx.step."""

    def __init__(self) -> None:
        self.hooks: list[Hook] = []

    def add(
        self,
        fn: Callable[[HookContext], None],
        every: int = 0,
        at_start: bool = False,
        at_end: bool = False,
        name: str = "",
    ) -> Hook:
        """Register `fn` (see the module docstring for when it runs); returns the hook."""
        if every < 0:
            raise ValueError(f"hook {name or fn}: every must be >= 0, got {every}")
        hook = Hook(fn, int(every), at_start, at_end, name or getattr(fn, "__name__", ""))
        self.hooks.append(hook)
        return hook

    def run(self, ctx: HookContext) -> None:
        for h in self.hooks:
            if h.due(ctx):
                h.fn(ctx)
