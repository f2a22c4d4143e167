"""Files a fine-tune run keeps besides its models, for its later outputs.

- ``test_predictions.parquet``: each model's probabilities on the target test set
  (the study hold-out; with ``--shots all`` the delivered procedure's nested
  cross-validation), for the ROC and reliability figures;
- ``delivered_rows.parquet``: the design-matrix rows (and labels) the delivered map
  model was trained on, for the uncertainty layer's bootstrap refits;
- ``source_model/<family>/``: the source models the run started from (re-pretrained on
  the shared factors when it re-pretrained them), for the SHAP shift figure and the
  refits. They are saved with the run (:func:`lsm.workflows.runs.write_run`) and covered
  by its manifest, so that a fine-tune run never reads its source run again.

The files are written after the run itself; ``model.json`` records each one's sha256,
and a file that does not match is ignored with a warning, so a stale file of an earlier
run in the same folder is never used. Every stored name resolves inside the run
(:func:`lsm.io.paths.inside`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsm.io.artifacts import atomic_write_bytes, sha256_file

TEST_PREDICTIONS = "test_predictions.parquet"
DELIVERED_ROWS = "delivered_rows.parquet"
SOURCE_MODELS = "source_model"


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@dataclass
class RunExtras:
    """What :func:`collect` took from a fine-tune's metrics, ready to be written."""

    meta: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    source_models: dict[str, Any] = field(default_factory=dict)

    def write(self, out: Path) -> None:
        """Write the files into the run folder ``out`` (after the run itself; the source
        models go with the run: ``write_run(..., source_models=extras.source_models)``)."""
        out = Path(out)
        for name, data in self.files.items():
            atomic_write_bytes(out / name, data)


def collect(metrics: dict[str, Any], *, source_models: dict[str, Any] | None) -> RunExtras:
    """Pop the private ``_test_predictions`` / ``_delivered_fit`` entries of ``metrics``
    and describe them (with checksums) for ``model.json``."""
    ex = RunExtras()
    preds = metrics.pop("_test_predictions", None)
    if preds is not None:
        table, what = preds
        data = _parquet_bytes(table)
        ex.files[TEST_PREDICTIONS] = data
        ex.meta["test_predictions"] = {"file": TEST_PREDICTIONS, "sha256": _sha(data),
                                       "what": what}
    fit = metrics.pop("_delivered_fit", None)
    if fit is not None:
        X, y, sel, prevalence = fit
        rows = X.reset_index(drop=True).assign(label=np.asarray(y, dtype=np.int8))
        data = _parquet_bytes(rows)
        ex.files[DELIVERED_ROWS] = data
        ex.meta["delivered_fit"] = {
            "rows": DELIVERED_ROWS, "sha256": _sha(data), "prevalence": float(prevalence),
            "strategy": {k: (list(map(list, v)) if k == "opts" else v)
                         for k, v in asdict(sel.chosen).items()},
            "neutral": list(getattr(sel, "neutral", []) or [])}
    if source_models:
        ex.source_models = dict(source_models)
        ex.meta["source_models"] = {"folder": SOURCE_MODELS, "families": list(source_models)}
    return ex


def checked_file(run: Any, key: str) -> Path | None:
    """The extra file ``key`` of ``run`` if ``model.json`` records it and it matches."""
    info = run.meta.get(key)
    if not info:
        return None
    from lsm.io.paths import inside

    p = inside(run.path, info.get("file", info.get("rows", "")), what=f"model.json {key}")
    if not p.is_file():
        return None
    if sha256_file(p) != info.get("sha256"):
        warnings.warn(f"{p}: checksum differs from {run.path / 'model.json'}; ignored",
                      UserWarning, stacklevel=2)
        return None
    return p


def kept_source_models(run: Any) -> dict[str, Any] | None:
    """The source models a fine-tune run kept (inside it, covered by its manifest), or
    None."""
    info = run.meta.get("source_models")
    if not info:
        return None
    from lsm.errors import ArtifactError
    from lsm.io.artifacts import MANIFEST, manifest_entries
    from lsm.io.paths import inside
    from lsm.models.base import get_family

    try:
        listed = manifest_entries(run.path / MANIFEST)
        out = {}
        for f in info["families"]:
            rel = f"{info['folder']}/{f}"
            d = inside(run.path, rel, what="model.json source_models")
            if f"{rel}/{MANIFEST}" not in listed:
                raise ArtifactError(f"{d}: not covered by {run.path / MANIFEST} (written by "
                                    "an older lsm)")
            out[f] = get_family(f).load(d)
        return out
    except (ArtifactError, OSError, KeyError, TypeError) as err:
        warnings.warn(f"{run.path}: kept source models not readable ({err})", UserWarning,
                      stacklevel=2)
        return None
