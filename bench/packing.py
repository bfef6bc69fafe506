"""Do small MPI simulations share a node? The local site's MPI pool is one "node"; Parsl's
MPIExecutor alone gives each MPI task the whole node, so 1-rank simulations ran one at a time
while ``max_concurrent`` promised more (Parsl issue #3927). physflow now lists the node once per
slot and binds each task's ranks to its slot's cores (``site.pack_mpi``, ``payload.packed``).

Three ways, the same heat2d work, side by side in one run (alternating order over rounds):

``whole-node``  1-rank simulations, Parsl's own way (one task a node): what physflow did before
``packed``      1-rank simulations packed, one per core, each rank bound to its core
``two-rank``    2-rank simulations one at a time (the same cores, the work split by MPI instead)

Each runs ``--tasks`` simulations with ``max_concurrent`` = the machine's cores, through
``ParslDispatcher`` as ``physflow submit`` starts it; wall time is from the first submission to
the last result, busy is simulation-seconds over (cores x wall), and the overlap column counts
the largest number of simulations that ran at the same moment.

Run from the repository root: ``python bench/packing.py [--tasks 8] [--rounds 2] [--n 300]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from physflow.dispatch.parsl_backend import ParslDispatcher  # noqa: E402
from physflow.site_configs.loader import load_site  # noqa: E402
from physflow.site_configs.site import Packing, machine_cores, pack_mpi  # noqa: E402
from physflow.vocabulary.task import TaskSpec  # noqa: E402

WAYS = ("whole-node", "packed", "two-rank")


def run_way(way: str, folder: Path, tasks: int, n: int, t_end: float) -> dict[str, float]:
    """Run ``tasks`` heat2d simulations one ``way``; wall s, busy fraction, most at once."""
    site, cores = load_site("local"), len(machine_cores())
    ranks = 2 if way == "two-rank" else 1
    packing = pack_mpi(site, "mpi", ranks, 1) if way == "packed" else Packing(1)
    dispatcher = ParslDispatcher(site, folder / "parsl", cores, packing=packing)
    try:
        dispatcher.submit(TaskSpec("warm", str(folder / "warm"), mpi=True, ranks=1, argv=["true"])).result(600)
        start = time.time()
        futures = [dispatcher.submit(TaskSpec(f"s{i}", str(folder / f"s{i}"), mpi=True, ranks=ranks, argv=[
            sys.executable, "-m", "physflow.sim_adapters.heat2d.solver", "--kappa", "0.3", "--power", "20",
            "--n", str(n), "--t-end", str(t_end), "--out", "field.h5"])) for i in range(tasks)]
        outs = [f.result(timeout=3600) for f in futures]
        wall = time.time() - start
    finally:
        dispatcher.close()
    if any(o["returncode"] for o in outs):
        raise RuntimeError(f"{way}: a simulation failed: {[o for o in outs if o['returncode']][0]}")
    spans = [(o["started"], o["finished"]) for o in outs]
    most = max(sum(1 for s, f in spans if s <= t < f) for t, _ in spans)
    busy = sum(f - s for s, f in spans) * ranks / (cores * wall)
    return {"wall": wall, "busy": busy, "most": most, "per_sim": statistics.median(f - s for s, f in spans)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8, help="simulations per way and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each running every way (order alternates)")
    parser.add_argument("--n", type=int, default=300, help="heat2d grid points per side")
    parser.add_argument("--t-end", type=float, default=0.015, help="heat2d simulated time [s]")
    args = parser.parse_args()
    cores = len(machine_cores())
    print(f"{cores} cores; {args.tasks} heat2d simulations (n={args.n}, t_end={args.t_end}) per way; "
          f"{args.rounds} round(s); load average {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, list[dict[str, float]]] = {w: [] for w in WAYS}
    with tempfile.TemporaryDirectory(prefix="physflow-packing-") as tmp:
        for r in range(args.rounds):
            for way in (WAYS if r % 2 == 0 else WAYS[::-1]):
                res = run_way(way, Path(tmp) / f"{way}-{r}", args.tasks, args.n, args.t_end)
                results[way].append(res)
                print(f"  round {r} {way:10s} wall {res['wall']:.1f} s, busy {res['busy']:.2f}, at once "
                      f"{res['most']:.0f}, per simulation {res['per_sim']:.1f} s", flush=True)
    med = statistics.median
    base = med(r["wall"] for r in results["whole-node"])
    print("\n| way | ranks a simulation | at once (most) | wall s (median) | busy (core-s / cores x wall) | "
          "s a simulation | wall vs whole-node |\n|---|---|---|---|---|---|---|")
    for way in WAYS:
        rows = results[way]
        print(f"| {way} | {2 if way == 'two-rank' else 1} | {max(r['most'] for r in rows):.0f} | "
              f"{med(r['wall'] for r in rows):.1f} | {med(r['busy'] for r in rows):.2f} | "
              f"{med(r['per_sim'] for r in rows):.1f} | {med(r['wall'] for r in rows) / base:.2f} |")


if __name__ == "__main__":
    main()
