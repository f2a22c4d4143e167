"""Options of ``lsm fit`` and ``lsm finetune``, and the types they share with pipelines.

The shared types (:data:`FamilyName`, :data:`Norm`, :data:`Device`,
:data:`Anchor`) are defined here once.  The options a pipeline study sets for
its fine-tunes are one group, :class:`FinetuneOptions`, that both
:class:`FinetuneConfig` and the studies of :mod:`lsm.config.pipeline` inherit:
a new fine-tune option is then settable from a pipeline without copying it.

Family names are checked against the registry of model families
(:data:`lsm.models.base.FAMILIES`) when a config is validated, so a family
registered later (a plug-in, a test) is accepted too.

Example
-------
>>> FitConfig(source="demo-source", models=["lr", "xgb"]).norm
'target'
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from lsm.errors import LsmError


def _check_family(name: str) -> str:
    from lsm.models.base import FAMILY_NAMES

    if name not in FAMILY_NAMES:
        raise ValueError(f"unknown model family {name!r}; choose from "
                         f"{', '.join(FAMILY_NAMES)}")
    return name


def default_families() -> list[str]:
    """Every selectable family, in order (the default of ``models``)."""
    from lsm.models.base import FAMILY_NAMES

    return list(FAMILY_NAMES)


#: A registered model family (``rf``, ``lr``, ``xgb``, ``mlp``, or one added later).
FamilyName = Annotated[str, AfterValidator(_check_family)]
#: How factors are normalised (see :func:`lsm.stack.features.design_matrix`).
Norm = Literal["target", "source", "quantile", "none"]
#: Torch device of the MLP.
Device = Literal["auto", "cpu", "cuda"]
#: Stage-2 anchoring: chosen by cross-validation on the shots, or the family's default.
Anchor = Literal["auto", "fixed"]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceOption(_Options):
    device: Device = Field("auto", description="Torch device of the MLP (auto: cuda when "
                           "available).")


class FinetuneOptions(_Options):
    """Fine-tune options a pipeline study sets as well (inherited, never copied)."""

    repeats: int = Field(10, ge=1, le=1000, description="Shot draws per fine-tune.")
    prevalence: float | None = Field(None, gt=0, lt=1,
                                     description="Expected landslide share in the target.")
    test_fraction: float = Field(0.3, gt=0.05, lt=0.9,
                                 description="Share of the target held out for testing.")
    anchor: Anchor = Field(
        "auto", description="Stage-2 anchoring strength: chosen by cross-validation on the "
        "shots (auto) or each family's fixed default.")
    reweight: bool = Field(False, description="Re-train the source models with importance "
                           "weights p(target|x)/p(source|x) from a domain classifier between "
                           "the source rows and unlabelled target rows (fit runs only).")

    def finetune_options(self) -> dict[str, Any]:
        """The values of the :class:`FinetuneOptions` fields (and ``device``, if any)."""
        names = set(FinetuneOptions.model_fields) | ({"device"} & set(type(self).model_fields))
        return {k: getattr(self, k) for k in names}


class FitConfig(DeviceOption):
    """Options of ``lsm fit``."""

    source: str | list[str] = Field(
        description="Built-in region name or path to a region spec; several (a list or a "
        "comma list) pretrain on their pooled rows, each region normalised with its own "
        "statistics and weighted to count the same.")
    models: list[FamilyName] = Field(default_factory=default_families, min_length=1,
                                     description="Model families.")
    out: Path | None = Field(None, description="Run folder; default runs/<region>.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of folds, sampling and models.")
    factors: list[str] | None = Field(None, description="Factor subset; default all that transfer.")
    norm: Norm = "target"
    cv: bool = Field(True, description="Run spatial cross-validation before the final fit.")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Hyper-parameters per family ({family: {name: "
        "value}}, see lsm.config.params); families not named keep their defaults.")
    progress: bool = True
    command: str | None = Field(None, description="Command line that reproduces the run.")

    @field_validator("params", mode="before")
    @classmethod
    def _check_params(cls, v: Any) -> Any:
        from lsm.config.params import validate_params

        try:
            return validate_params(v, source="params")
        except LsmError as err:  # pydantic reports ValueError as a validation error
            raise ValueError(str(err).removeprefix("params: ")) from None

    @model_validator(mode="after")
    def _note_unused_params(self) -> FitConfig:
        """A note for parameters of a family this fit does not train (not an error: one
        parameter file may serve several fits)."""
        unused = [f for f in self.params if self.params[f] and f not in self.models]
        if unused:
            import warnings

            warnings.warn(f"params: the parameters of {', '.join(unused)} are not used: this "
                          f"fit trains {', '.join(self.models)} (--model)", UserWarning,
                          stacklevel=2)
        return self


class FinetuneConfig(FinetuneOptions, DeviceOption):
    """Options of ``lsm finetune``."""

    target: str = Field(description="Built-in region name or path to a region spec.")
    source_run: Path = Field(Path("runs/hongkong"), description="A fit or finetune run folder.")
    shots: Annotated[int, Field(ge=1, le=100_000)] | Literal["all"] = Field(
        50, description="Landslides (and as many non-landslides) per repeat; 'all' trains the "
        "delivered model on every labelled point and estimates its skill by cross-validation.")
    models: list[FamilyName] | None = Field(None, description="Families; default the run's.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the hold-out, the shots and "
                      "the models.")
    out: Path | None = None
    norm: Norm | None = Field(None, description="Default: the source run's normalisation.")
    deliver: bool = Field(True, description="Fit the delivered map model on all labelled "
                          "points outside the hold-out (study mode).")
    cv_folds: int = Field(5, ge=2, le=20, description="Folds of the skill estimate of "
                          "--shots all.")
    progress: bool = True
    command: str | None = Field(None, description="Command line that reproduces the run.")


#: Most bootstrap refits behind an uncertainty layer (each is a full refit of the model).
MAX_REPLICATES = 200
#: What :meth:`lsm.Run.predict` reads: values as the region's training table holds them
#: (``model``, after the spec's scale, sentinels and replacements) or as its files store
#: them (``stored``: the spec's cleaning is applied first, as maps do).
Units = Literal["model", "stored"]


class PredictOptions(_Options):
    """Options of ``lsm predict`` (:func:`lsm.predict`, :meth:`lsm.Run.predict_map`)."""

    model: str | None = Field(None, description="Family to map; default the run's delivered "
                              "or best model.")
    thresholds: list[float] | None = Field(None, description="Four increasing zone "
                                           "thresholds in (0, 1) (checked by "
                                           "lsm.mapping.zones.validate_thresholds).")
    prevalence: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False,
                                     description="Expected landslide share.")
    uncertainty: int | None = Field(
        None, ge=0, le=MAX_REPLICATES, description="Bootstrap refits behind the uncertainty "
        f"layer: 0 (none) or 2..{MAX_REPLICATES}; default 10 for a delivered model.")
    force_zones: bool = False
    progress: bool = False

    @field_validator("uncertainty")
    @classmethod
    def _not_one(cls, v: int | None) -> int | None:
        if v == 1:
            raise ValueError("1 bootstrap refit has no spread; give 0 (none) or at least 2")
        return v


class ScoreOptions(_Options):
    """Options of :meth:`lsm.Run.predict` (scoring a table of rows)."""

    model: str | None = Field(None, description="A family, 'all', or None (the default model).")
    prevalence: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False,
                                     description="Expected landslide share.")
    units: Units = Field("model", description="model: values as in the region's training "
                         "table; stored: as in its files (the spec's cleaning is applied).")
    range_tolerance: float = Field(
        0.1, ge=0, allow_inf_nan=False, description="Values farther than this share of the "
        "training range beyond its minimum or maximum are out of range.")
    strict: bool = Field(False, description="Refuse rows with missing values, unknown "
                         "categories or values out of range instead of warning.")


class ExplainOptions(_Options):
    """Options of ``lsm explain`` (:func:`lsm.explain`)."""

    shap_maps: bool = False
    model: str | None = None
    region: str | None = None
    top: int = Field(3, ge=1, le=1000, description="Factors mapped with shap_maps.")
    progress: bool = False
