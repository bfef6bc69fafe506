"""Cores for thinking: how long a planner turn takes while simulations run, and what each way of
sharing a laptop's cores costs the simulations.

The local site serves the embedded model (llama.cpp, Qwen2.5-Coder-1.5B unless ``--model``) on
its ``llm`` pool and runs MPI simulations on its ``mpi`` pool, on the same cores. Each
configuration below is the local site with its ``llm.cores`` and ``llm.simulation_priority``
set, started exactly as ``physflow submit`` starts it (``ParslDispatcher`` with the model's
service pool, ``ModelService`` with ``serving_plan``), one after the other in one process:

``shared``   cores none, priority normal: every process on every core (physflow before the key)
``pinned``   cores auto (the last core of 2), priority normal: the model's threads on their own
             core (one thread), the simulation pool on the rest
``nice``     cores none, priority nice: the simulations at nice 19, the model unpinned
``idle``     cores none, priority idle: the simulations under SCHED_IDLE, the model unpinned

Each configuration: a warm-up request; a planner-sized turn with nothing else running (the
model's own speed under that configuration); then simulations back to back (heat2d, 2 ranks
under mpiexec, one task at a time: the 2 ranks fill a 2-core machine), measured for ``--window``
seconds with the model idle, then the same planner-sized turn with the simulations running.

The turn is a fixed chat prompt of about 1,000 tokens (a planner's system message, a table of
40 earlier simulations, the request) answered greedily (temperature 0) with at most
``--max-tokens`` tokens, streamed: time to first token is the prompt's evaluation, the rest the
generation. Each request begins with its own number, so llama.cpp cannot reuse the previous
request's evaluated prompt.

Simulation throughput is simulations per minute: each task's run (start to end on the worker)
counts for the fraction of it that falls in the window, so a window need not hold whole tasks.
The ratios compare each configuration with ``shared``'s simulations alone, that is, with the
whole machine's throughput.

Run from the repository root: ``python bench/thinking_cores.py [--configs shared,pinned,nice,idle]
[--rounds 1] [--model smollm2-135m]``; ``--quick`` runs SmolLM2-135M and short windows (a smoke
test, minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from physflow.dispatch.parsl_backend import ParslDispatcher  # noqa: E402
from physflow.serving.plans import serving_plan  # noqa: E402
from physflow.serving.service import ModelService  # noqa: E402
from physflow.site_configs.loader import load_site  # noqa: E402
from physflow.site_configs.site import SiteLLM, SiteSpec, core_list, machine_cores, model_cores  # noqa: E402
from physflow.vocabulary.task import TaskSpec  # noqa: E402
from physflow.vocabulary.workflow import EMBEDDED_MODEL, LLMSpec  # noqa: E402

#: name -> (llm.cores, llm.simulation_priority)
CONFIGS = {"shared": ("none", "normal"), "pinned": ("auto", "normal"), "nice": ("none", "nice"),
           "idle": ("none", "idle")}

SYSTEM = """Request {n}. You are the planner of a simulation campaign on the halo mass function.
You propose the next simulations of a particle-mesh N-body code. Parameters: omega_m (matter density,
0.1 to 0.5), sigma8 (amplitude of fluctuations, 0.6 to 1.0). The objective is chi2_hmf, the chi-square
distance between the simulated and the observed halo mass function; lower is better, 0.5 is good
enough. Each simulation takes minutes on two cores, so think before you propose: state a hypothesis,
predict what the simulations will show, and propose points that test it. Use what the table shows:
where chi2_hmf is low, what the degeneracy between omega_m and sigma8 looks like, which region is
still unexplored. Answer with a short analysis, then a numbered list of proposals."""


def planner_prompt(n: int) -> list[dict[str, str]]:
    """The fixed planner turn (about 1,000 tokens with Qwen's chat template); ``n`` only numbers it."""
    rows = []
    for i in range(40):  # a deterministic table of earlier results
        om, s8 = 0.1 + 0.4 * ((i * 37) % 41) / 40, 0.6 + 0.4 * ((i * 23) % 41) / 40
        chi2 = 0.4 + 25 * (om * s8 ** 2 - 0.3 * 0.8 ** 2) ** 2 / 0.01 + 0.1 * ((i * 7) % 5)
        rows.append(f"| {i + 1} | {om:.3f} | {s8:.3f} | {chi2:.3f} | finished |")
    table = "| # | omega_m | sigma8 | chi2_hmf | status |\n|---|---|---|---|---|\n" + "\n".join(rows)
    user = (f"Results so far:\n{table}\n\nPropose the next 4 simulations. Explain the degeneracy you see in "
            "the table in detail, give your hypothesis and prediction, then list each proposal with its "
            "omega_m, sigma8 and the reason for it.")
    return [{"role": "system", "content": SYSTEM.format(n=n)}, {"role": "user", "content": user}]


@dataclass
class Turn:
    seconds: float
    first_token: float  # s from the request to the first generated token: the prompt's evaluation
    tokens: int  # generated (one per streamed chunk with content)

    @property
    def gen_rate(self) -> float:
        return (self.tokens - 1) / max(1e-9, self.seconds - self.first_token)


def chat(base_url: str, api_key: str, model: str, messages: list[dict[str, str]], max_tokens: int) -> Turn:
    """One greedy streamed chat completion; how long it took and how many tokens it generated."""
    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
                       "stream": True}).encode()
    request = urllib.request.Request(base_url + "/chat/completions", data=body, headers={
        "Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
    started, first, tokens = time.perf_counter(), None, 0
    with urllib.request.urlopen(request, timeout=3600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            delta = json.loads(line[5:])["choices"][0].get("delta", {})
            if delta.get("content"):
                tokens += 1
                first = first or time.perf_counter()
    end = time.perf_counter()
    return Turn(end - started, (first or end) - started, tokens)


class Simulations:
    """heat2d tasks (2 ranks under mpiexec) back to back on the dispatcher's MPI pool, until stopped."""

    def __init__(self, dispatcher: ParslDispatcher, folder: Path, n: int, t_end: float) -> None:
        self.dispatcher, self.folder, self.n, self.t_end = dispatcher, folder, n, t_end
        self.runs: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            spec = TaskSpec(f"s{i}", str(self.folder / f"s{i}"), mpi=True, ranks=2, argv=[
                sys.executable, "-m", "physflow.sim_adapters.heat2d.solver", "--kappa", "0.3", "--power", "20",
                "--n", str(self.n), "--t-end", str(self.t_end), "--out", "field.h5"])
            out = self.dispatcher.submit(spec).result(timeout=3600)
            if out["returncode"] != 0:
                raise RuntimeError(f"simulation failed: {out}")
            self.runs.append((out["started"], out["finished"]))

    def start(self) -> Simulations:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the running task (its end is needed for the last window)."""
        self._stop.set()
        self._thread.join()

    def per_minute(self, t0: float, t1: float) -> float:
        """Simulations per minute in [t0, t1] (UNIX s), each run counted for its fraction inside."""
        done = sum(max(0.0, min(f, t1) - max(s, t0)) / (f - s) for s, f in self.runs if f > s)
        return 60.0 * done / (t1 - t0)


@dataclass
class Result:
    name: str
    cores: str
    priority: str
    model_cores: str
    threads: int
    idle_turn: Turn
    busy_turn: Turn
    sims_alone: float  # simulations per minute, model idle
    sims_during: float  # simulations per minute while the model thinks
    rss_gb: float  # the model server's resident memory after its turns (GB)
    load: tuple[float, float]  # the machine's 1-minute load average before and after (others' work shows here)


def measure(name: str, site: SiteSpec, args: argparse.Namespace, folder: Path, request: list[int]) -> Result:
    cores, priority = CONFIGS[name]
    site = site.model_copy(update={"llm": SiteLLM(serve_on="llm", cores=cores, simulation_priority=priority)})
    pinned = model_cores(site)
    plan, pool = serving_plan(LLMSpec(model=args.model), site, pinned)
    threads = int(plan.argv[plan.argv.index("--n_threads") + 1])
    load_before = os.getloadavg()[0]
    dispatcher = ParslDispatcher(site, folder / "parsl", 1, service_pool=pool)
    try:
        service = ModelService(plan, folder / "llm", dispatcher.submit_service)
        dispatcher.on_close(service.stop)
        service.start()

        def turn(max_tokens: int = args.max_tokens) -> Turn:
            request[0] += 1
            return chat(service.base_url, service.api_key, args.model, planner_prompt(request[0]), max_tokens)

        turn(4)  # warm-up: the model's pages in memory, the server's first-request work done
        idle_turn = turn()
        sims = Simulations(dispatcher, folder / "sims", args.sim_n, args.sim_t_end).start()
        while len(sims.runs) < 1:  # the pool's first task started and finished: the pipeline is full
            time.sleep(0.2)
        t0 = time.time()
        time.sleep(args.window)
        t1 = time.time()
        busy_turn = turn()
        t2 = time.time()
        sims.stop()
        server = json.loads((folder / "llm" / "endpoint.json").read_text())["pid"]
        rss_gb = psutil.Process(server).memory_info().rss / 1e9
    finally:
        dispatcher.close()
    return Result(name, cores, priority, core_list(pinned) if pinned else "all", threads, idle_turn, busy_turn,
                  sims.per_minute(t0, t1), sims.per_minute(t1, t2), rss_gb, (load_before, os.getloadavg()[0]))


def table(results: list[Result]) -> str:
    """One row per configuration (medians over rounds) and its ratios to ``shared``, if it ran."""
    med = statistics.median
    shared = [r for r in results if r.name == "shared"]
    ref_busy = med(r.busy_turn.seconds for r in shared) if shared else None
    full = med(r.sims_alone for r in shared) if shared else None
    lines = ["| config | llm.cores / simulation_priority | model cores, threads | turn alone s | turn with sims s | "
             "with / alone | with sims vs shared | first token s (alone / with sims) | gen tok/s (alone / with sims) "
             "| tokens | sims/min model idle | sims/min model thinking | idle / thinking vs whole machine "
             "| server RSS GB |",
             "|" + "---|" * 14]
    for name in dict.fromkeys(r.name for r in results):
        rows = [r for r in results if r.name == name]
        alone, busy = med(r.idle_turn.seconds for r in rows), med(r.busy_turn.seconds for r in rows)
        sims_alone, sims_during = med(r.sims_alone for r in rows), med(r.sims_during for r in rows)
        cells = [name, f"{rows[0].cores} / {rows[0].priority}", f"{rows[0].model_cores}, {rows[0].threads}",
                 f"{alone:.1f}", f"{busy:.1f}", f"{busy / alone:.2f}", f"{busy / ref_busy:.2f}" if ref_busy else "-",
                 f"{med(r.idle_turn.first_token for r in rows):.1f} / {med(r.busy_turn.first_token for r in rows):.1f}",
                 f"{med(r.idle_turn.gen_rate for r in rows):.1f} / {med(r.busy_turn.gen_rate for r in rows):.1f}",
                 "/".join(str(r.busy_turn.tokens) for r in rows), f"{sims_alone:.1f}", f"{sims_during:.1f}",
                 f"{sims_alone / full:.2f} / {sims_during / full:.2f}" if full else "-",
                 f"{med(r.rss_gb for r in rows):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="shared,pinned,nice,idle", help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; each runs the configs, alternating order")
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="embedded model (default: the planner's)")
    parser.add_argument("--max-tokens", type=int, default=150, help="tokens generated at most per turn")
    parser.add_argument("--window", type=float, default=20.0, help="s of simulations measured with the model idle")
    parser.add_argument("--sim-n", type=int, default=400, help="heat2d grid points per side")
    parser.add_argument("--sim-t-end", type=float, default=0.015, help="heat2d simulated time [s]")
    parser.add_argument("--quick", action="store_true", help="SmolLM2-135M, 8 s windows: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.model, args.window = "smollm2-135m", 8.0
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    site = load_site("local")
    print(f"machine cores {core_list(machine_cores())}; model {args.model}; up to {args.max_tokens} tokens a turn; "
          f"heat2d n={args.sim_n} t_end={args.sim_t_end} on 2 ranks", flush=True)
    results: list[Result] = []
    request = [0]
    with tempfile.TemporaryDirectory(prefix="physflow-thinking-cores-") as tmp:
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                r = measure(name, site, args, Path(tmp) / f"{round_}-{name}", request)
                results.append(r)
                print(f"round {round_ + 1} {name}: turn alone {r.idle_turn.seconds:.1f} s "
                      f"(first token {r.idle_turn.first_token:.1f} s, {r.idle_turn.tokens} tokens), with sims "
                      f"{r.busy_turn.seconds:.1f} s (first token {r.busy_turn.first_token:.1f} s, "
                      f"{r.busy_turn.tokens} tokens); sims/min {r.sims_alone:.1f} model idle, "
                      f"{r.sims_during:.1f} model thinking; load average {r.load[0]:.1f} -> {r.load[1]:.1f}",
                      flush=True)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
