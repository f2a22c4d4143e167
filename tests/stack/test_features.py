"""Design matrices across regions: normalisations, aspect, categories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lsm.errors import FactorMismatchError
from lsm.stack.features import FeatureSchema, design_matrix, quantile_scores
from lsm.stack.stats import table_statistics

KINDS = {"slope": "continuous", "aspect": "circular", "lithology": "categorical"}


def _table(rng: np.random.Generator, n: int, slope_scale: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame({
        "slope": rng.gamma(3.0, 8.0, n) * slope_scale,
        "aspect": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(0, 360, n)),
        "lithology": rng.choice(["granite", "shale"], n),
    })


def test_columns_and_encodings() -> None:
    rng = np.random.default_rng(0)
    t = _table(rng, 200)
    schema = FeatureSchema.from_table(t, KINDS)
    assert schema.columns == ["slope", "aspect_sin", "aspect_cos", "lithology=granite",
                              "lithology=shale"]
    X = design_matrix(t, schema, norm="target", region_stats=table_statistics(t, KINDS))
    flat = t["aspect"].isna().to_numpy()
    assert (X.loc[flat, ["aspect_sin", "aspect_cos"]] == 0).all().all()
    np.testing.assert_allclose(X.loc[~flat, "aspect_sin"] ** 2 + X.loc[~flat, "aspect_cos"] ** 2,
                               1.0)
    assert (X[["lithology=granite", "lithology=shale"]].sum(axis=1) == 1).all()
    assert abs(X["slope"].mean()) < 1e-9 and abs(X["slope"].std(ddof=0) - 1) < 1e-9


def test_unknown_category_warns_and_is_all_zero() -> None:
    rng = np.random.default_rng(1)
    t = _table(rng, 50)
    schema = FeatureSchema.from_table(t, KINDS)
    t2 = t.copy()
    t2.loc[:4, "lithology"] = "basalt"
    with pytest.warns(UserWarning, match="basalt"):
        X = design_matrix(t2, schema, norm="none")
    assert (X.loc[:4, ["lithology=granite", "lithology=shale"]] == 0).all().all()


def test_norms_differ_as_documented() -> None:
    """A target whose slopes are stored in other units (x 1.5): 'target' and
    'quantile' remove the difference, 'source' and 'none' keep it."""
    rng = np.random.default_rng(2)
    src, tgt = _table(rng, 4000), _table(rng, 4000, slope_scale=1.5)
    s_stats, t_stats = table_statistics(src, KINDS), table_statistics(tgt, KINDS)
    schema = FeatureSchema.from_table(src, KINDS)
    means = {}
    for norm in ("target", "quantile", "source", "none"):
        X = design_matrix(tgt, schema, norm=norm, region_stats=t_stats, source_stats=s_stats)
        means[norm] = float(X["slope"].mean())
    assert abs(means["target"]) < 0.01 and abs(means["quantile"]) < 0.05
    assert means["source"] > 0.5  # target looks steeper than it is under source statistics
    assert means["none"] > 20


def test_quantile_scores_are_invariant_to_monotone_transforms() -> None:
    rng = np.random.default_rng(3)
    v = rng.lognormal(size=20000)
    levels = np.linspace(0, 1, 101)
    z = quantile_scores(v, list(np.quantile(v, levels)))
    z_log = quantile_scores(np.log(v), list(np.quantile(np.log(v), levels)))
    assert np.median(np.abs(z - z_log)) < 0.02
    assert abs(z.mean()) < 0.02 and 0.9 < z.std() < 1.05


def test_quantile_needs_percentiles() -> None:
    t = _table(np.random.default_rng(4), 20)
    schema = FeatureSchema.from_table(t, KINDS)
    with pytest.raises(FactorMismatchError, match="percentile"):
        design_matrix(t, schema, norm="quantile", region_stats={"factors": {"slope": {}}})


def test_map_blocks_encode_like_tables() -> None:
    """float32 raster values and Categorical names give the matrix of the float64 table."""
    rng = np.random.default_rng(3)
    t = _table(rng, 500)
    t.loc[:4, "slope"] = np.nan
    t.loc[5, "aspect"] = np.inf  # not an angle: treated as flat
    t.loc[6:9, "lithology"] = "basalt"  # unknown to the schema
    schema = FeatureSchema.from_table(t.iloc[10:], KINDS)
    stats = table_statistics(t.iloc[10:], KINDS)
    X = design_matrix(t, schema, region_stats=stats, warn_unknown=False)
    assert (X.loc[:4, "slope"] == 0).all() and (X.loc[5, ["aspect_sin", "aspect_cos"]] == 0).all()
    assert (X.loc[6:9, ["lithology=granite", "lithology=shale"]] == 0).all().all()
    raster = t.assign(slope=t["slope"].astype("float32"), aspect=t["aspect"].astype("float32"),
                      lithology=pd.Categorical(t["lithology"]))
    Xr = design_matrix(raster, schema, region_stats=stats, warn_unknown=False)
    exact = t.assign(slope=raster["slope"].astype("float64"),
                     aspect=raster["aspect"].astype("float64"))
    pd.testing.assert_frame_equal(Xr, design_matrix(exact, schema, region_stats=stats,
                                                    warn_unknown=False))
    ref = (exact["slope"] - stats["factors"]["slope"]["mean"]) / stats["factors"]["slope"]["std"]
    np.testing.assert_array_equal(Xr["slope"].to_numpy()[5:], ref.to_numpy()[5:])
