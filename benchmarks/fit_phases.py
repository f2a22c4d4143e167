"""Where the time of ``lsm fit --source hongkong`` goes, phase by phase.

Runs the real ``lsm.fit`` (what the command calls) into a temporary folder,
with timers around the functions it calls: loading and sampling the region,
spatial cross-validation of each family, the final fit of each family, saving
the run, evaluation figures, unit predictions (maps for raster regions), SHAP
and the report.  The phases are timed where ``lsm.fit`` looks them up, so
the numbers are those of the command, not of a re-implementation.  Prints a
table and writes ``benchmarks/out/fit_phases.json``.

    LSM_DATA_DIR=../shared/data nice python benchmarks/fit_phases.py --models all
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"


class Phases:
    """Wall time per phase, in the order the phases first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def wrap(self, module: Any, attr: str, name: Callable[..., str] | str
             ) -> contextlib.AbstractContextManager:
        """Time every call of ``module.attr`` while the context is open."""
        original = getattr(module, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            label = name(*args, **kwargs) if callable(name) else name
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - t0)

        @contextlib.contextmanager
        def patched() -> Iterator[None]:
            setattr(module, attr, timed)
            try:
                yield
            finally:
                setattr(module, attr, original)

        return patched()


def run(source: str, models: str, seed: int) -> dict[str, Any]:
    import lsm
    import lsm.evaluate.cv as cv
    import lsm.workflows.fit as fit
    import lsm.workflows.outputs as outputs
    import lsm.workflows.predict as predict
    import lsm.workflows.report_md as report_md

    phases = Phases()
    fit_models = fit.fit_models

    def per_family_fit(data: Any, schema: Any, families: list[str], **kw: Any) -> dict:
        out = {}
        for fam in families:  # one call per family, each timed on its own
            t0 = time.perf_counter()
            out.update(fit_models(data, schema, [fam], **kw))
            phases.add(f"final fit: {fam}", time.perf_counter() - t0)
        return out

    def cv_label(make: Callable[[], Any], *args: Any, **kwargs: Any) -> str:
        return f"cross-validation: {make().family}"

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(phases.wrap(fit, "load_region_data", "load region and sample"))
        stack.enter_context(phases.wrap(cv, "cross_validate", cv_label))
        stack.enter_context(phases.wrap(fit, "write_run", "save run"))
        stack.enter_context(phases.wrap(outputs, "evaluation_figures", "evaluation figures"))
        stack.enter_context(phases.wrap(predict, "predict_region",
                                        "maps / unit predictions"))
        stack.enter_context(phases.wrap(outputs, "explain_run", "SHAP"))
        stack.enter_context(phases.wrap(report_md, "write_report", "report"))
        fit.fit_models = per_family_fit
        try:
            t0 = time.perf_counter()
            result = lsm.fit(source, models=models, out=Path(tmp) / "run", seed=seed,
                             progress=False)
            total = time.perf_counter() - t0
        finally:
            fit.fit_models = fit_models
        aucs = {fam: m["summary"]["auc"]["mean"] for fam, m in result.metrics["cv"].items()}
    phases.add("other (imports, loading the run, ...)", total - sum(phases.seconds.values()))
    return {"source": source, "models": models, "total_s": total, "phases": phases.seconds,
            "cv_auc": aucs, "peak_rss_mib": resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": os.environ.get("OMP_NUM_THREADS", "all")}


def table(res: dict[str, Any]) -> str:
    lines = ["| phase | seconds | share |", "|---|---|---|"]
    for name, s in res["phases"].items():
        lines.append(f"| {name} | {s:.1f} | {s / res['total_s']:.0%} |")
    lines.append(f"| **total** | {res['total_s']:.1f} | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="hongkong")
    ap.add_argument("--models", default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=OUT / "fit_phases.json")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    res = run(args.source, args.models, args.seed)
    print(table(res))
    print("spatial-CV AUC: " + ", ".join(f"{k} {v:.4f}" for k, v in res["cv_auc"].items()))
    print(f"peak RSS {res['peak_rss_mib']:,.0f} MiB")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
