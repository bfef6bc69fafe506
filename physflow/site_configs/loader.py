"""Finding and reading site YAMLs: the built-in ones shipped in this package, or a user's own
by path; ``load_site`` fills their placeholders and validates them, ``site_yaml`` writes a
resolved site back out (``physflow sites show``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from physflow.errors import SiteError, SpecError
from physflow.site_configs.placeholders import placeholder_filler
from physflow.site_configs.site import SiteSpec, check_simulation_priority, split_cores
from physflow.vocabulary.workflow import (
    line_of,
    load_yaml_with_lines,
    parse_model,
    path_kind,
    read_input_file,
    real_path,
    user_path,
)


def builtin_sites() -> dict[str, Path]:
    """Site names shipped with physflow -> their YAML files."""
    folder = resources.files("physflow.site_configs")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def site_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A built-in site's YAML, or the user's own site YAML given by path."""
    sites = builtin_sites()
    if name_or_path in sites:
        return sites[name_or_path]
    p = user_path(name_or_path)
    if not p.is_absolute() and relative_to is not None:
        p = relative_to / p
    if p.suffix in (".yaml", ".yml") and path_kind(p) == "file":
        return real_path(p)
    if p.suffix in (".yaml", ".yml") and os.path.lexists(p):  # there, but a loop, a FIFO, a device
        try:
            read_input_file(p)
        except SpecError as exc:
            raise SiteError(exc.message, exc.file) from None
    raise SiteError(f"unknown site {name_or_path!r} (built-in: {', '.join(sorted(sites))}; or a path to a site YAML)")


def site_description(name_or_path: str) -> str:
    """A site's description without filling its placeholders (for listings)."""
    data, _ = load_yaml_with_lines(site_path(name_or_path))  # bounded, as every YAML a user hands over
    return str(data.get("description", "")) if isinstance(data, dict) else ""


def load_site(name_or_path: str, relative_to: Path | None = None,
              values: Mapping[str, str] | None = None) -> SiteSpec:
    """Parse a site YAML with its placeholders filled from ``values`` (``--set``) and the
    environment; errors name the file, line and field."""
    path = site_path(name_or_path, relative_to)
    try:
        site, lines = parse_model(SiteSpec, path, fill=placeholder_filler(path, values or {}))
    except SiteError:
        raise
    except SpecError as exc:  # the same located message, typed as a site problem
        raise SiteError(exc.message, exc.file, exc.line, exc.field) from None
    for name, pool in site.pools.items():
        if pool.kind == "mpi" and pool.launcher != "mpiexec" and site.scheduler == "local":
            raise SiteError(f"pool {name}: a local site launches MPI with mpiexec", str(path), None,
                            f"pools.{name}.launcher")
    try:  # the cores of this machine, checked now rather than when the pools start
        split_cores(site)
        check_simulation_priority(site)
    except SiteError as exc:
        loc = tuple(exc.field.split(".")) if exc.field else ()
        raise SiteError(exc.message, str(path), line_of(lines, loc), exc.field) from None
    return site


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (scheduler lines, worker_init) as ``|`` blocks, as a person would."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def block_yaml(data: Any) -> str:
    """``data`` as YAML in its own key order, multi-line strings as ``|`` blocks: how a person
    writes a site, and how a Globus endpoint's config built from one reads best too."""
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False)


def site_yaml(site: SiteSpec) -> str:
    """The resolved site as YAML (every default written out); loads back as the same site."""
    return block_yaml(site.model_dump())
