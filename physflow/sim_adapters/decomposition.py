"""How the built-in MPI codes split a grid over ranks: contiguous slabs of rows (or planes).

One rule for every built-in code, so that the same grid size over the same ranks gives the same
slabs whichever code asks.
"""

from __future__ import annotations


def slab(n: int, size: int, rank: int) -> tuple[int, int]:
    """Rows [start, stop) of the global n-row grid owned by ``rank`` of ``size``: the first
    ``n % size`` ranks get one row more."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
