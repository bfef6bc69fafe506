"""Tables in local data files, as the agents of ``physflow ask`` see them.

A ``Catalog`` reads every table of the files it is given, whole, into numpy columns:

- HDF5: a compound dataset is a table of its fields; the 1-D datasets of a group that share a
  length are a table of those columns (one table per length); other arrays are listed, not
  loaded. ``units`` attributes become the columns' units. Layouts that only their writer knows
  are read by the readers ``load`` is given (``physflow.vocabulary.tables``): the command that composes
  ``ask`` passes the adapters' (nbody_pm's halo catalog gains a derived ``mass`` column) and the
  run store's (a run's ``campaign.h5`` gives one row per simulation), since the agents may import
  neither.
- CSV: a header row, then one row per line (lines starting with ``#`` are comments); a column
  whose every value reads as a number is numeric (empty cells are NaN), any other is text.
- FITS: every binary or ASCII table extension, with the ``TUNIT`` units, through astropy (an
  optional extra: ``pip install 'physflow[fits]'``).

``describe()`` is the text the coder reads before it writes any code, so it also says how code
reaches each table through ``DATA`` (data name -> file path).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from physflow.errors import CatalogError, QueryError
from physflow.vocabulary.tables import Column, FileTableReader, GroupTableReader, H5Group, Table, join_name

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
CSV_SUFFIXES = (".csv",)
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
#: A 1-D dataset with more entries than this is listed as an array, not loaded as a column.
MAX_LOADED = 20_000_000
#: Tables described in full; the rest are only named (query_catalog still reads them).
MAX_DESCRIBED = 40


@dataclass
class ArrayInfo:
    """A dataset that is not a table column (not 1-D, or too large): listed so code can read it."""

    source: str
    location: str
    shape: tuple[int, ...]
    dtype: str
    units: str = ""


@dataclass
class DataFile:
    name: str  # the key of DATA
    path: Path
    kind: str  # HDF5 | CSV | FITS
    attributes: dict[str, float] = field(default_factory=dict)  # scalar file attributes (HDF5)


@dataclass
class Catalog:
    """Every table of the data files of one question."""

    files: dict[str, DataFile] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    arrays: list[ArrayInfo] = field(default_factory=list)

    @classmethod
    def load(cls, paths: Sequence[Path], group_tables: Sequence[GroupTableReader] = (),
             file_tables: Sequence[FileTableReader] = ()) -> Catalog:
        """Read ``paths`` (files only); raises CatalogError naming the file that cannot be read.

        ``group_tables`` read an HDF5 group's columns where their layout is their own (the first
        that answers makes the group's table), ``file_tables`` the tables an HDF5 file holds
        beyond the generic ones (after them, in their order).
        """
        catalog = cls()
        names = data_names(paths)
        for name, path in zip(names, paths, strict=True):
            path = Path(path)
            if not path.is_file():
                raise CatalogError(f"{path}: no such data file" if not path.exists()
                                   else f"{path}: not a file (give the data files themselves)")
            kind = file_kind(path)
            data = DataFile(name, path.resolve(), kind)
            catalog.files[name] = data
            try:
                if kind == "HDF5":
                    tables, arrays = _read_hdf5(data, group_tables, file_tables)
                else:
                    tables, arrays = {"CSV": _read_csv, "FITS": _read_fits}[kind](data)
            except CatalogError:
                raise
            except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
                raise CatalogError(f"{path}: cannot read it as {kind}: {exc}") from None
            for table in tables:
                catalog.tables[table.name] = table
            catalog.arrays += arrays
        return catalog

    @property
    def paths(self) -> dict[str, str]:
        """The DATA mapping the code sees: data name -> absolute file path."""
        return {name: str(f.path) for name, f in self.files.items()}

    def table(self, name: str) -> Table:
        if name not in self.tables:
            raise QueryError(f"no table {name!r}; tables: {', '.join(self.tables) or 'none'}")
        return self.tables[name]

    def describe(self) -> str:
        """The files, their tables (columns, dtypes, units, row counts, ranges) and other arrays."""
        lines = ["Data files (in code, DATA[name] is the path of the file):"]
        for f in self.files.values():
            lines.append(f"- DATA[{f.name!r}]: {f.path.name} ({f.kind})")
            if f.attributes:
                shown = list(f.attributes.items())[:24]
                lines.append("  attributes: " + ", ".join(f"{k}={v:.6g}" for k, v in shown))
        lines.append("Tables (look at rows with query_catalog):")
        groups = _similar_tables(list(self.tables.values()))
        for key, group in groups[:MAX_DESCRIBED]:
            lines += _describe_group(key, group)
        rest = [t.name for _, group in groups[MAX_DESCRIBED:] for t in group]
        if rest:
            lines.append(f"- {len(rest)} more tables: {', '.join(rest[:60])}" + (" ..." if len(rest) > 60 else ""))
        if self.arrays:
            lines.append("Other arrays (not tables; read them in code):")
            for a in self.arrays[:40]:
                units = f" [{a.units}]" if a.units else ""
                lines.append(f"- DATA[{a.source!r}] {a.location}: shape {a.shape} {a.dtype}{units}")
            if len(self.arrays) > 40:
                lines.append(f"- and {len(self.arrays) - 40} more")
        return "\n".join(lines)


def data_names(paths: Sequence[Path]) -> list[str]:
    """Short names for the files: the file name without suffixes, made unique (the parent
    folder's name first, as for a run's tasks/t0003/nbody.h5, then a number)."""

    def stem(p: Path) -> str:
        name = p.name
        for suffix in sorted((*HDF5_SUFFIXES, *CSV_SUFFIXES, *FITS_SUFFIXES), key=len, reverse=True):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        return re.sub(r"\W+", "_", name).strip("_") or "data"

    stems = [stem(Path(p)) for p in paths]
    names = []
    for p, s in zip(paths, stems, strict=True):
        parent = re.sub(r"\W+", "_", Path(p).resolve().parent.name).strip("_")
        names.append(f"{parent}_{s}" if stems.count(s) > 1 and parent else s)
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


def file_kind(path: Path) -> str:
    """HDF5, CSV or FITS, from the suffix or else the file's first bytes."""
    lower = path.name.lower()
    if lower.endswith(HDF5_SUFFIXES):
        return "HDF5"
    if lower.endswith(CSV_SUFFIXES):
        return "CSV"
    if lower.endswith(FITS_SUFFIXES):
        return "FITS"
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head == b"\x89HDF\r\n\x1a\n":
        return "HDF5"
    if head.startswith(b"SIMPLE "):
        return "FITS"
    raise CatalogError(f"{path}: unknown data format (physflow ask reads HDF5 {', '.join(HDF5_SUFFIXES)}, "
                       f"CSV {', '.join(CSV_SUFFIXES)} and FITS {', '.join(FITS_SUFFIXES)})")


# -- HDF5 ------------------------------------------------------------------------------------------
def _units(obj) -> str:
    value = obj.attrs.get("units", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def _column_values(values: np.ndarray) -> np.ndarray:
    """Numbers in native byte order, or text as str."""
    if values.dtype.kind in "SO":
        return np.array([v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values], dtype=str)
    if values.dtype.kind == "U":
        return values
    return values.astype(values.dtype.newbyteorder("="))


def _axis(columns: dict[str, Column]) -> str:
    """The column that names a table split from its group: the first strictly increasing one
    (k of a power spectrum, m of a mass function), else the first."""
    for name, c in columns.items():
        v = c.values
        if c.numeric and len(v) > 1 and bool(np.all(np.diff(v.astype(float)) > 0)):
            return name
    return next(iter(columns))


def _read_hdf5(data: DataFile, group_tables: Sequence[GroupTableReader],
               file_tables: Sequence[FileTableReader]) -> tuple[list[Table], list[ArrayInfo]]:
    import h5py

    tables: list[Table] = []
    arrays: list[ArrayInfo] = []
    src = f"DATA[{data.name!r}]"
    with h5py.File(data.path, "r") as f:
        data.attributes = {k: float(v) for k, v in f.attrs.items()
                           if np.ndim(v) == 0 and isinstance(v, (int, float, np.integer, np.floating))}
        root = H5Group(data.name, f, "", {})
        own = [table for read in file_tables for table in read(root)]  # listed after the generic ones
        covered = {name.strip("/") for t in own for name in t.covers}
        for g in _groups(f, covered):
            path = g.name.strip("/")
            by_length: dict[int, dict[str, Column]] = {}
            for key, obj in g.items():
                if not isinstance(obj, h5py.Dataset):
                    continue
                location = obj.name
                if obj.dtype.names and obj.ndim == 1 and obj.shape[0] <= MAX_LOADED:
                    values = obj[...]
                    columns = {n: Column(n, _column_values(values[n]), _units(obj)) for n in obj.dtype.names
                               if values[n].ndim == 1}
                    tables.append(Table(join_name(data.name, path, key), data.name, columns,
                                        f"h5py.File({src})[{location!r}][...][FIELD]"))
                elif obj.ndim == 1 and obj.dtype.kind in "biufSOU" and obj.shape[0] <= MAX_LOADED:
                    values = obj.asstr()[...] if obj.dtype.kind in "SO" else obj[...]
                    by_length.setdefault(obj.shape[0], {})[key] = Column(key, _column_values(np.asarray(values)),
                                                                         _units(obj))
                else:
                    arrays.append(ArrayInfo(data.name, location, tuple(obj.shape), str(obj.dtype), _units(obj)))
            for columns in by_length.values():
                group = H5Group(data.name, f, path, columns)
                layout = next((t for t in (read(group) for read in group_tables) if t is not None), None)
                tables.append(layout if layout is not None else _group_table(group, split=len(by_length) > 1))
        tables += own
    return tables, arrays


def _groups(f, covered: set[str]) -> Iterator:
    """The file's groups, root first, depth first in name order, less the ``covered`` subtrees (and
    a group reached twice through hard links read once)."""
    import h5py

    seen: set = set()
    stack = [f]
    while stack:
        g = stack.pop()
        if hash(g.id) in seen:
            continue
        seen.add(hash(g.id))
        yield g
        children = [obj for key, obj in g.items() if isinstance(obj, h5py.Group)
                    and f"{g.name.strip('/')}/{key}".strip("/") not in covered]
        stack.extend(reversed(children))


def _group_table(group: H5Group, split: bool) -> Table:
    """The generic table of a group's columns, named by its axis when the group has several."""
    columns, prefix = group.columns, group.prefix
    first = next(iter(columns))
    read = f"h5py.File({group.source})[{prefix + first!r}][...]" + (" (likewise " + ", ".join(
        repr(prefix + c) for c in list(columns)[1:6]) + ")" if len(columns) > 1 else "")
    return Table(group.table_name(_axis(columns) if split else ""), group.data, columns, read)


# -- CSV -------------------------------------------------------------------------------------------
def _read_csv(data: DataFile) -> tuple[list[Table], list[ArrayInfo]]:
    with open(data.path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(line for line in fh if not line.lstrip().startswith("#"))
        header = next(reader, None)
        if not header:
            raise CatalogError(f"{data.path}: empty CSV file (a header row of column names is needed)")
        names = [h.strip() or f"column_{i + 1}" for i, h in enumerate(header)]
        if len(set(names)) != len(names):
            raise CatalogError(f"{data.path}: repeated column names in the header: {', '.join(names)}")
        cells: list[list[str]] = []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(names):
                raise CatalogError(f"{data.path}: data row {len(cells) + 1} has {len(row)} field(s); the header "
                                   f"has {len(names)}")
            cells.append(row)
    columns = {n: Column(n, _csv_column([r[i] for r in cells])) for i, n in enumerate(names)}
    src = f"DATA[{data.name!r}]"
    read = f"csv.DictReader(line for line in open({src}) if not line.startswith('#'))  # values are strings"
    return [Table(data.name, data.name, columns, read)], []


def _csv_column(cells: list[str]) -> np.ndarray:
    try:
        return np.array([float(c) if c.strip() else np.nan for c in cells], dtype=float)
    except ValueError:
        return np.array([c.strip() for c in cells], dtype=str)


# -- FITS ------------------------------------------------------------------------------------------
def _read_fits(data: DataFile) -> tuple[list[Table], list[ArrayInfo]]:
    try:
        from astropy.io import fits
    except ImportError:
        raise CatalogError(f"{data.path}: reading FITS tables needs astropy: pip install 'physflow[fits]'") from None
    found: list[tuple[str, dict[str, Column], str]] = []
    arrays: list[ArrayInfo] = []
    src = f"DATA[{data.name!r}]"
    with fits.open(data.path, memmap=False) as hdul:
        for i, hdu in enumerate(hdul):
            ext = hdu.name or f"HDU{i}"
            if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                columns: dict[str, Column] = {}
                for col in hdu.columns:
                    values = np.asarray(hdu.data[col.name]) if hdu.data is not None else np.array([])
                    if values.ndim == 1:
                        columns[col.name] = Column(col.name, _column_values(values), str(col.unit or ""))
                    else:
                        arrays.append(ArrayInfo(data.name, f"HDU {i} ({ext}) column {col.name}", values.shape,
                                                str(values.dtype), str(col.unit or "")))
                if columns:
                    found.append((ext, columns, f"astropy.io.fits.open({src})[{i}].data[COLUMN]"))
            elif hdu.data is not None:
                arrays.append(ArrayInfo(data.name, f"HDU {i} ({ext}) image", tuple(hdu.data.shape),
                                        str(hdu.data.dtype), str(hdu.header.get("BUNIT", ""))))
    tables = [Table(join_name(data.name, ext if len(found) > 1 else ""), data.name, cols, read)
              for ext, cols, read in found]
    return tables, arrays


# -- the description -------------------------------------------------------------------------------
def _similar_tables(tables: list[Table]) -> list[tuple[str, list[Table]]]:
    """Tables of the same kind for every simulation of a campaign (tasks/<id>/...) described once."""
    groups: dict[tuple[str, tuple[str, ...]], list[Table]] = {}
    for t in tables:
        key = re.sub(r"/tasks/[^/]+(/|$)", r"/tasks/<id>\1", t.name)
        groups.setdefault((key, tuple(t.columns)), []).append(t)
    return [(key if len(g) > 1 else g[0].name, g) for (key, _), g in groups.items()]


def _describe_column(c: Column) -> str:
    units = f" [{c.units}]" if c.units else ""
    if c.numeric:
        finite = c.values[np.isfinite(c.values.astype(float))] if len(c.values) else c.values
        span = f"{finite.min():.4g} .. {finite.max():.4g}" if len(finite) else "no finite values"
        missing = len(c.values) - len(finite)
        span += f", {missing} missing" if missing else ""
    else:
        span = f"{len(set(c.values.tolist()))} distinct values"
    note = f"; {c.note}" if c.note else ""
    return f"    {c.name} {c.values.dtype.name if c.numeric else 'text'}{units}: {span}{note}"


def _describe_group(key: str, group: list[Table]) -> Iterator[str]:
    t = group[0]
    if len(group) == 1:
        yield f"- table {t.name}: {t.rows} rows" + (f" ({t.note})" if t.note else "")
        yield f"  read: {t.read}"
        for c in t.columns.values():
            yield _describe_column(c)
        return
    ids = [re.search(r"/tasks/([^/]+)", g.name).group(1) for g in group]  # type: ignore[union-attr]
    rows = sorted({g.rows for g in group})
    span = f"{rows[0]}" if len(rows) == 1 else f"{rows[0]} to {rows[-1]}"
    yield f"- tables {key}, for <id> in {', '.join(ids[:12])}{' ...' if len(ids) > 12 else ''}: {span} rows each"
    yield "  columns: " + ", ".join(f"{c.name}" + (f" [{c.units}]" if c.units else "") for c in t.columns.values())
