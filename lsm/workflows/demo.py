"""``lsm demo``: the whole path, offline, on two generated regions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def run_demo(*, out: Path | None = None, seed: int = 0, progress: bool = True,
             console: Any = None, runs_dir: Path = Path("runs")) -> dict[str, Any]:
    """Generate the demo regions, summarise their stacks, fit on the source and
    fine-tune on the target; return the fit and fine-tune metrics."""
    from lsm.config.spec import load_region
    from lsm.datasets.demo import ensure_demo
    from lsm.workflows.finetune import FinetuneConfig, run_finetune
    from lsm.workflows.fit import FitConfig, run_fit
    from lsm.workflows.region import load_region_data
    from lsm.workflows.report import (
        print_finetune_metrics,
        print_fit_metrics,
        print_region_summary,
    )

    t0 = time.perf_counter()
    folder = ensure_demo(out)
    say = console.print if console is not None else (lambda *a, **k: None)
    say(f"demo regions in {folder}")
    for name in ("demo-source", "demo-target"):
        spec = load_region(folder / f"{name}.yaml")
        print_region_summary(load_region_data(spec, progress=False), console) if console \
            else None
    src_run = runs_dir / "demo-source"
    fit_metrics = run_fit(FitConfig(source=str(folder / "demo-source.yaml"), out=src_run,
                                    seed=seed, progress=progress))
    if console is not None:
        print_fit_metrics(fit_metrics, console)
    ft_run = runs_dir / "demo-source-to-demo-target-k25"
    ft_metrics = run_finetune(FinetuneConfig(
        target=str(folder / "demo-target.yaml"), source_run=src_run, shots=25, repeats=3,
        seed=seed, out=ft_run, progress=progress))
    if console is not None:
        print_finetune_metrics(ft_metrics, console)
    try:
        from lsm.workflows import outputs
    except ImportError:
        outputs = None
    if outputs is not None:
        for run in (src_run, ft_run):
            outputs.after_training(run, predict=True, explain=True, progress=progress,
                                   console=console)
    say(f"demo finished in {time.perf_counter() - t0:.0f} s; runs in {runs_dir}/")
    return {"fit": fit_metrics, "finetune": ft_metrics}
