"""The user's say over what runs: ``approval: plan`` (before the first batch) or ``every-batch``.

The user sees a batch and runs it, stops the campaign (resumable), or edits it. An edited batch
is checked against the parameter schema like any proposal; a problem is shown and the user is
asked again, so nothing outside the bounds runs because a person typed it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from physflow.errors import ProposalError

#: Shows the user a batch (text, parameter sets) and returns the parameter sets to run — the same,
#: or edited by the user — or None to refuse (the campaign then stops, resumable).
Approver = Callable[[str, list[dict[str, float]]], Awaitable[list[Any] | None]]


def batch_text(statement: str | None, hid: str | None, batch: list[dict[str, float]]) -> str:
    """What the user reads: the hypothesis (or that these are the optimizer's), one line per simulation."""
    head = f"Hypothesis {hid}: {statement}\n" if hid else "Optimizer suggestions:\n"
    return head + "\n".join(f"  {json.dumps(p)}" for p in batch)


async def ask_user(approver: Approver, text: str, batch: list[dict[str, float]],
                   validate: Callable[[Any], dict[str, float]], limit: int) -> list[dict[str, float]] | None:
    """The batch the user approved (at most ``limit`` simulations, each ``validate``d), or None."""
    while True:
        answer = await approver(text, batch)
        if answer is None:
            return None
        try:
            return [validate(p) for p in answer][:max(0, limit)]
        except ProposalError as exc:
            text = f"The edited batch was rejected: {exc}\n" + "\n".join(f"  {json.dumps(p)}" for p in batch)
