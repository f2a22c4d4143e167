"""Pipelines: one YAML file composes fits and fine-tunes into a study.

A pipeline names its source and target regions, model families, shot counts,
repeats and normalisations; :func:`lsm.workflows.pipeline.run_pipeline` turns
it into steps (fit, fine-tune, derived region), runs them, resumes after an
interruption and writes a results folder.  It is validated like a region
spec: pydantic models with ``extra="forbid"``, any error reported on one
line naming the file and the key.

Schema
------
Top level:

``name``
    Pipeline name (letters, digits, ``_.-``); results go to ``runs/pipelines/<name>``.
``out``
    Results folder, relative to the working directory (default
    ``runs/pipelines/<name>``, an ignored folder; ``lsm run --out`` overrides both).
``seed``
    Default seed of every study and derived region.
``regions``
    Derived regions, usable wherever a region is named: ``{from: REGION,
    fraction: F, part: first|rest, order: random|compact, block_size: B}``
    takes the spatial blocks of ``from`` in a seeded order until their share
    of its points comes closest to ``F`` (``part: first``), or keeps the
    other blocks (``part: rest``).  ``order: random`` spreads the blocks over the
    region; ``compact`` grows one contiguous area from a seeded start block.
``studies``
    A list; each has a ``kind``, one of the registered study kinds
    (:data:`STUDY_CONFIGS`; built in):

    ``shots``
        Fit ``source`` once per normalisation, fine-tune every ``targets``
        entry at every ``shots`` count.  A K larger than a target's training
        pool allows is skipped with a note.
    ``source_scale``
        Nested subsets of ``source`` (``fractions``, spatial blocks in one
        seeded order, so 10% is inside 25% is inside 50% ...), each fitted
        and fine-tuned on ``target`` at ``shots``.
    ``progressive``
        ``chain: [A, B, C]``: fit A, fine-tune B from it, fine-tune C from
        the B run; compared with C fine-tuned directly from A (same shots,
        repeats and seed, so the same test set).

    Every study also takes ``id`` (default: its kind), ``models``, ``norms``,
    ``seed``, ``cv`` (spatial cross-validation of the source fits), ``device``
    and every fine-tune option of :class:`lsm.config.run.FinetuneOptions`
    (``repeats``, ``test_fraction``, ``prevalence``, ``anchor``, ``reweight``).

A study kind is a config class here (a subclass of :class:`StudyOptions`
registered with :func:`register_study_config`) and its steps, tables and
figures in :mod:`lsm.workflows.studies`; a new kind is one module there.

Regions are built-in names (``hongkong``, ``demo-source``, ...), names from
``regions``, or spec files (``.yaml``) relative to the pipeline file.

Example
-------
>>> cfg = load_pipeline("pipelines/demo.yaml")       # doctest: +SKIP
>>> [s.kind for s in cfg.studies]                     # doctest: +SKIP
['shots', 'source_scale', 'progressive']
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from lsm.config.run import DeviceOption, FamilyName, FinetuneOptions, Norm, default_families
from lsm.config.spec import builtin_regions, format_validation_error, load_yaml
from lsm.errors import SpecError

Family = FamilyName  # a registered model family (lsm.config.run)
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DerivedRegion(_Model):
    """A region cut out of another one by spatial blocks."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", description="Region to cut from (built-in, derived, spec).")
    fraction: float = Field(gt=0, le=1, description="Share of the points in the first blocks.")
    part: Literal["first", "rest"] = Field(
        "first", description="first: the blocks up to 'fraction'; rest: all the others.")
    order: Literal["random", "compact"] = Field(
        "random", description="Block order: seeded random (spread out) or compact (one "
        "contiguous area grown from a seeded start block).")
    block_size: float | None = Field(None, gt=0, description="Block edge in map units; "
                                     "default a twentieth of the longer extent.")
    seed: int | None = Field(None, description="Block order seed; default the pipeline's.")


class StudyOptions(FinetuneOptions, DeviceOption):
    """Options every study takes; its fine-tunes get every :class:`FinetuneOptions` field.

    A study kind subclasses it with ``kind: Literal["<name>"]`` and its own
    fields, names the fields that hold regions in ``region_fields`` (a region
    name or a list of them; the pipeline checks they exist), and is added with
    :func:`register_study_config`.
    """

    #: Fields naming regions (a string, or a list of strings), checked by the pipeline.
    region_fields: ClassVar[tuple[str, ...]] = ()

    id: str | None = Field(None, pattern=_NAME, description="Study name in results; default "
                           "its kind.")
    models: list[Family] = Field(default_factory=default_families, min_length=1,
                                 description="Model families.")
    norms: list[Norm] = Field(default_factory=lambda: ["target"], min_length=1,
                              description="Factor normalisations; each gets its own fit.")
    seed: int | None = Field(None, description="Seed; default the pipeline's.")
    cv: bool = Field(False, description="Spatial cross-validation of the source fits "
                     "(rows with arm 'source_cv').")

    @field_validator("models", "norms")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"repeated entries in {v}")
        return v

    @classmethod
    def kind_name(cls) -> str:
        """The value of ``kind`` that selects this class (its ``Literal``)."""
        field = cls.model_fields.get("kind")
        args = get_args(field.annotation) if field is not None else ()
        if len(args) != 1 or not isinstance(args[0], str):
            raise TypeError(f"{cls.__name__}: a study config needs 'kind: Literal[\"name\"]'")
        return args[0]

    def region_refs(self) -> list[tuple[str, str]]:
        """``(key, region)`` of every region the study names (keys relative to the study)."""
        refs: list[tuple[str, str]] = []
        for name in self.region_fields:
            value = getattr(self, name)
            if isinstance(value, str):
                refs.append((name, value))
            else:
                refs += [(f"{name}.{j}", r) for j, r in enumerate(value)]
        return refs


_Study = StudyOptions  # the name used before study kinds were registered

#: The registry of study kinds: ``kind`` -> config class (see :func:`register_study_config`).
STUDY_CONFIGS: dict[str, type[StudyOptions]] = {}


def register_study_config(cls: type[StudyOptions]) -> type[StudyOptions]:
    """Class decorator: make ``cls`` the config of its study kind in pipeline files.

    :func:`lsm.workflows.studies.register_study` calls it for a kind's config.
    """
    kind = cls.kind_name()
    if not re.match(r"^[a-z][a-z0-9_]*$", kind):
        raise ValueError(f"{cls.__name__}: study kind {kind!r} must be a lower-case word")
    STUDY_CONFIGS[kind] = cls
    return cls


def study_kinds() -> tuple[str, ...]:
    """The registered study kinds, in registration order."""
    return tuple(STUDY_CONFIGS)


def _validate_study(value: Any, handler: Any) -> StudyOptions:
    """Validate one study with the config class its ``kind`` names (a live registry)."""
    if isinstance(value, StudyOptions):
        return value
    kinds = ", ".join(STUDY_CONFIGS)
    if not isinstance(value, dict):
        raise PydanticCustomError("study_type", f"a study must be a mapping with a 'kind' "
                                  f"({kinds})")
    kind = value.get("kind")
    if kind is None:
        raise PydanticCustomError("study_kind", f"a study needs a 'kind': one of {kinds}")
    cls = STUDY_CONFIGS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        close = difflib.get_close_matches(str(kind), list(STUDY_CONFIGS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PydanticCustomError("study_kind", f"unknown study kind {str(kind)!r}{hint}; "
                                  f"one of {kinds}".replace("{", "(").replace("}", ")"))
    return cls.model_validate(value)


#: One study of any registered kind (validated by the class its ``kind`` names).
Study = Annotated[SerializeAsAny[StudyOptions], WrapValidator(_validate_study)]


@register_study_config
class ShotsStudy(StudyOptions):
    """Fit a source once, fine-tune each target at each shot count."""

    kind: Literal["shots"] = Field(description="shots: metric against K per target.")
    region_fields: ClassVar[tuple[str, ...]] = ("source", "targets")
    source: str = Field(description="Data-rich region.")
    targets: list[str] = Field(min_length=1, description="Data-scarce regions.")
    shots: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        default_factory=lambda: [10, 25, 50, 100], min_length=1,
        description="K landslides (and K non-landslides) per fine-tune.")


@register_study_config
class SourceScaleStudy(StudyOptions):
    """Nested source subsets of increasing size, each fitted and fine-tuned."""

    kind: Literal["source_scale"] = Field(description="source_scale: metric against source size.")
    region_fields: ClassVar[tuple[str, ...]] = ("source", "target")
    source: str = Field(description="Region whose points are subset by spatial blocks.")
    target: str = Field(description="Region every subset is fine-tuned on.")
    fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [0.1, 0.25, 0.5, 1.0], min_length=1,
        description="Shares of the source's points (nested subsets).")
    shots: int = Field(50, ge=1, le=100_000, description="K of the fine-tunes.")
    order: Literal["random", "compact"] = Field("random", description="Block order (see "
                                                "regions).")
    block_size: float | None = Field(None, gt=0, description="Block edge in map units.")

    @field_validator("fractions")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        if len(set(v)) != len(v):
            raise ValueError(f"repeated fractions in {v}")
        return sorted(v)


@register_study_config
class ProgressiveStudy(StudyOptions):
    """A chain of fine-tunes compared with the direct transfer."""

    kind: Literal["progressive"] = Field(description="progressive: chained vs direct transfer.")
    region_fields: ClassVar[tuple[str, ...]] = ("chain",)
    chain: list[str] = Field(min_length=3, description="Regions: fit the first, fine-tune "
                             "each next one from the previous run; at least three.")
    shots: int = Field(50, ge=1, le=100_000, description="K of every fine-tune in the chain.")



class PipelineConfig(_Model):
    """A pipeline file."""

    name: str = Field(pattern=_NAME, description="Pipeline name; results go to "
                      "runs/pipelines/<name> unless 'out' is given.")
    description: str = Field("", description="Free text, copied into summary.md.")
    out: Path | None = Field(None, description="Results folder, relative to the working "
                             "directory.")
    seed: int = Field(0, description="Default seed of every study and derived region.")
    regions: dict[str, DerivedRegion] = Field(
        default_factory=dict, description="Derived regions: spatial-block subsets of "
        "another region, usable wherever a region is named.")
    studies: list[Study] = Field(min_length=1, description="What to run; each entry has a "
                                 "kind: shots, source_scale, progressive (or a kind "
                                 "registered by a plug-in).")

    # set by load_pipeline, not part of the YAML
    base_dir: Path = Field(default=Path("."), exclude=True)
    source_file: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _ids(self) -> PipelineConfig:
        kinds = [s.kind for s in self.studies]
        for i, s in enumerate(self.studies):
            if s.id is None:
                s.id = s.kind if kinds.count(s.kind) == 1 else f"{s.kind}-{i + 1}"
        ids = [s.id for s in self.studies]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"studies: study ids must be unique; repeated: {dup}")
        return self

    def study_seed(self, study: Any) -> int:
        return self.seed if study.seed is None else int(study.seed)

    def results_dir(self) -> Path:
        """``out``, or ``runs/pipelines/<name>`` (ignored by git; published results are
        written with ``lsm run --out results/<name>``)."""
        return Path(self.out) if self.out is not None else Path("runs") / "pipelines" / self.name


def _is_path(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml")) or "/" in ref


def _region_refs(cfg: PipelineConfig) -> list[tuple[str, str]]:
    """Every region a pipeline names, with the key naming it."""
    refs = [(f"regions.{n}.from", r.from_) for n, r in cfg.regions.items()]
    for i, s in enumerate(cfg.studies):
        refs += [(f"studies.{i}.{key}", ref) for key, ref in s.region_refs()]
    return refs


def _check_regions(cfg: PipelineConfig, source: str) -> None:
    known = builtin_regions()
    for name in cfg.regions:
        if name in known or not re.match(_NAME, name):
            raise SpecError(f"{source}: regions.{name}: "
                            + ("a built-in region has this name; pick another"
                               if name in known else "use letters, digits and _.- only"))
    derived = list(cfg.regions)
    for key, ref in _region_refs(cfg):
        if ref in known or ref in derived:
            continue
        if _is_path(ref):
            p = Path(ref)
            p = p if p.is_absolute() else cfg.base_dir / p
            if not p.exists():
                raise SpecError(f"{source}: {key}: no such region spec file: {p}")
            continue
        close = difflib.get_close_matches(ref, known + derived, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"{source}: {key}: unknown region {ref!r}{hint}; built-in: "
                        f"{', '.join(known)}" + (f"; derived: {', '.join(derived)}"
                                                 if derived else ""))
    # derived regions may build on each other, but not in a circle
    for name in cfg.regions:
        seen = [name]
        cur = cfg.regions[name].from_
        while cur in cfg.regions:
            if cur in seen:
                raise SpecError(f"{source}: regions.{name}.from: circular "
                                f"({' -> '.join(seen + [cur])})")
            seen.append(cur)
            cur = cfg.regions[cur].from_


def resolve_region_ref(cfg: PipelineConfig, ref: str) -> str:
    """A spec path relative to the pipeline file made absolute; names unchanged."""
    if ref in cfg.regions or not _is_path(ref):
        return ref
    p = Path(ref)
    return str(p if p.is_absolute() else (cfg.base_dir / p).resolve())


def parse_pipeline(data: Any, *, source: str = "<pipeline>",
                   base_dir: Path | None = None) -> PipelineConfig:
    """Validate a mapping (parsed YAML) into a :class:`PipelineConfig`.

    Raises :class:`~lsm.errors.SpecError` with one line ``file: key: message``.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a pipeline must be a YAML mapping, got "
                        f"{type(data).__name__}")
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None
    cfg.base_dir = base_dir or Path(".")
    _check_regions(cfg, source)
    return cfg


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such pipeline file")
    cfg = parse_pipeline(load_yaml(path), source=str(path), base_dir=path.resolve().parent)
    cfg.source_file = path
    return cfg


def dump_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """The resolved pipeline (defaults filled in) as JSON-ready data."""
    return cfg.model_dump(mode="json", by_alias=True)


# ---------------------------------------------------------------------------
# template

_TEMPLATE: dict[str, Any] = {
    "name": "my_pipeline",
    "description": "Few-shot transfer from Hong Kong to two data-scarce regions.",
    "out": None,
    "seed": 0,
    "regions": {"hongkong-west": {"from": "hongkong", "fraction": 0.5, "order": "compact"},
                "hongkong-east": {"from": "hongkong", "fraction": 0.5, "order": "compact",
                                  "part": "rest"}},
    "studies": [
        {"kind": "shots", "id": "shots", "source": "hongkong",
         "targets": ["jiangxi-yushan", "ecuador"], "shots": [10, 25, 50, 100]},
        {"kind": "source_scale", "source": "hongkong", "target": "jiangxi-yushan",
         "fractions": [0.1, 0.25, 0.5, 1.0], "shots": 50},
        {"kind": "progressive", "chain": ["hongkong", "jiangxi-yongxin", "jiangxi-yushan"],
         "shots": 50},
    ],
}


def _flow(value: Any) -> str:
    import yaml

    if value is None:
        return "null"
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)
    return text.strip().removesuffix("...").strip()


def _model_lines(cls: type[BaseModel], data: dict[str, Any], pad: str, first: str = "",
                 *, all_fields: bool = True) -> list[str]:
    """``key: value`` lines of one model, each field's description above it.

    Fields missing from ``data`` are listed with their defaults (without
    ``all_fields``, only those of the study kind itself).
    """
    lines: list[str] = []
    fields = {(f.alias or k): f for k, f in cls.model_fields.items() if not f.exclude}
    ordered = list(data) + [k for k in fields if k not in data
                            and (all_fields or k not in StudyOptions.model_fields)]
    for i, key in enumerate(ordered):
        f = fields[key]
        value = data[key] if key in data else f.get_default(call_default_factory=True)
        if i == 0 and first:
            lines.append(f"{first}{key}: {_flow(value)}")
            continue
        if f.description:
            lines.append(f"{pad}# {f.description}")
        if key == "studies":
            lines.append(f"{pad}{key}:")
            for j, s in enumerate(value):
                scls = STUDY_CONFIGS[s["kind"]]
                lines.append(f"{pad}  # {s['kind']}: {scls.__doc__}")
                own = {k: v for k, v in s.items() if j == 0 or k not in StudyOptions.model_fields}
                lines += _model_lines(scls, own, pad + "    ", first=pad + "  - ",
                                      all_fields=j == 0)
        elif key == "regions":
            lines.append(f"{pad}{key}:")
            for name, r in value.items():
                lines.append(f"{pad}  {name}: {_flow(r)}")
        else:
            lines.append(f"{pad}{key}: {_flow(value)}")
    return lines


def pipeline_template() -> str:
    """A commented pipeline YAML generated from the schema (``lsm run --template``)."""
    head = ["# lsm pipeline: run with 'lsm run THIS_FILE.yaml'.",
            "# Regions: built-in names, names under 'regions', or spec files relative to",
            "# this file. Steps whose inputs are unchanged are skipped on a rerun.",
            "# Options every study takes are listed (with their defaults) in the first one.",
            ""]
    return "\n".join(head + _model_lines(PipelineConfig, _TEMPLATE, "")) + "\n"
