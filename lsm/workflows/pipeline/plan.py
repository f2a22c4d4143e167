"""The plan of a pipeline: its steps (derived region, fit, fine-tune) and the study rows.

:func:`build_plan` asks each study's kind (:mod:`lsm.workflows.studies`) to add
its steps; identical steps requested by several studies are planned once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lsm.config.pipeline import DerivedRegion, PipelineConfig, resolve_region_ref
from lsm.workflows.studies.base import display_name, slug, study_kind


@dataclass
class Step:
    """One unit of work: a derived region, a fit or a fine-tune."""

    name: str
    kind: str  # "derive" | "fit" | "finetune"
    config: dict[str, Any]  # JSON-ready, regions by display name
    regions: dict[str, str]  # role -> region reference (name, spec path or derived name)
    upstream: list[str]  # steps whose outputs this one reads
    label: str


@dataclass
class Entry:
    """A study's use of a step's results, with the row context it adds."""

    study: str
    kind: str
    step: str
    root_fit: str  # the fit whose region is the study's source (for n_source)
    context: dict[str, Any]


@dataclass
class Plan:
    """Steps in run order (upstream first), study entries, and the derived regions.

    ``regions`` starts as a copy of the pipeline's ``regions``; study kinds add
    the regions they derive (:meth:`add_region`) here, never to the config.
    """

    cfg: PipelineConfig
    steps: dict[str, Step] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    regions: dict[str, DerivedRegion] = field(default_factory=dict)
    _idents: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.regions = {**self.cfg.regions, **self.regions}

    def add(self, kind: str, base: str, config: dict[str, Any], regions: dict[str, str],
            upstream: list[str], label: str) -> str:
        """Add a step (or find the identical one already planned); return its name."""
        ident = json.dumps([kind, config, regions, upstream], sort_keys=True, default=str)
        if ident in self._idents:
            return self._idents[ident]
        name, n = slug(base), 2
        while name in self.steps:
            name, n = f"{slug(base)}-{n}", n + 1
        self.steps[name] = Step(name, kind, config, regions, upstream, label)
        self._idents[ident] = name
        return name

    # -- regions
    def display(self, ref: str) -> str:
        """Short name of a region reference (a derived name, or a spec file's stem)."""
        if ref in self.regions:
            return ref
        return display_name(self.cfg, ref)

    def add_region(self, name: str, region: DerivedRegion, *, fallback: str) -> str:
        """Make ``region`` usable as ``name`` (``fallback`` if ``name`` is another region)."""
        if self.regions.get(name, region) != region:
            name = fallback
        self.regions[name] = region
        return name

    def region(self, ref: str) -> tuple[str, list[str]]:
        """Reference to use for ``ref`` and the derive step it needs (if any)."""
        if ref in self.regions:
            d = self.regions[ref]
            return ref, [self.derive(ref, d.from_, fraction=d.fraction, part=d.part,
                                     order=d.order, block_size=d.block_size,
                                     seed=self.cfg.seed if d.seed is None else d.seed)]
        return resolve_region_ref(self.cfg, ref), []

    def derive(self, name: str, source: str, *, fraction: float, part: str, order: str,
               block_size: float | None, seed: int) -> str:
        src, up = self.region(source)
        config = {"name": name, "from": self.display(source), "fraction": fraction,
                  "part": part, "order": order, "block_size": block_size, "seed": seed}
        return self.add("derive", f"region-{name}", config, {"from": src}, up,
                        f"cutting {name} out of {self.display(source)}")

    def fit(self, ref: str, study: Any, norm: str) -> str:
        """The fit of region ``ref`` with the study's families and options."""
        src, up = self.region(ref)
        seed = self.cfg.study_seed(study)
        config = {"source": self.display(ref), "models": list(study.models), "norm": norm,
                  "seed": seed, "cv": study.cv, "device": study.device}
        return self.add("fit", f"fit-{self.display(ref)}-{norm}", config, {"source": src}, up,
                        f"fit {self.display(ref)} ({norm} norm)")

    def finetune(self, ref: str, parent: str, chain: list[str], study: Any, norm: str,
                 shots: int) -> str:
        """The fine-tune of region ``ref`` from the run of step ``parent`` at K = ``shots``."""
        tgt, up = self.region(ref)
        config = {"target": self.display(ref), "shots": shots, "models": list(study.models),
                  "norm": norm, "seed": self.cfg.study_seed(study),
                  **study.finetune_options()}
        route = "-to-".join(chain)
        return self.add("finetune", f"ft-{route}-k{shots}-{norm}", config, {"target": tgt},
                        [parent] + up, f"fine-tune {' -> '.join(chain)}, K={shots} ({norm})")

    def use(self, study: Any, step: str, root_fit: str, **context: Any) -> None:
        """Report the results of ``step`` as rows of ``study`` with ``context``."""
        self.entries.append(Entry(str(study.id), study.kind, step, root_fit, context))


def build_plan(cfg: PipelineConfig) -> Plan:
    """Turn a pipeline into ordered steps (upstream first) and study entries.

    ``cfg`` is not changed (regions a study derives live in ``Plan.regions``).
    """
    plan = Plan(cfg)
    for study in cfg.studies:
        kind = study_kind(study.kind)
        for norm in study.norms:
            kind.plan(plan, study, norm)
    return plan
