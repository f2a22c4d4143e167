"""Readers for tables, vectors and raster metadata (the only place opening files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsm.errors import DataError, SpecError

VECTOR_EXT = {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".gml", ".kml", ".zip"}


def read_table(path: Path, *, layer: str | None = None, where: str = "") -> pd.DataFrame:
    """Read a CSV, Parquet, R data file (``.rda``/``.RData``) or vector layer as a table."""
    path = Path(path)
    ext = path.suffix.lower()
    try:
        if ext in (".csv", ".txt"):
            # pandas renames a repeated header ("slope", "slope.1"): read it as written
            _unique_columns(_csv_header(path), where or str(path))
            return pd.read_csv(path, encoding="utf-8-sig")  # some files start with a BOM
        if ext == ".parquet":
            import pyarrow.parquet as pq

            _unique_columns(pq.read_schema(path).names, where or str(path))
            return pd.read_parquet(path)
        if ext in (".rda", ".rdata"):
            import rdata

            objs = rdata.read_rda(str(path))
            frames = [v for v in objs.values() if isinstance(v, pd.DataFrame)]
            if not frames:
                raise DataError(f"{where or path}: no data frame in {path.name}")
            return frames[0]
        if ext in VECTOR_EXT:
            import geopandas as gpd

            return gpd.read_file(path, layer=layer, engine="pyogrio")
    except (DataError, SpecError):
        raise
    except Exception as err:
        raise DataError(f"{where or path}: cannot read {path.name}: "
                        f"{' '.join(str(err).split())[:300]}") from None
    raise SpecError(f"{where or path}: unsupported table format {ext!r} ({path.name})")


def _csv_header(path: Path) -> list[str]:
    """The column names of a CSV file's first line, as written."""
    import csv

    with open(path, encoding="utf-8-sig", newline="") as fh:
        return next(csv.reader(fh), [])


def _unique_columns(columns: list[Any], where: str) -> None:
    seen: set[str] = set()
    for c in columns:
        name = str(c)
        if name in seen:
            raise DataError(f"{where}: column {name!r} appears more than once in the table; "
                            "rename or drop one of them")
        seen.add(name)


def require_columns(df: pd.DataFrame, cols: list[str], *, where: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        shown = ", ".join(map(str, list(df.columns)[:30]))
        raise SpecError(f"{where}: column(s) {missing} not in the table (columns: {shown})")


def parse_labels(values: pd.Series, *, where: str) -> np.ndarray:
    """0/1 labels from ints, bools or TRUE/FALSE strings; anything else is an error."""
    s = values
    if s.dtype == bool:
        return s.to_numpy(dtype="int8")
    if s.dtype == object or str(s.dtype).startswith(("string", "str", "category")):
        m = s.astype(str).str.strip().str.lower().map(
            {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0})
        if m.isna().any():
            bad = s[m.isna()].astype(str).unique()[:5].tolist()
            raise DataError(f"{where}: label values {bad} are not 0/1 or TRUE/FALSE")
        return m.to_numpy(dtype="int8")
    v = pd.to_numeric(s, errors="coerce").to_numpy()
    ok = np.isin(v, (0, 1))
    if not ok.all():
        bad = pd.unique(v[~ok])[:5].tolist()
        raise DataError(f"{where}: label values {bad} are not 0/1")
    return v.astype("int8")


@dataclass
class RasterInfo:
    path: Path
    crs: Any
    transform: Any
    width: int
    height: int
    count: int
    descriptions: tuple[str | None, ...]
    nodata: float | None
    dtype: str
    res: tuple[float, float]
    bounds: tuple[float, float, float, float]


def raster_info(path: Path, *, where: str) -> RasterInfo:
    import rasterio

    try:
        with rasterio.open(path) as src:
            return RasterInfo(Path(path), src.crs, src.transform, src.width, src.height,
                              src.count, tuple(src.descriptions), src.nodata, src.dtypes[0],
                              src.res, tuple(src.bounds))
    except rasterio.errors.RasterioIOError as err:
        raise DataError(f"{where}: cannot open raster {path}: {err}") from None


def band_index(info: RasterInfo, band: int | str | None, *, where: str) -> int:
    """1-based band index from an index or a band description."""
    if band is None:
        return 1
    names = [d or "" for d in info.descriptions]
    if isinstance(band, str) and not band.isdigit():
        if band in names:
            return names.index(band) + 1
        raise SpecError(f"{where}: band {band!r} not in {info.path.name} (bands: "
                        f"{', '.join(n or '?' for n in names)})")
    idx = int(band)
    if not 1 <= idx <= info.count:
        raise SpecError(f"{where}: band {idx} does not exist in {info.path.name} "
                        f"(it has {info.count} band(s), numbered from 1)")
    return idx
