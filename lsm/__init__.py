"""lsm: landslide susceptibility mapping with cross-region transfer.

Learn where landslide data is rich, use it where it is scarce.

The Python API mirrors the command line:

- :func:`load_region`: a region's factor table, statistics and lazy stack;
- :func:`fit`: pretrain source models (``lsm fit``) -> :class:`Run`;
- :func:`finetune`: adapt them to a data-scarce region, deliver one model -> :class:`Run`;
- :func:`predict`: maps or unit tables of a region (``lsm predict``) -> :class:`MapResult`;
- :func:`explain`: SHAP explanations (``lsm explain``) -> :class:`Explanation`;
- :func:`run_pipeline`: a study of many fits and fine-tunes (``lsm run``);
- :class:`Run` / :func:`load_run`: a run folder; ``run.predict(dataframe)`` scores rows
  with the run's schema and normalisation, ``run.predict_map(region)`` maps a region.

Example
-------
>>> import lsm
>>> src = lsm.fit("demo-source", models="lr,xgb")                  # doctest: +SKIP
>>> ft = lsm.finetune("demo-target", src, shots=25, repeats=3)     # doctest: +SKIP
>>> ft.predict(points)                                             # doctest: +SKIP

``import lsm`` stays cheap: the API module (and numpy, pandas, the workflows) load
on first use of one of these names.
"""

from typing import Any

from lsm.errors import LsmError

__version__ = "0.1.0"
_API = ("Explanation", "MapResult", "Run", "explain", "finetune", "fit", "load_region",
        "load_run", "predict", "run_pipeline")
__all__ = ["LsmError", "__version__", *_API]


# ``lsm.explain`` is also the name of the SHAP subpackage, which Python sets as an
# attribute of ``lsm`` once imported: that package is callable and forwards to
# :func:`lsm.api.explain`, so ``lsm.explain(run)`` works either way.


def __getattr__(name: str) -> Any:
    if name in _API:
        from lsm import api

        value = getattr(api, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'lsm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
