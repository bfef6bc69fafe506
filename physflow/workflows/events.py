"""The loop's events as named things: what happened, and which method of the loop handles it.

In the manner of Colmena's ``@result_processor``: a method says *when* it runs by the event it
is registered for (``@handles("result")``), instead of one long if/elif over event kinds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Event:
    """One thing that happened: a result was stored, the planner or the critic finished a turn,
    the optimizer suggested; ``wake`` only wakes the loop (a cancel from a signal)."""

    kind: str
    payload: tuple[Any, ...] = ()


class Handlers:
    """Event kind -> the name of the method that handles it; ``dispatch`` calls it on an owner."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def __call__(self, kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated method as the handler of events of ``kind``."""

        def register(method: Callable[..., Any]) -> Callable[..., Any]:
            if kind in self.names:
                raise ValueError(f"two handlers for event {kind!r}: {self.names[kind]} and {method.__name__}")
            self.names[kind] = method.__name__
            return method

        return register

    async def dispatch(self, owner: Any, event: Event) -> None:
        """Call ``owner``'s handler of ``event`` (awaited if it is a coroutine); none for a bare wake."""
        name = self.names.get(event.kind)
        if name is not None:
            result = getattr(owner, name)(*event.payload)
            if asyncio.iscoroutine(result):
                await result
