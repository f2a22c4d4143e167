"""One validation layer for the Python API: arguments checked through the CLI's options
objects (one-line ``LsmError`` naming the argument), and ``Run.predict`` rows checked as
a map checks pixels (spec cleaning, NaN -> NaN, unknown categories and values out of the
training range reported once with counts; ``strict=True`` refuses)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

import lsm
from lsm.errors import ArgumentError, DataError, InputWarning, LsmError


def _region(folder: Path, n: int = 300, seed: int = 3) -> Path:
    """A points table: slope (degrees), NDVI stored x 10000 with a sentinel, lithology codes."""
    rng = np.random.default_rng(seed)
    slope = rng.uniform(0, 45, n)
    ndvi = rng.uniform(0.05, 0.9, n)
    geo = rng.integers(1, 4, n)
    z = 0.12 * (slope - 22) - 2.0 * (ndvi - 0.5) + 0.6 * (geo == 2)
    label = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    stored = np.round(ndvi * 10000).astype(int)
    df = pd.DataFrame({"slp": slope, "nd": stored, "geo": geo, "landslide": label})
    df.to_csv(folder / "guard.csv", index=False)
    spec = {"name": "guard", "samples": {"path": {"path": "guard.csv"}, "label": "landslide"},
            "factors": {"slope": {"column": "slp"},
                        "ndvi": {"column": "nd", "scale": 1e-4, "nodata": [-32768]},
                        "lithology": {"column": "geo", "categories": {1: "granite", 2: "shale",
                                                                      3: "sandstone"}}},
            "folds": {"n_folds": 3}}
    path = folder / "guard.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> lsm.Run:
    d = tmp_path_factory.mktemp("guard")
    return lsm.fit(_region(d), models="lr", out=d / "run", maps=False, explain=False)


def _good() -> pd.DataFrame:
    return pd.DataFrame({"slope": [10.0, 30.0, 40.0], "ndvi": [0.2, 0.5, 0.8],
                         "lithology": ["granite", "shale", "sandstone"]})


def _score(run: lsm.Run, df: pd.DataFrame, **kw: Any) -> tuple[pd.Series, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = run.predict(df, **kw)
    return p, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_clean_rows_score_without_a_word(run: lsm.Run) -> None:
    p, msgs = _score(run, _good())
    assert msgs == [] and np.isfinite(p).all()


def test_unknown_category_warns_with_counts(run: lsm.Run) -> None:
    df = _good()
    df.loc[[0, 1], "lithology"] = "x"
    p, msgs = _score(run, df)
    assert len(msgs) == 1 and "lithology: 2 rows" in msgs[0] and "'x'" in msgs[0]
    assert np.isfinite(p).all()  # scored (as maps score them), but not silently


def test_code_not_in_the_legend_warns(run: lsm.Run) -> None:
    df = _good()
    df["lithology"] = [1, 2, 7]  # codes, named with the legend; 7 has no entry
    p, msgs = _score(run, df)
    assert len(msgs) == 1 and "lithology: 1 rows ('7')" in msgs[0]
    # codes 1 and 2 are the legend's granite and shale: the same P as by name
    assert np.allclose(p[:2], run.predict(_good()).to_numpy()[:2])


def test_nan_factor_scores_nan_as_on_a_map(run: lsm.Run) -> None:
    df = _good()
    df.loc[1, "slope"] = np.nan
    p, msgs = _score(run, df)
    assert np.isnan(p.iloc[1]) and np.isfinite(p.iloc[[0, 2]]).all()
    assert len(msgs) == 1 and "1 of 3 rows have a missing factor value (slope: 1)" in msgs[0]
    # the other rows are scored exactly as alone
    assert np.allclose(p.iloc[[0, 2]], run.predict(_good().iloc[[0, 2]]))


def test_stored_units_are_cleaned_by_the_spec(run: lsm.Run) -> None:
    df = _good()
    stored = df.assign(ndvi=[2000, 5000, -32768])  # x 10000, and the spec's sentinel
    p, msgs = _score(run, stored, units="stored")
    assert np.allclose(p[:2], run.predict(df).to_numpy()[:2])
    assert np.isnan(p.iloc[2]) and "ndvi: 1" in msgs[0]


def test_stored_values_given_as_model_units_are_flagged(run: lsm.Run) -> None:
    df = _good().assign(ndvi=[6000, 0.5, 0.8])
    p, msgs = _score(run, df)
    assert len(msgs) == 1
    assert "ndvi: 1 rows (e.g. 6000" in msgs[0] and "units='stored'" in msgs[0]


def test_out_of_training_range_warns_with_a_tolerance(run: lsm.Run) -> None:
    df = _good().assign(slope=[10.0, 500.0, 46.0])  # trained on 0..45
    _, msgs = _score(run, df)
    assert len(msgs) == 1 and "slope: 1 rows (e.g. 500" in msgs[0]
    _, msgs = _score(run, df, range_tolerance=20)
    assert msgs == []
    _, msgs = _score(run, df, range_tolerance=0)
    assert "slope: 2 rows" in msgs[0]


def test_strict_turns_the_warnings_into_one_error(run: lsm.Run) -> None:
    df = _good()
    df.loc[0, "slope"] = np.nan
    df.loc[1, "lithology"] = "x"
    with pytest.raises(DataError, match=r"^data: .*missing.*lithology: 1 rows"):
        run.predict(df, strict=True)
    run.predict(_good(), strict=True)  # clean rows pass


def test_several_problems_are_one_warning_each(run: lsm.Run) -> None:
    df = _good().assign(slope=[np.nan, 500.0, 10.0], lithology=["x", "shale", "granite"])
    _, msgs = _score(run, df)
    assert len(msgs) == 3


@pytest.mark.parametrize(("call", "name"), [
    (lambda r: r.predict(_good(), prevalence=0), "prevalence"),
    (lambda r: r.predict(_good(), prevalence=float("nan")), "prevalence"),
    (lambda r: r.predict(_good(), units="raw"), "units"),
    (lambda r: r.predict(_good(), range_tolerance=-1), "range_tolerance"),
    (lambda r: r.predict(_good().iloc[:0]), "data"),
    (lambda r: r.predict(42), "data"),
    (lambda r: r.predict(pd.concat([_good(), _good()[["slope"]]], axis=1)), "data"),
    (lambda r: lsm.predict(r, prevalence=0), "prevalence"),
    (lambda r: lsm.predict(r, uncertainty=2.5), "uncertainty"),
    (lambda r: lsm.predict(r, uncertainty=1), "uncertainty"),
    (lambda r: lsm.predict(r, uncertainty=10_000), "uncertainty"),
    (lambda r: lsm.predict(r, thresholds=[0.5, 0.4, 0.6, 0.8]), "thresholds"),
    (lambda r: lsm.predict(r, out=3), "out"),
    (lambda r: lsm.explain(r, top=-1), "top"),
    (lambda r: lsm.fit(123), "source"),
    (lambda r: lsm.fit("demo-source", seed=-1), "seed"),
    (lambda r: lsm.fit("demo-source", models=5), "models"),
    (lambda r: lsm.fit("demo-source", models="lr,svm"), "models"),
    (lambda r: lsm.finetune("demo-target", r, seed=-5), "seed"),
    (lambda r: lsm.finetune("demo-target", r, shots="abc"), "shots"),
    (lambda r: lsm.finetune("demo-target", r, shots=2.5), "shots"),
    (lambda r: lsm.finetune("demo-target", r, repeats=0), "repeats"),
    (lambda r: lsm.finetune("demo-target", r, prevalence=0), "prevalence"),
    (lambda r: lsm.finetune("demo-target", 7), "source_run"),
    (lambda r: lsm.finetune(None, r), "target"),
    (lambda r: lsm.load_run(123), "path"),
    (lambda r: lsm.run_pipeline("p.yaml", repeats=2.5), "repeats"),
    (lambda r: lsm.run_pipeline(3), "pipeline"),
    (lambda r: lsm.fit("demo-source", norm="zscore"), "norm"),
    (lambda r: r.predict(_good(), model=5), "model"),
    (lambda r: lsm.load_region(["a", "b"]), "region"),
])
def test_bad_argument_is_one_line_naming_it(run: lsm.Run, call: Any, name: str) -> None:
    with pytest.raises(LsmError) as info:
        call(run)
    msg = str(info.value)
    assert isinstance(info.value, ArgumentError), msg
    assert name in msg and "\n" not in msg
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working


def test_input_warning_is_a_user_warning() -> None:
    assert issubclass(InputWarning, UserWarning)


def test_missing_aspect_is_flat_ground_not_missing(tmp_path: Path) -> None:
    """Training tables hold NaN aspect for flat ground (encoded (0, 0)): not a gap."""
    rng = np.random.default_rng(4)
    n = 200
    df = pd.DataFrame({"slp": rng.uniform(0, 40, n), "asp": rng.uniform(0, 360, n),
                       "landslide": rng.integers(0, 2, n)})
    df.loc[:20, "asp"] = -1
    df.to_csv(tmp_path / "flat.csv", index=False)
    spec = {"name": "flat", "samples": {"path": {"path": "flat.csv"}, "label": "landslide"},
            "factors": {"slope": {"column": "slp"}, "aspect": {"column": "asp", "nodata": [-1]}},
            "folds": {"n_folds": 3}}
    (tmp_path / "flat.yaml").write_text(yaml.safe_dump(spec))
    r = lsm.fit(tmp_path / "flat.yaml", models="lr", out=tmp_path / "run", cv=False,
                maps=False, explain=False)
    p, msgs = _score(r, pd.DataFrame({"slope": [5.0, 5.0], "aspect": [np.nan, 90.0]}))
    assert np.isfinite(p).all() and msgs == []
    # stored units: the sentinel -1 is flat ground too
    p2, _ = _score(r, pd.DataFrame({"slope": [5.0], "aspect": [-1]}), units="stored")
    assert p2.iloc[0] == pytest.approx(p.iloc[0])


def test_a_missing_default_source_run_says_it_was_the_default(tmp_path, monkeypatch) -> None:
    import pytest

    import lsm
    from lsm.errors import ArtifactError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="default source run"):
        lsm.finetune("demo-target", shots=5)
