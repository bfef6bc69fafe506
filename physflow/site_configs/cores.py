"""Core sets as Linux writes them (``taskset -c``, ``Cpus_allowed_list``): ``"0-2,5"``.

Apart from the site schema because the task payload needs them on every worker (binding a
packed MPI task's ranks), where importing the schema's pydantic models would cost each task of
a Globus Compute endpoint (a fresh interpreter per MPI task) about 0.16 s.
"""

from __future__ import annotations

import re

#: A set of cores as Linux writes it (``taskset -c``, Cpus_allowed_list): cores and ranges, comma-separated.
CORE_LIST = r"\d+(-\d+)?(,\d+(-\d+)?)*"
#: Linux numbers at most this many cores (NR_CPUS); a larger number is a typo, and a range to it
#: would be a list of billions.
MAX_CORES = 8192


def parse_cores(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]`` (sorted, once each); ValueError for anything else."""
    if not re.fullmatch(CORE_LIST, text):
        raise ValueError(f"{text!r} is not a list of cores (e.g. 1, 2-3 or 0,2)")
    cores: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if max(len(first), len(last)) > 5 or int(last or first) >= MAX_CORES:
            raise ValueError(f"core {last or first} is beyond any machine's (cores are numbered from 0 to "
                             f"{MAX_CORES - 1} at most)")
        if last and int(last) < int(first):
            raise ValueError(f"core range {part!r} runs backwards")
        cores.update(range(int(first), int(last or first) + 1))
    return sorted(cores)


def core_list(cores: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``: how Linux writes a core set, for messages."""
    parts: list[str] = []
    for core in sorted(cores):
        if parts and core == int(parts[-1].rpartition("-")[2]) + 1:
            parts[-1] = f"{parts[-1].partition('-')[0]}-{core}"
        else:
            parts.append(str(core))
    return ",".join(parts)
