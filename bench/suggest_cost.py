"""Does a suggestion's cost stay bounded as a campaign's results grow (issue 16)?

The loop asks ``Optimizer.suggest`` for the slots that fell free; at Aurora scale a campaign
holds thousands of simulations in flight (``pending``) and finishes hundreds of thousands. This
times ``suggest(k, pending)`` on the offline stand-in of the cosmology problem
(``bench/optimizer_offline.py``) with ``n`` results observed (uniform random points, their
stand-in values) and ``p`` points pending, for growing ``n``: each row the median of ``--repeats``
calls after one warm-up call, and the milliseconds per suggested point.

Run from the repository root: ``python bench/suggest_cost.py [--counts 100,300,1000,10000,100000]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.optimizer_offline import PARAMETERS, stand_in  # noqa: E402
from physflow.optimizer import Optimizer  # noqa: E402


def points(rng: np.random.Generator, n: int) -> list[dict[str, float]]:
    """``n`` uniform points of the stand-in's box."""
    u = rng.random((n, len(PARAMETERS)))
    return [{k: p.min + ui * (p.max - p.min) for ui, (k, p) in zip(row, PARAMETERS.items(), strict=True)}
            for row in u]


def time_suggest(n: int, pending: int, k: int, repeats: int) -> tuple[float, str]:
    """Median seconds of ``suggest(k, pending)`` with ``n`` results, and the path it took."""
    objective = stand_in()
    rng = np.random.default_rng(n)
    opt = Optimizer(PARAMETERS, seed=0)
    for p in points(rng, n):
        opt.observe(p, objective(p))
    waiting = points(rng, pending)
    opt.suggest(k, pending=waiting)  # warm-up: the first fit
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        opt.suggest(k, pending=waiting)
        times.append(time.perf_counter() - tick)
    ran: list[str] = []  # the path the calls take (the GP falls back to TPE on a failed fit)
    gp, tpe = opt._suggest_gp, opt._suggest_tpe
    opt._suggest_gp = lambda *a: ran.append("gp") or gp(*a)  # type: ignore[method-assign]
    opt._suggest_tpe = lambda *a: ran.append("tpe") or tpe(*a)  # type: ignore[method-assign]
    opt.suggest(k, pending=waiting)
    return statistics.median(times), "/".join(dict.fromkeys(ran))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="100,300,1000,3000,10000,30000,100000",
                        help="results observed, comma-separated")
    parser.add_argument("--pending", type=int, default=1000, help="points pending (at most n)")
    parser.add_argument("--k", type=int, default=8, help="points a call suggests")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls a row (median)")
    args = parser.parse_args(argv)
    print(f"suggest(k={args.k}, pending=min(n, {args.pending})): median of {args.repeats} after a warm-up")
    print(f"{'results n':>10} {'pending':>8} {'path':>5} {'s/call':>8} {'ms/point':>9}")
    for n in (int(c) for c in args.counts.split(",")):
        p = min(n, args.pending)
        seconds, path = time_suggest(n, p, args.k, args.repeats)
        print(f"{n:>10,} {p:>8,} {path:>5} {seconds:>8.3f} {1e3 * seconds / args.k:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
