"""Friends-of-friends halos in a periodic box, and the halo mass function.

Two particles are friends when their (minimum-image) separation is below the linking length;
halos are the connected components. Candidate pairs come from a cell list with cells at least
one linking length wide (each cell against itself and 13 of its 26 neighbours), generated in
vectorised chunks; components come from a vectorised union-find (hook the larger root onto the
smaller, then full pointer jumping, until no edge joins two roots). Serial: run it on one rank.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

#: FoF linking length in units of the mean interparticle separation.
LINKING_B = 0.2
#: Smallest halo counted in the mass function (particles).
MIN_HALO_PARTICLES = 20
#: Smallest FoF group whose size a run keeps (so that a target's lowest mass bin can be refilled
#: from runs with particles up to ~4x heavier).
MIN_GROUP_PARTICLES = 5
#: Half of the 26 neighbour offsets (each unordered pair of cells visited once), plus the cell itself.
_OFFSETS = [(0, 0, 0)] + [o for o in itertools.product((-1, 0, 1), repeat=3) if o > (0, 0, 0)]
#: Most candidate pairs examined at once (bounds the pair finder's memory to ~ 50 bytes each).
_CHUNK_PAIRS = 2_000_000


def _root_labels(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Label of each of n nodes: the smallest node index in its connected component."""
    parent = np.arange(n)
    while first.size:
        ra, rb = parent[first], parent[second]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        joins = lo != hi
        first, second, lo, hi = first[joins], second[joins], lo[joins], hi[joins]
        if not first.size:
            break
        np.minimum.at(parent, hi, lo)  # hi is a root: parent[x] <= x keeps the forest acyclic
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def _chunks(pairs: np.ndarray, limit: int) -> list[slice]:
    """Consecutive slices of cell pairs, each holding at most ``limit`` particle pairs (or one cell pair)."""
    ends = np.cumsum(pairs)
    cuts = np.searchsorted(ends, np.arange(limit, ends[-1], limit), side="right") if ends.size else []
    bounds = np.unique(np.concatenate([[0], cuts, [pairs.size]]).astype(np.intp))
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _friend_pairs(pos: np.ndarray, box: float, link: float, chunk: int = _CHUNK_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of particles closer than ``link`` (Mpc/h), periodic in ``box`` (Mpc/h)."""
    n_cells = int(box // link)
    if n_cells < 3:  # the 27-cell stencil would visit a cell twice: one cell holds everything
        n_cells = 1
    c3 = np.floor(pos / (box / n_cells)).astype(np.intp) % n_cells
    cid = (c3[:, 0] * n_cells + c3[:, 1]) * n_cells + c3[:, 2]
    order = np.argsort(cid, kind="stable")
    cells, start, count = np.unique(cid[order], return_index=True, return_counts=True)
    cx, rest = np.divmod(cells, n_cells * n_cells)
    cy, cz = np.divmod(rest, n_cells)
    found_a, found_b = [np.empty(0, np.intp)], [np.empty(0, np.intp)]
    for offset in _OFFSETS if n_cells > 1 else _OFFSETS[:1]:
        other = (((cx + offset[0]) % n_cells) * n_cells + (cy + offset[1]) % n_cells) * n_cells \
            + (cz + offset[2]) % n_cells
        where = np.minimum(np.searchsorted(cells, other), len(cells) - 1)
        has = cells[where] == other
        a_start, a_count = start[has], count[has]
        b_start, b_count = start[where[has]], count[where[has]]
        pairs = a_count * b_count
        for part in _chunks(pairs, chunk):
            reps = pairs[part]
            which = np.repeat(np.arange(reps.size), reps)  # cell pair of each particle pair
            rank = np.arange(which.size) - np.repeat(np.cumsum(reps) - reps, reps)
            nb = b_count[part][which]
            ia = order[a_start[part][which] + rank // nb]
            ib = order[b_start[part][which] + rank % nb]
            if offset == (0, 0, 0):
                keep = ia < ib
                ia, ib = ia[keep], ib[keep]
            d = pos[ia] - pos[ib]
            d -= box * np.round(d / box)
            close = np.einsum("ij,ij->i", d, d) < link * link
            found_a.append(ia[close])
            found_b.append(ib[close])
    return np.concatenate(found_a), np.concatenate(found_b)


def friends_of_friends(pos: np.ndarray, box: float, link: float) -> np.ndarray:
    """Group label of each particle (N,): particles share a label iff linked by a friend chain."""
    first, second = _friend_pairs(pos, box, link)
    return _root_labels(len(pos), first, second)


def group_sizes(labels: np.ndarray, min_members: int) -> np.ndarray:
    """Member counts of the groups with at least ``min_members`` particles, largest first."""
    sizes = np.bincount(labels)
    return np.sort(sizes[sizes >= min_members])[::-1]


@dataclass
class HaloMassFunction:
    """Binned halo counts: centres m (Msun/h, geometric), dn/dlnM ((Mpc/h)^-3), counts per bin."""

    edges: np.ndarray
    m: np.ndarray
    dn_dlnm: np.ndarray
    n_halos: np.ndarray

    @classmethod
    def from_masses(cls, masses: np.ndarray, edges: np.ndarray, volume: float) -> HaloMassFunction:
        """Bin halo masses (Msun/h) into ``edges`` (Msun/h) for a box of ``volume`` (Mpc/h)^3."""
        counts = np.histogram(masses, bins=edges)[0].astype(float)
        return cls(edges, np.sqrt(edges[1:] * edges[:-1]), counts / (volume * np.diff(np.log(edges))), counts)


def mass_bin_edges(particle_mass: float, min_members: int, largest: float, dex: float = 0.2) -> np.ndarray:
    """Logarithmic bin edges (Msun/h), ``dex`` wide, from just below ``min_members`` particles to
    past the ``largest`` halo mass (at least one bin)."""
    low = (min_members - 0.5) * particle_mass
    n_bins = max(1, math.ceil(math.log10(max(largest, low) / low) / dex + 1e-9))
    if low * 10 ** (n_bins * dex) <= largest:
        n_bins += 1
    return low * 10.0 ** (dex * np.arange(n_bins + 1))
