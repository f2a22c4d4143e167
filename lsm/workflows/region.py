"""Load a region: its stack (raster regions), statistics and training table."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from lsm.config.spec import LabelFile, RegionSpec
from lsm.errors import DataError, SamplingError, SpecError
from lsm.io.fetch import resolve_file
from lsm.io.readers import parse_labels, read_table, require_columns
from lsm.sampling.folds import random_folds, spatial_folds
from lsm.stack.clean import category_names, clean_values


@dataclass
class RegionData:
    """Everything a workflow needs about one region."""

    spec: RegionSpec
    table: pd.DataFrame  # x, y, factors..., label, fold
    stats: dict[str, Any]
    kinds: dict[str, str]
    stack: xr.Dataset | None = None
    split: str = "spatial"
    notes: list[str] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def factors(self) -> list[str]:
        return list(self.kinds)



def _file(spec: RegionSpec, ref: Any, key: str, checksums: dict[str, str], progress: bool):
    from lsm.io.artifacts import sha256_file

    p = resolve_file(ref, base_dir=spec.base_dir, where=spec.where(key), progress=progress)
    checksums[key] = ref.sha256 or sha256_file(p)
    return p


def load_region_data(spec: RegionSpec, *, progress: bool = True,
                     factors: list[str] | None = None) -> RegionData:
    """Build the training table (and lazy stack) of ``spec``.

    ``factors`` restricts the factors used (default: all the region has).
    """
    kinds = {f: spec.kind_of(f) for f in spec.factor_names}
    if factors is not None:
        unknown = [f for f in factors if f not in kinds]
        if unknown:
            raise SpecError(f"{spec.where('factors')}: region has no factor(s) {unknown} "
                            f"(it has: {', '.join(kinds)})")
        kinds = {f: kinds[f] for f in factors}
    if spec.is_table:
        return _table_region(spec, kinds, progress)
    return _raster_region(spec, kinds, progress)


def _geographic(crs: Any) -> str | None:
    """The name of ``crs`` if it is geographic (units: degrees), else None."""
    if crs is None:
        return None
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        c = CRS.from_user_input(crs)
    except CRSError:
        return None
    return c.name if c.is_geographic else None


def _check_distance_units(spec: RegionSpec, crs: Any, notes: list[str]) -> None:
    """Warn when distances of the spec will be read in degrees but look like metres."""
    name = _geographic(crs)
    if name is None:
        return
    keys = {"folds.block_size": spec.folds.block_size}
    if not spec.is_table:
        keys["absences.min_distance"] = spec.absences.min_distance
    for key, value in keys.items():
        if value is not None and value > 1.0:  # one degree is about 111 km
            msg = (f"{spec.where(key)}: {value:g} is read in degrees, since the CRS ({name}) "
                   "is geographic, and looks like metres; give it in degrees or use a "
                   "projected CRS")
            notes.append(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)


def _finish(spec: RegionSpec, table: pd.DataFrame, has_xy: bool, notes: list[str],
            crs: Any = None) -> tuple[pd.DataFrame, str]:
    fs = spec.folds
    try:
        if has_xy:
            table["fold"] = spatial_folds(table["x"].to_numpy(), table["y"].to_numpy(),
                                          n_folds=fs.n_folds, block_size=fs.block_size,
                                          seed=fs.seed)
            return table, "spatial"
        notes.append("no coordinates: folds and hold-outs are random, not spatial")
        table["fold"] = random_folds(len(table), n_folds=fs.n_folds, seed=fs.seed)
    except SamplingError as err:
        units = " (degrees: the CRS is geographic)" if has_xy and _geographic(crs) else ""
        raise SamplingError(f"{spec.where('folds')}: {err}{units}") from None
    return table, "random"


def _table_region(spec: RegionSpec, kinds: dict[str, str], progress: bool) -> RegionData:
    from lsm.stack.stats import table_statistics

    s = spec.samples
    assert s is not None
    checksums: dict[str, str] = {}
    notes: list[str] = []
    where = spec.where("samples.path")
    raw = read_table(_file(spec, s.path, "samples.path", checksums, progress), layer=s.layer,
                     where=where)
    cols = [spec.factors[f].column for f in kinds if f in spec.factors]
    require_columns(raw, [c for c in cols if c], where=where)
    if isinstance(s.label, LabelFile):
        lw = spec.where("samples.label.path")
        lab = read_table(_file(spec, s.label.path, "samples.label.path", checksums, progress),
                         where=lw)
        require_columns(lab, [s.label.column], where=lw)
        if len(lab) != len(raw):
            raise DataError(f"{lw}: {len(lab)} rows, but the samples table has {len(raw)}; "
                            "labels are joined row by row")
        labels = parse_labels(lab[s.label.column], where=f"{lw} column {s.label.column!r}")
    else:
        require_columns(raw, [s.label], where=spec.where("samples.label"))
        labels = parse_labels(raw[s.label], where=f"{where} column {s.label!r}")
    if len(raw) == 0:
        raise DataError(f"{where}: the table has no rows (a header only?)")
    if labels.min() == labels.max():
        what = "landslides (1)" if labels[0] == 1 else "non-landslides (0)"
        raise DataError(f"{where}: every one of its {len(labels)} rows is labelled {what}; a "
                        "table region needs both classes")
    table = pd.DataFrame(index=pd.RangeIndex(len(raw)))
    has_xy = s.x is not None and s.y is not None
    if has_xy:
        require_columns(raw, [s.x, s.y], where=where)
        for axis, col_name in (("x", s.x), ("y", s.y)):
            v = numeric_column(raw[col_name], where=f"{where} column {col_name!r}")
            if np.isnan(v).any():
                i = int(np.flatnonzero(np.isnan(v))[0])
                raise DataError(f"{where} column {col_name!r}: {int(np.isnan(v).sum())} rows "
                                f"have no {axis} coordinate (first: row {i + 2} of the file); "
                                "fill or remove them (spatial folds need every point)")
            table[axis] = v
    for f in kinds:
        src = spec.factors[f]
        col = raw[src.column]
        if kinds[f] == "categorical":
            if pd.api.types.is_numeric_dtype(col):
                col = clean_values(col, src)
            table[f] = category_names(col, src)
        else:
            num = numeric_column(col, where=f"{where} column {src.column!r}")
            table[f] = clean_values(num, src)
    table["label"] = labels
    if has_xy:
        _check_distance_units(spec, s.crs, notes)
    table, split = _finish(spec, table, has_xy, notes, s.crs)
    stats = table_statistics(table, kinds)
    table.attrs["crs"] = s.crs
    return RegionData(spec, table, stats, kinds, None, split, notes, checksums)


#: Spellings of a missing value in text columns (any case, after stripping).
MISSING_TEXT = frozenset({"", "na", "n/a", "nan", "null", "none", "-", "?"})


def numeric_column(col: pd.Series, *, where: str) -> np.ndarray:
    """A table column as float64, with missing values as NaN.

    A cell that is neither a number nor an obvious missing value (``NA``, empty, ...)
    is an error naming the column, row and value (``'steep'``, ``'12,5'``), and so is an
    infinite value: silently treating them as missing would change the samples.
    """
    num = pd.to_numeric(col, errors="coerce")
    v = num.to_numpy(dtype="float64", na_value=np.nan)
    if col.dtype == object or pd.api.types.is_string_dtype(col):
        text = col.astype(str).str.strip()
        bad = np.isnan(v) & col.notna().to_numpy() & \
            ~text.str.lower().isin(MISSING_TEXT).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = text.iloc[i]
            hint = " (a decimal comma? write 12.5)" if "," in value else ""
            raise DataError(f"{where}: row {i + 2} of the file holds {value!r}, not a number"
                            f"{hint}; {int(bad.sum())} such cell(s)")
    inf = np.isinf(v)
    if inf.any():
        i = int(np.flatnonzero(inf)[0])
        raise DataError(f"{where}: row {i + 2} of the file holds {v[i]!r}, not a finite "
                        f"value; {int(inf.sum())} such cell(s)")
    return v


def _inventory(spec: RegionSpec, crs: Any, checksums: dict[str, str], progress: bool):
    import geopandas as gpd

    inv = spec.inventory
    assert inv is not None
    where = spec.where("inventory.path")
    path = _file(spec, inv.path, "inventory.path", checksums, progress)
    df = read_table(path, layer=inv.layer, where=where)
    if not isinstance(df, gpd.GeoDataFrame):
        if inv.x is None or inv.y is None:
            raise SpecError(f"{where}: {path.name} is a plain table; give inventory.x and "
                            "inventory.y (and inventory.crs)")
        require_columns(df, [inv.x, inv.y], where=where)
        df = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df[inv.x], df[inv.y]),
                              crs=inv.crs or crs)
    elif inv.crs is not None:
        df = df.set_crs(inv.crs, allow_override=True)
    if df.crs is None:
        raise SpecError(f"{where}: {path.name} has no CRS; set inventory.crs")
    df = df[df.geometry.notna() & ~df.geometry.is_empty].to_crs(crs)
    if len(df) == 0:
        raise DataError(f"{where}: {path.name} holds no landslide geometries")
    return df


#: Column names (any case) that, holding 0/1 values, obviously label an inventory's rows.
LABEL_NAMES = ("label", "landslide", "landslides", "class", "presence")


def _detect_label(spec: RegionSpec, inv: Any, notes: list[str]) -> str | None:
    """The inventory's obvious 0/1 label column when the spec names none (with a warning).

    Without it every row, the 0s included, would be taken for a landslide.
    """
    for col in inv.columns:
        if str(col).strip().lower() not in LABEL_NAMES or col == inv.geometry.name:
            continue
        try:
            lab = parse_labels(inv[col], where="")
        except DataError:
            continue
        if lab.size and lab.min() == 0 and lab.max() == 1:
            msg = (f"{spec.where('inventory.label')}: not set, but the inventory's column "
                   f"{col!r} holds 0/1 values ({int((lab == 0).sum())} zeros): used as labels, "
                   f"0 = not a landslide, no absences drawn; set inventory.label: {col} to "
                   "confirm, or false to take every row as a landslide")
            notes.append(msg)
            warnings.warn(msg, UserWarning, stacklevel=4)
            return str(col)
    return None


def _raster_region(spec: RegionSpec, kinds: dict[str, str], progress: bool) -> RegionData:
    from lsm.sampling.points import (
        extract_values,
        pixel_index,
        polygon_pixels,
        sample_absences,
    )
    from lsm.stack.build import build_stack, stack_grid, valid_mask
    from lsm.stack.stats import stack_statistics

    checksums: dict[str, str] = {}
    notes: list[str] = []
    ds = build_stack(spec, progress=progress)
    for key, ref in spec.file_refs().items():
        if key.startswith("factors."):
            checksums[key] = ref.sha256 or ""
    ds = ds[list(kinds)]
    grid = stack_grid(ds)
    _check_distance_units(spec, grid.crs, notes)
    inv = _inventory(spec, grid.crs, checksums, progress)
    t, w, h = grid.transform, grid.width, grid.height
    valid = valid_mask(ds).compute().to_numpy()
    if not valid.any():
        _raise_no_valid_pixel(spec, ds)

    label_col = spec.inventory.label if spec.inventory else None
    detected = label_col is None
    if detected:
        label_col = _detect_label(spec, inv, notes)
    labels_given = None
    if label_col:
        require_columns(inv, [label_col], where=spec.where("inventory.label"))
        labels_given = parse_labels(inv[label_col], where=spec.where("inventory.label"))
    geom_types = set(inv.geom_type.unique())
    if geom_types <= {"Point"}:
        rows, cols, inside = pixel_index(t, inv.geometry.x.to_numpy(), inv.geometry.y.to_numpy(),
                                         w, h)
        lab = labels_given if labels_given is not None else np.ones(len(inv), dtype="int8")
        rows, cols, lab = rows[inside], cols[inside], lab[inside]
        if (~inside).any():
            notes.append(f"{int((~inside).sum())} inventory points lie outside the grid, skipped")
    elif spec.inventory is not None and spec.inventory.polygons == "all_pixels":
        if labels_given is not None and detected:
            raise SpecError(f"{spec.where('inventory.label')}: column {label_col!r} holds 0/1 "
                            "labels, which 'polygons: all_pixels' cannot use; set "
                            "inventory.label: false if every polygon is a landslide, or use "
                            "polygons: centroid")
        if labels_given is not None:
            raise SpecError(f"{spec.where('inventory.polygons')}: 'all_pixels' with a label "
                            "column is not supported; use centroid")
        rows, cols = polygon_pixels(list(inv.geometry), t, w, h)
        lab = np.ones(rows.size, dtype="int8")
    else:
        cent = inv.geometry.centroid
        rows, cols, inside = pixel_index(t, cent.x.to_numpy(), cent.y.to_numpy(), w, h)
        lab = labels_given if labels_given is not None else np.ones(len(inv), dtype="int8")
        rows, cols, lab = rows[inside], cols[inside], lab[inside]
    ok = valid[rows, cols]
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} inventory points fall on pixels with missing factors, "
                     "skipped")
    rows, cols, lab = rows[ok], cols[ok], lab[ok]
    if (lab == 1).sum() == 0:
        raise SamplingError(f"{spec.where('inventory')}: no landslide falls on a valid pixel")
    if labels_given is None:
        a = spec.absences
        n_abs = a.count or int(round(a.ratio * int((lab == 1).sum())))
        ar, ac = sample_absences(valid, t, list(inv.geometry), n=n_abs,
                                 min_distance=a.min_distance, seed=a.seed, exclude=(rows, cols))
        rows = np.concatenate([rows, ar])
        cols = np.concatenate([cols, ac])
        lab = np.concatenate([lab, np.zeros(ar.size, dtype="int8")])
    else:
        notes.append("inventory carries its own labels: used as given, no absences drawn")
    values = extract_values(ds, rows, cols, list(kinds))
    table = pd.DataFrame({"x": t.c + t.a * (cols + 0.5), "y": t.f + t.e * (rows + 0.5),
                          "row": rows, "col": cols})
    for f in kinds:
        v = values[f].to_numpy()
        table[f] = category_names(v, spec.factors.get(f)) if kinds[f] == "categorical" else v
    table["label"] = lab
    table, split = _finish(spec, table, True, notes, grid.crs)
    stats = stack_statistics(
        ds, kinds,
        category_names=lambda f, codes: list(category_names(np.asarray(codes),
                                                            spec.factors.get(f))))
    table.attrs["crs"] = grid.crs.to_string()
    return RegionData(spec, table, stats, kinds, ds, split, notes, checksums)


def _raise_no_valid_pixel(spec: RegionSpec, ds: Any) -> None:
    """No pixel has every factor: name the factor(s) with no valid value at all."""
    import dask

    counts = dask.compute({f: ds[f].notnull().sum() for f in ds.data_vars})[0]
    empty = [f for f, n in counts.items() if int(n) == 0]
    if empty:
        f = empty[0]
        src = spec.factors.get(f)
        ref = getattr(src, "path", None)
        file = getattr(ref, "path", None) or getattr(ref, "name", None) or getattr(ref, "url", None)
        path = f" ({Path(str(file)).name})" if file else ""
        raise DataError(f"{spec.where(f'factors.{f}')}{path}: no valid value on the region's "
                        "grid (all nodata, or outside valid_range)")
    raise DataError(f"{spec.where('factors')}: no pixel has a valid value of every factor "
                    "(their valid areas do not intersect)")
