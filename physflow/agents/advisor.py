"""The planner as the optimizer's advisor: one small decision at a time, in a form small models
get right.

Measured with the 1.5B embedded model: shown four candidates with their predicted chi2 (mean ±
sd) and asked for the best one or two, it answered ``[1, 2]`` in 6 of 6 prompts whatever the
numbers; asked for the lowest of four plain numbers it found it 5 times in 8 (chance: 2). So a pick
shows the candidates in a random order under letters, asks for one letter, and is scored against
the surrogate's own ranking (``vocabulary.steering``). ``physflow qualify`` asks the same question,
so the score it measures is the one a campaign's picks earn slots with.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field, create_model

from physflow.vocabulary.steering import Candidate, Goal

LETTERS = "ABCDEFGHJK"


def shuffled(candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
    """The candidates in a random order: a small model's favourite positions must not decide."""
    out = list(candidates)
    rng.shuffle(out)
    return out


def _number(value: float) -> str:
    return f"{value:.4g}"


def candidate_lines(shown: Sequence[Candidate], metric: str) -> str:
    """One line per candidate, under its letter: parameters and predicted metric (mean ± sd)."""
    return "\n".join(
        f"{LETTERS[i]}: " + ", ".join(f"{k}={_number(v)}" for k, v in c.params.items())
        + f" -> predicted {metric} {_number(c.mean)} ± {_number(c.sd)}" for i, c in enumerate(shown))


def pick_question(shown: Sequence[Candidate], metric: str, goal: Goal) -> str:
    """The one decision: which shown candidate the surrogate predicts best."""
    lowest = "lowest" if goal == "minimize" else "highest"
    return (f"Candidate simulations (random order), with a surrogate model's predicted {metric}:\n"
            f"{candidate_lines(shown, metric)}\n"
            f"Which candidate has the {lowest} predicted {metric}? Reply with JSON: {{\"choice\": \"<letter>\"}}.")


@functools.cache
def pick_model(n: int) -> type[BaseModel]:
    """The reply of one pick: one of the first ``n`` letters (a grammar keeps a small model to it)."""
    letters = tuple(LETTERS[:n])
    return create_model("Pick", choice=(Literal[letters], Field(description="the letter of the candidate")))  # type: ignore[valid-type]


def picked(reply: BaseModel) -> int:
    """The index, in the order shown, of the candidate a ``pick_model`` reply names."""
    return LETTERS.index(reply.choice)  # type: ignore[attr-defined]
