"""Files a fine-tune run keeps besides its models, for its later outputs.

- ``test_predictions.parquet``: each model's probabilities on the target test set
  (the study hold-out; with ``--shots all`` the delivered procedure's nested
  cross-validation), for the ROC and reliability figures;
- ``delivered_rows.parquet``: the design-matrix rows (and labels) the delivered map
  model was trained on, for the uncertainty layer's bootstrap refits;
- ``source_model/<family>/``: the source models re-pretrained on the shared factors
  (when the run re-pretrained them), for the SHAP shift figure and the refits.

They are written after the run itself; ``model.json`` records each one's sha256 (a
model folder's: its ``manifest.json``), and a file that does not match is ignored
with a warning, so a stale file of an earlier run in the same folder is never used.
"""

from __future__ import annotations

import io
import shutil
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
        """Write the files into the run folder ``out`` (after the run itself)."""
        out = Path(out)
        for name, data in self.files.items():
            atomic_write_bytes(out / name, data)
        if self.source_models:
            from lsm.workflows.runs import save_models

            tmp = out / f".{SOURCE_MODELS}.staging"
            shutil.rmtree(tmp, ignore_errors=True)
            save_models(tmp, self.source_models)  # writes tmp/model/<family>/
            shutil.rmtree(out / SOURCE_MODELS, ignore_errors=True)
            (tmp / "model").rename(out / SOURCE_MODELS)
            shutil.rmtree(tmp, ignore_errors=True)


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
    p = run.path / info.get("file", info.get("rows", ""))
    if not p.is_file():
        return None
    if sha256_file(p) != info.get("sha256"):
        warnings.warn(f"{p}: checksum differs from {run.path / 'model.json'}; ignored",
                      UserWarning, stacklevel=2)
        return None
    return p


def kept_source_models(run: Any) -> dict[str, Any] | None:
    """The source models a fine-tune run re-pretrained and kept, or None."""
    info = run.meta.get("source_models")
    if not info:
        return None
    from lsm.errors import ArtifactError
    from lsm.models.base import get_family

    folder = run.path / info["folder"]
    try:
        return {f: get_family(f).load(folder / f) for f in info["families"]}
    except (ArtifactError, OSError) as err:
        warnings.warn(f"{folder}: kept source models not readable ({err})", UserWarning,
                      stacklevel=2)
        return None
