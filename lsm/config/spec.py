"""Region specs: one YAML file describes one region's factors and landslides.

A spec is validated by pydantic models with ``extra="forbid"``; any error is
turned into one line naming the file, the key and what is wrong.

Example
-------
>>> spec = load_region("hongkong")            # doctest: +SKIP
>>> spec.factor_names                          # doctest: +SKIP
['landuse', 'lithology', 'elevation', ...]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lsm.config.factors import CANONICAL_FACTORS, DERIVABLE_FACTORS, FactorKind
from lsm.errors import SpecError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_name(v: str) -> str:
    """``v`` if it can name one file or folder: not empty, no separator, not ``.``/``..``.

    Region names become run folders and map file names; a name such as
    ``../../x`` would write outside them.

    Example
    -------
    >>> check_name("hongkong")
    'hongkong'
    """
    if not v.strip():
        raise ValueError("must not be empty")
    if "/" in v or "\\" in v or "\0" in v or v in (".", ".."):
        raise ValueError(f"{v!r} must be a single file name (no '/', '\\', '.' or '..')")
    return v


def check_relative_path(v: str) -> str:
    """``v`` if it is a relative path that stays inside its folder (``a/b.csv``, no ``..``).

    Example
    -------
    >>> check_relative_path("jiangxi/yushan/yushan.csv")
    'jiangxi/yushan/yushan.csv'
    """
    if not v.strip():
        raise ValueError("must not be empty")
    parts = v.split("/")
    if "\\" in v or "\0" in v or re.match(r"^[A-Za-z]:", v) or \
            any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{v!r} must be a relative path inside the folder ('/' between "
                         "names; no '..', '.', empty part, leading '/', '\\' or drive)")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class LocalCopy(_Model):
    """An equivalent file a data directory may hold instead of the download."""

    name: str = Field(description="Path of the file relative to the data directory.")
    sha256: str = Field(description="sha256 of that file.")

    _name = field_validator("name")(classmethod(lambda cls, v: check_relative_path(v)))

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.lower()
        if not _SHA256.match(v):
            raise ValueError(f"not a sha256 hex digest: {v!r}")
        return v


class FileRef(_Model):
    """A file: a local ``path`` (relative to the spec) or a ``url`` with its ``sha256``.

    ``name`` is where the file lives below a data directory (``LSM_DATA_DIR``) and
    the download cache; it defaults to the URL's last part.  ``local_copies``
    lists equivalent files (e.g. a CSV export of an R data file) that a data
    directory may hold instead, each with its own checksum.
    """

    path: str | None = Field(None, description="Local path, relative to the spec file.")
    url: str | None = Field(None, description="Public URL to download from.")
    sha256: str | None = Field(None, description="sha256 hex digest of the file.")
    name: str | None = Field(None, description="Relative path inside a data dir / the cache.")
    local_copies: list[LocalCopy] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        return v if v is None else check_relative_path(v)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.lower()
        if not _SHA256.match(v):
            raise ValueError(f"not a sha256 hex digest: {v!r}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> FileRef:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of 'path' or 'url'")
        if self.url is not None and self.sha256 is None:
            raise ValueError("a 'url' needs its 'sha256' so the download can be checked")
        if self.url is not None and self.name is None:
            try:
                check_name(self.cache_name)
            except ValueError:
                raise ValueError(f"url: its last part {self.cache_name!r} cannot name the "
                                 "downloaded file; give 'name'") from None
        return self

    @property
    def cache_name(self) -> str:
        if self.name:
            return self.name
        if self.url:
            return self.url.rstrip("/").rsplit("/", 1)[-1]
        return Path(self.path or "").name


def _coerce_file(v: Any) -> Any:
    if isinstance(v, str):
        if v.startswith(("http://", "https://")):
            raise ValueError("a URL needs its sha256: write {url: ..., sha256: ...}")
        return {"path": v}
    return v


class FactorSource(_Model):
    """Where one canonical factor comes from, and how to clean it."""

    path: FileRef | None = Field(None, description="Raster file (raster regions).")
    band: int | str | None = Field(
        None, description="Band: 1-based index or band description. Default 1."
    )
    column: str | None = Field(None, description="Column in the samples table (table regions).")
    kind: Literal["continuous", "categorical"] | None = Field(
        None, description="Needed for names outside the canonical list."
    )
    scale: float = Field(1.0, description="Multiply stored values by this (e.g. 1e-4 for NDVI).")
    offset: float = Field(0.0, description="Then add this.")
    nodata: list[float] = Field(
        default_factory=list, description="Sentinel values that mean 'no data' (before scaling)."
    )
    replace: dict[float, float] = Field(
        default_factory=dict,
        description="Stored value -> true value (before scaling), e.g. {0.000001: 0} for a "
        "placeholder that means zero.",
    )
    valid_range: tuple[float, float] | None = Field(
        None, description="Values outside [min, max] (after scaling) become missing."
    )
    categories: dict[str, str] | None = Field(
        None, description="Categorical: local code -> name in a shared legend."
    )

    _coerce = field_validator("path", mode="before")(classmethod(lambda cls, v: _coerce_file(v)))

    @field_validator("categories", mode="before")
    @classmethod
    def _keys_to_str(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {_code_str(k): str(val) for k, val in v.items()}
        return v


def _code_str(v: Any) -> str:
    """Canonical string for a category code: 3, 3.0 and '3' are all '3'."""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


class DeriveSpec(_Model):
    """Terrain factors computed from a DEM factor of the same spec."""

    dem: str = Field("elevation", description="Name of the DEM factor in 'factors'.")
    factors: list[str] = Field(
        default_factory=lambda: ["slope", "aspect"], description="Factors to derive."
    )

    @field_validator("factors")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if f not in DERIVABLE_FACTORS]
        if bad:
            raise ValueError(f"cannot derive {bad}; derivable: {list(DERIVABLE_FACTORS)}")
        return v


class InventorySpec(_Model):
    """Landslide inventory of a raster region."""

    path: FileRef
    layer: str | None = Field(None, description="Layer of a multi-layer vector file.")
    crs: str | None = Field(None, description="CRS of the inventory; default the file's own.")
    x: str | None = Field(None, description="CSV: x column.")
    y: str | None = Field(None, description="CSV: y column.")
    label: str | Literal[False] | None = Field(
        None, description="0/1 column: rows are used as given (no absences drawn). Unset: a "
        "0/1 column named label, landslide(s), class or presence holding both values is used, "
        "with a warning. false: every row is a landslide, whatever its columns."
    )

    @field_validator("label", mode="before")
    @classmethod
    def _label(cls, v: Any) -> Any:
        if v is True or (v is not None and v is not False and not isinstance(v, str)):
            raise ValueError(f"{v!r}: give the name of a 0/1 column, or false")
        return v
    polygons: Literal["centroid", "all_pixels"] = Field(
        "centroid",
        description="How polygons become presence points: their centroid (one point each, the "
        "default) or every pixel whose centre falls inside.",
    )

    _coerce = field_validator("path", mode="before")(classmethod(lambda cls, v: _coerce_file(v)))


class AbsenceSpec(_Model):
    """How non-landslide points are drawn."""

    ratio: float = Field(1.0, gt=0, le=100, description="Absences per presence.")
    count: int | None = Field(None, gt=0, description="Absolute number; overrides ratio.")
    min_distance: float = Field(
        0.0, ge=0, description="Minimum distance from any landslide, in map units."
    )
    seed: int = 0


class LabelFile(_Model):
    """Labels kept in a second table, joined row by row."""

    path: FileRef
    column: str

    _coerce = field_validator("path", mode="before")(classmethod(lambda cls, v: _coerce_file(v)))


class SamplesSpec(_Model):
    """Table of sampled points (tabular regions)."""

    path: FileRef
    label: str | LabelFile = Field(
        "label", description="0/1 label column, or {path, column} of a second table (same rows)."
    )
    x: str | None = None
    y: str | None = None
    crs: str | None = None
    layer: str | None = None

    _coerce = field_validator("path", mode="before")(classmethod(lambda cls, v: _coerce_file(v)))


class FoldSpec(_Model):
    """Spatial cross-validation folds."""

    n_folds: int = Field(5, ge=2, le=50)
    block_size: float | None = Field(
        None, gt=0, description="Block edge in map units; default: extent / 6."
    )
    seed: int = 0


class AoiSpec(_Model):
    """Area of interest: bounds or a polygon file."""

    bounds: tuple[float, float, float, float] | None = Field(
        None, description="minx, miny, maxx, maxy in the grid CRS."
    )
    path: FileRef | None = None

    _coerce = field_validator("path", mode="before")(classmethod(lambda cls, v: _coerce_file(v)))

    @model_validator(mode="after")
    def _one(self) -> AoiSpec:
        if (self.bounds is None) == (self.path is None):
            raise ValueError("give exactly one of 'bounds' or 'path'")
        if self.bounds is not None:
            x0, y0, x1, y1 = self.bounds
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"bounds {self.bounds} are empty (need minx<maxx, miny<maxy)")
        return self


class RegionSpec(_Model):
    """One region: factors plus either an inventory (raster region) or samples (table)."""

    name: str = Field(description="Short name, used for run folders and map file names "
                      "(one file name: no '/', '\\' or '..').")
    description: str = ""
    citation: str = ""
    crs: str | None = Field(None, description="Grid CRS; default the first factor raster's.")
    resolution: float | None = Field(None, gt=0, description="Grid cell size in CRS units.")
    chunks: int = Field(512, ge=16, le=8192, description="Dask chunk edge in pixels.")
    factors: dict[str, FactorSource]
    derive: DeriveSpec | None = None
    inventory: InventorySpec | None = None
    absences: AbsenceSpec = Field(default_factory=AbsenceSpec)
    samples: SamplesSpec | None = None
    aoi: AoiSpec | None = None
    folds: FoldSpec = Field(default_factory=FoldSpec)
    exclude_from_transfer: list[str] = Field(
        default_factory=list, description="Factors used in this region only (e.g. InSAR 'DV')."
    )

    # set by load_region, not part of the YAML
    base_dir: Path = Field(default=Path("."), exclude=True)
    source_file: Path | None = Field(default=None, exclude=True)

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))

    @field_validator("crs")
    @classmethod
    def _crs(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            CRS.from_user_input(v)
        except CRSError:
            raise ValueError(f"unknown CRS {v!r}") from None
        return v

    @model_validator(mode="after")
    def _check(self) -> RegionSpec:
        if (self.inventory is None) == (self.samples is None):
            raise ValueError("give exactly one of 'inventory' (raster region) or 'samples' (table)")
        if not self.factors:
            raise ValueError("'factors' is empty")
        for name, f in self.factors.items():
            if name not in CANONICAL_FACTORS and f.kind is None:
                raise ValueError(
                    f"factors.{name}: not a canonical factor name, so it needs 'kind' "
                    f"(canonical: {', '.join(CANONICAL_FACTORS)})"
                )
            if self.is_table:  # the wrong key first: it says more than "needs 'column'"
                if f.path is not None:
                    raise ValueError(f"factors.{name}: a table region takes 'column', not 'path'")
                if f.column is None:
                    raise ValueError(f"factors.{name}: a table region needs 'column'")
            else:
                if f.column is not None:
                    raise ValueError(f"factors.{name}: a raster region takes 'path', not 'column'")
                if f.path is None:
                    raise ValueError(f"factors.{name}: a raster region needs 'path'")
        if self.derive is not None:
            if self.is_table:
                raise ValueError("derive: terrain derivation needs a raster region")
            if self.derive.dem not in self.factors:
                raise ValueError(f"derive.dem: {self.derive.dem!r} is not in 'factors'")
        return self

    def where(self, key: str) -> str:
        """``"<spec file>: <key>"``, the prefix of every error about this spec."""
        return f"{self.source_file or self.name}: {key}"

    @property
    def is_table(self) -> bool:
        return self.samples is not None

    def kind_of(self, name: str) -> FactorKind:
        from lsm.config.factors import factor_kind

        src = self.factors.get(name)
        return factor_kind(name, src.kind if src is not None else None)

    @property
    def factor_names(self) -> list[str]:
        """All factors the region offers: declared ones, then derived ones."""
        names = list(self.factors)
        if self.derive is not None:
            names += [f for f in self.derive.factors if f not in names]
        return names

    @property
    def transfer_factor_names(self) -> list[str]:
        return [f for f in self.factor_names if f not in self.exclude_from_transfer]

    def file_refs(self) -> dict[str, FileRef]:
        """Every file the spec names, keyed by the spec key that names it."""
        refs: dict[str, FileRef] = {}
        for name, f in self.factors.items():
            if f.path is not None:
                refs[f"factors.{name}.path"] = f.path
        if self.inventory is not None:
            refs["inventory.path"] = self.inventory.path
        if self.samples is not None:
            refs["samples.path"] = self.samples.path
            if isinstance(self.samples.label, LabelFile):
                refs["samples.label.path"] = self.samples.label.path
        if self.aoi is not None and self.aoi.path is not None:
            refs["aoi.path"] = self.aoi.path
        return refs


# ---------------------------------------------------------------------------
# loading


def builtin_spec_dir() -> Path:
    """Folder of the specs shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "data_specs"


def builtin_regions() -> list[str]:
    names = sorted(p.stem for p in builtin_spec_dir().glob("*.yaml"))
    return names + ["demo-source", "demo-target"]


def format_validation_error(err: ValidationError, source: str) -> str:
    """Turn pydantic's multi-line report into one line: file: key: message.

    An unknown key is reported before anything else: a typo (``factor:``) also
    makes the intended key "missing", and the typo is what the user must fix.
    """
    import difflib

    errors = err.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    first = unknown[0] if unknown else errors[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-after"))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        key = str(first["loc"][-1])
        missing = [str(e["loc"][-1]) for e in errors
                   if e["type"] == "missing" and e["loc"][:-1] == first["loc"][:-1]]
        close = difflib.get_close_matches(key, missing, n=1)
        msg = f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    elif first["type"] == "missing":
        msg = "required key is missing"
    elif not loc and re.match(r"^[\w.]+: ", msg):  # a model check naming its key itself
        loc, msg = msg.split(": ", 1)
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {loc or '<top>'}: {msg}{extra}"


def parse_region(data: Any, *, source: str = "<spec>", base_dir: Path | None = None) -> RegionSpec:
    """Validate a mapping (parsed YAML) into a :class:`RegionSpec`."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a region spec must be a YAML mapping, "
                        f"got {type(data).__name__}")
    try:
        spec = RegionSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None
    spec.base_dir = base_dir or Path(".")
    return spec


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (where plain YAML
    loaders keep the last one silently: a factor defined twice, ``name`` twice)."""


def _mapping_no_duplicates(loader: _StrictLoader, node: yaml.MappingNode,
                           deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})",
                    key_node.start_mark)
        except TypeError:  # an unhashable key: let the base constructor report it
            break
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _mapping_no_duplicates)


def parse_yaml(text: str) -> Any:
    """Parse YAML text safely (no tags run code), refusing duplicate keys."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: Path) -> Any:
    """Read a YAML file: one-line :class:`SpecError` if unreadable, not UTF-8 text, not
    valid YAML, or holding a duplicate key."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not a text (UTF-8) YAML file: byte {err.start} is "
                        f"0x{err.object[err.start]:02x}") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder, not a YAML file") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read: {err.strerror}") from None
    if "\x00" in text:
        raise SpecError(f"{path}: not a text YAML file (it holds NUL bytes)")
    try:
        return parse_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}:{where}: not valid YAML: {getattr(err, 'problem', err)}") from None


def resolve_region_path(name_or_path: str | Path) -> Path | None:
    """Path of a spec given a file path or a built-in name; None for demo regions."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise SpecError(f"{p}: no such region spec file")
        return p
    name = str(name_or_path)
    if name in ("demo-source", "demo-target"):
        return None
    cand = builtin_spec_dir() / f"{name}.yaml"
    if cand.exists():
        return cand
    import difflib

    known = [*builtin_regions(), "demo-source", "demo-target"]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SpecError(
        f"{name!r}: not a spec file nor a built-in region "
        f"(built-in: {', '.join(builtin_regions())}){hint}"
    )


def load_region(name_or_path: str | Path) -> RegionSpec:
    """Load a region spec by built-in name (``hongkong``) or YAML path.

    The demo regions (``demo-source``, ``demo-target``) are generated on first
    use into the cache (see :func:`lsm.datasets.demo.ensure_demo`).
    """
    path = resolve_region_path(name_or_path)
    if path is None:
        from lsm.datasets.demo import ensure_demo

        path = ensure_demo() / f"{name_or_path}.yaml"
    data = load_yaml(path)
    spec = parse_region(data, source=str(path), base_dir=path.resolve().parent)
    spec.source_file = path
    return spec


def dump_region(spec: RegionSpec) -> str:
    """YAML text of a spec (without defaults), for templates and round trips."""
    data = spec.model_dump(mode="json", exclude_defaults=True, exclude={"base_dir", "source_file"})
    return yaml.safe_dump(data, sort_keys=False)
