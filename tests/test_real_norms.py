"""The normalisations compared on real data: the default must win zero-shot.

Hong Kong source models (lr, xgb) are applied without any target labels to
Yushan (Jiangxi) and Ecuador under each normalisation; the default
(``target``: each region standardised with its own statistics) must give the
best mean AUC.  Skips without ``../shared/data``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(),
                                reason=f"real data folder {DATA} not found")


def test_target_normalisation_wins_zero_shot(monkeypatch: pytest.MonkeyPatch) -> None:
    from lsm.config.spec import load_region
    from lsm.evaluate.metrics import binary_metrics
    from lsm.stack.features import FeatureSchema, design_matrix
    from lsm.workflows.fit import FitConfig, make_model
    from lsm.workflows.region import load_region_data

    monkeypatch.setenv("LSM_DATA_DIR", str(DATA))
    assert FitConfig(source="x").norm == "target"  # the default under test
    src = load_region_data(load_region("hongkong"), progress=False)
    targets = [load_region_data(load_region(n), progress=False)
               for n in ("jiangxi-yushan", "ecuador")]
    auc: dict[str, list[float]] = {}
    for norm in ("target", "source", "none"):
        for tgt in targets:
            shared = [f for f in src.kinds if tgt.kinds.get(f) == src.kinds[f]
                      and src.kinds[f] != "categorical"]
            schema = FeatureSchema.from_table(src.table, src.kinds, shared)
            X = design_matrix(src.table, schema, norm=norm, region_stats=src.stats,
                              source_stats=src.stats)
            Xt = design_matrix(tgt.table, schema, norm=norm, region_stats=tgt.stats,
                               source_stats=src.stats)
            for fam in ("lr", "xgb"):
                model = make_model(fam, seed=0).fit(X, src.table["label"].to_numpy())
                p = model.predict_proba(Xt)[:, 1]
                auc.setdefault(norm, []).append(
                    binary_metrics(tgt.table["label"].to_numpy(), p)["auc"])
    mean = {k: float(np.mean(v)) for k, v in auc.items()}
    assert mean["target"] > mean["source"] and mean["target"] > mean["none"], mean
