"""Tables of data files: the words in which the code that knows a file's layout tells
``physflow ask`` what the file holds.

The catalog (``physflow.agents.catalog``) reads any HDF5, CSV or FITS file generically. Some
layouts only their writer knows: nbody_pm's halo catalog (a mass derived from ``group_size`` and
a file attribute), the run store's campaign.h5 (one row per simulation out of ``tasks/<id>/``
attributes). Their readers live with that knowledge, and the command that composes ``ask`` hands
them to ``Catalog.load``. They return these tables; the words sit on the ground floor because the
agents, the adapters and the store all speak them, and none of them may import another for it.

The readers are code rather than a declaration the catalog interprets: a derived column's
arithmetic and notes, or a table gathered from many groups' attributes, would need a small
language of their own that only these readers would ever speak.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Column:
    """One column: numbers (any numeric dtype) or text, with units ('' when the file gives none)."""

    name: str
    values: np.ndarray
    units: str = ""
    note: str = ""  # how a derived column was made

    @property
    def numeric(self) -> bool:
        return self.values.dtype.kind in "biuf"


@dataclass
class Table:
    """Columns of equal length from one data file. ``read`` says how code gets them from DATA."""

    name: str
    source: str
    columns: dict[str, Column]
    read: str
    note: str = ""
    #: HDF5 paths from the file's root that this table reads whole (a ``FileTableReader``'s):
    #: the catalog's generic walk skips them (campaign.h5's 100,000 task groups are one table).
    covers: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values())).values) if self.columns else 0


@dataclass
class H5Group:
    """A group of an HDF5 data file as the catalog reads it, for the readers of own layouts."""

    #: The file's name in ``DATA`` (what the coder's code indexes with).
    data: str
    #: The open ``h5py.File``.
    file: Any
    #: The group's path without slashes at either end ('' for the root).
    path: str
    #: The group's 1-D datasets of one length, as columns (empty for a file's root handed to a
    #: ``FileTableReader``).
    columns: dict[str, Column]

    @property
    def source(self) -> str:
        """How code names the file: ``DATA['<data>']``."""
        return f"DATA[{self.data!r}]"

    @property
    def prefix(self) -> str:
        """The group's absolute path with a trailing slash, to which a dataset's name is added."""
        return f"/{self.path}/" if self.path else "/"

    def table_name(self, *parts: str) -> str:
        """A table's name in this group: data name, group path and ``parts`` (``join_name``)."""
        return join_name(self.data, self.path, *parts)


def join_name(*parts: str) -> str:
    """A table's name from its parts, joined by '/'; empty parts (a root's path) are left out."""
    return "/".join(p for p in parts if p)


#: Reads the table of a group's columns where their layout is its own (a halo catalog), else
#: None, and the catalog makes its generic table of them.
GroupTableReader = Callable[[H5Group], Table | None]
#: Reads tables a whole file holds beyond the generic ones (campaign.h5's simulations); called
#: with the file's root before its groups are read, [] for a file that is not its layout; the
#: groups its tables cover (``Table.covers``) are not read again.
FileTableReader = Callable[[H5Group], list[Table]]
