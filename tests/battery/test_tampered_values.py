"""Every value a run folder holds, tampered with and its checksums recomputed, is refused
with one line naming the file, or has no effect on what the run predicts.

The cases are generated: every JSON artifact of a tiny fit run (rf, lr, xgb, mlp) and
fine-tune run (a delivered model), each value (a sample of the leaves and containers of
every file, seeded) set to NaN, inf, a string, a list, an object, null or removed, and
each file replaced by a nesting bomb; the arrays of ``trees.npz`` and the tensors of
``mlp.pt`` given NaN, wrong dtypes and shapes; the XGBoost model given NaN leaves and
splits on features it does not have.  The manifests are recomputed after each tampering
(what an attacker who knows the format does), so only the loaders' checks stand between
the value and the map.  Each case loads the run and predicts every model in-process
(``Run.load`` + ``Run.predict``); a few go through ``lsm predict``.

Outcomes: ``clean`` (an :class:`~lsm.errors.LsmError`, one line naming the tampered file
or its model folder), ``benign`` (the predictions are the untampered run's). Anything
else (another exception, i.e. an "internal error"; different or non-finite predictions)
fails.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsm.cli import main
from lsm.errors import LsmError

BAD: dict[str, Any] = {"nan": float("nan"), "inf": float("inf"), "str": "x", "list": [],
                       "dict": {}, "null": None}
#: Keys whose value nothing reads back (provenance shown in reports only).
PROVENANCE = {"created", "command", "versions", "notes", "lsm_version", "sklearn_version",
              "torch_version", "xgboost_version", "checksums", "description", "spec_file"}
#: Cases per run drawn from all the generated ones (all of them: LSM_TAMPER_ALL=1).
SAMPLE = 160


def rehash(run: Path) -> None:
    """Recompute every manifest of ``run`` (model folders innermost first, then the run's)."""
    from lsm.io.artifacts import write_manifest
    from lsm.workflows.runs import _run_files

    for man in sorted(run.rglob("manifest.json"), key=lambda p: -len(p.parts)):
        if man.parent != run:
            files = [p for p in sorted(man.parent.rglob("*"))
                     if p.is_file() and p.name != "manifest.json"]
            write_manifest(man.parent, files)
    write_manifest(run, _run_files(run))


def predictions(run_path: Path) -> np.ndarray:
    import warnings

    from lsm.api import Run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = Run.load(run_path)
        return run.predict(run.training_table().head(40), model="all").to_numpy()


# ---------------------------------------------------------------------------
# case generators: (file relative to the run, description, tamper function)

Case = tuple[str, str, Callable[[Path], None]]


def _walk(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, obj
    if isinstance(obj, dict):
        keys = list(obj)
        if path and path[-1] == "factors" and isinstance(obj.get(keys[0]), dict):
            by_kind: dict[Any, str] = {}
            for k in keys:  # one factor of each kind
                by_kind.setdefault(obj[k].get("kind"), k)
            keys = list(by_kind.values())
        for k in keys:
            if not path and k in PROVENANCE:
                continue
            yield from _walk(obj[k], (*path, k))
    elif isinstance(obj, list) and obj:
        for i in sorted({0, len(obj) - 1}):
            yield from _walk(obj[i], (*path, i))


def _set(doc: Any, path: tuple[Any, ...], value: Any, *, delete: bool = False) -> Any:
    if not path:
        return value
    cur = doc
    for p in path[:-1]:
        cur = cur[p]
    if delete:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return doc


def json_cases(run: Path) -> list[Case]:
    out: list[Case] = []
    for f in sorted(run.rglob("*.json")):
        rel = f.relative_to(run).as_posix()
        if f.name == "manifest.json":
            continue
        doc = json.loads(f.read_text())
        for path, value in _walk(doc):
            if f.name == "metrics.json" and len(path) > 2:
                continue
            tags = ["str", "nan", "null"] if isinstance(value, (dict, list)) else list(BAD)
            for tag in tags + (["missing"] if path else []):
                def tamper(r: Path, rel: str = rel, path: tuple[Any, ...] = path,
                           tag: str = tag) -> None:
                    p = r / rel
                    d = json.loads(p.read_text())
                    p.write_text(json.dumps(_set(d, path, BAD.get(tag),
                                                 delete=tag == "missing")))
                out.append((rel, f"{'.'.join(map(str, path)) or '<root>'}={tag}", tamper))

        def bomb(r: Path, rel: str = rel) -> None:
            (r / rel).write_text("[" * 200_000 + "]" * 200_000)
        out.append((rel, "nesting bomb", bomb))
    return out


def npz_cases(run: Path) -> list[Case]:
    out: list[Case] = []
    for f in sorted(run.rglob("trees.npz")):
        rel = f.relative_to(run).as_posix()
        arrays = np.load(f)
        for key in arrays.files:
            # new float values in a float array can be valid (a threshold moved): not here
            floats = ("float",) if arrays[key].dtype.kind in "iub" else ()
            for tag in ("nan", *floats, "longer", "huge", "negative", "str"):
                def tamper(r: Path, rel: str = rel, key: str = key, tag: str = tag) -> None:
                    p = r / rel
                    arrays = dict(np.load(p))
                    a = arrays[key]
                    mid = len(a) // 2
                    if tag == "nan":
                        a = a.astype(np.float64)
                        a[mid] = np.nan
                    elif tag == "float":
                        a = a.astype(np.float64) + 0.5
                    elif tag == "longer":
                        a = np.concatenate([a, a[:1]])
                    elif tag == "huge":
                        a = a.copy()
                        a[mid] = np.iinfo(a.dtype).max if a.dtype.kind in "iu" else 1e300
                    elif tag == "negative":
                        a = a.copy()
                        a[mid] = -5 if a.dtype.kind in "if" else 7
                    else:
                        a = np.array(["x"] * len(a))
                    arrays[key] = a
                    buf = io.BytesIO()
                    np.savez(buf, **arrays)
                    p.write_bytes(buf.getvalue())
                out.append((rel, f"{key}={tag}", tamper))
    return out


def torch_cases(run: Path) -> list[Case]:
    import torch

    out: list[Case] = []
    for f in sorted(run.rglob("mlp.pt")):
        rel = f.relative_to(run).as_posix()
        for key in torch.load(f, weights_only=True):
            for tag in ("nan", "inf", "shape", "int"):
                def tamper(r: Path, rel: str = rel, key: str = key, tag: str = tag) -> None:
                    p = r / rel
                    sd = torch.load(p, weights_only=True)
                    t = sd[key].clone()
                    if tag in ("nan", "inf"):
                        t.view(-1)[0] = float(tag)
                    elif tag == "shape":
                        t = torch.zeros(*(s + 1 for s in t.shape))
                    else:
                        t = t.to(torch.int64)
                    sd[key] = t
                    buf = io.BytesIO()
                    torch.save(sd, buf)
                    p.write_bytes(buf.getvalue())
                out.append((rel, f"{key}={tag}", tamper))

        def not_a_dict(r: Path, rel: str = rel) -> None:
            buf = io.BytesIO()
            torch.save([1, 2, 3], buf)
            (r / rel).write_bytes(buf.getvalue())
        out.append((rel, "a list, not a state_dict", not_a_dict))
    return out


def booster_cases(run: Path) -> list[Case]:
    out: list[Case] = []
    for f in sorted(run.rglob("*.ubj")):
        rel = f.relative_to(run).as_posix()
        for tag in ("nan-leaf", "inf-leaf", "feature-999"):
            def tamper(r: Path, rel: str = rel, tag: str = tag) -> None:
                import xgboost as xgb

                p = r / rel
                b = xgb.Booster()
                b.load_model(str(p))
                doc = json.loads(bytes(b.save_raw(raw_format="json")))
                tree = doc["learner"]["gradient_booster"]["model"]["trees"][0]
                if tag == "feature-999":
                    tree["split_indices"][0] = 999
                else:
                    value = float("nan") if tag == "nan-leaf" else float("inf")
                    tree["base_weights"][-1] = tree["split_conditions"][-1] = value
                tmp = p.with_name("tampered.json")
                tmp.write_text(json.dumps(doc))
                b2 = xgb.Booster()
                b2.load_model(str(tmp))
                tmp.unlink()
                p.write_bytes(bytes(b2.save_raw(raw_format="ubj")))
            out.append((rel, tag, tamper))
    return out


def all_cases(run: Path) -> list[Case]:
    import os

    cases = json_cases(run) + npz_cases(run) + torch_cases(run) + booster_cases(run)
    if os.environ.get("LSM_TAMPER_ALL"):
        return cases
    # a seeded sample, plus every case on a model file (few, and the riskiest)
    rng = random.Random(15)
    heavy = [c for c in cases if not c[0].endswith(".json")]
    light = [c for c in cases if c[0].endswith(".json")]
    return heavy + rng.sample(light, min(SAMPLE, len(light)))


def _outcome(run: Path, rel: str, baseline: np.ndarray) -> tuple[str, str]:
    try:
        out = predictions(run)
    except LsmError as err:
        msg = str(err)
        folder = str(Path(rel).parent) if "/" in rel else rel
        if "\n" in msg:
            return "multi-line error", msg
        if folder not in msg and Path(rel).name not in msg:
            return "error not naming the file", msg
        return "clean", msg
    except Exception as err:  # what the CLI reports as "internal error"
        return "internal error", f"{type(err).__name__}: {err}"
    if out.shape == baseline.shape and np.allclose(out, baseline, rtol=1e-9, atol=1e-12):
        return "benign", ""
    return "silently ran", "predictions differ from the untampered run's"


@pytest.mark.parametrize("which", ["src", "ft"])
def test_tampered_values_are_refused_or_harmless(which: str, runs: Path,
                                                 tmp_path: Path) -> None:
    """Every generated case is ``clean`` or ``benign``; the failures are listed together."""
    base = runs / which
    baseline = predictions(base)
    bad = []
    counts: dict[str, int] = {}
    cases = all_cases(base)
    assert len(cases) > 100
    for i, (rel, what, tamper) in enumerate(cases):
        work = tmp_path / f"case{i}"
        shutil.copytree(base, work / which)
        if which == "ft":  # the fine-tune run names its source run
            shutil.copytree(runs / "src", work / "src")
        run = work / which
        tamper(run)
        rehash(run)
        kind, msg = _outcome(run, rel, baseline)
        counts[kind] = counts.get(kind, 0) + 1
        if kind not in ("clean", "benign"):
            bad.append(f"{rel} {what}: {kind}: {' '.join(msg.split())[:200]}")
        shutil.rmtree(work)
    assert not bad, f"{len(bad)} of {len(cases)} cases ({counts}):\n" + "\n".join(bad[:40])
    assert counts.get("clean", 0) > len(cases) // 3, counts  # the checks do refuse


# ---------------------------------------------------------------------------
# the issue's examples, each through the CLI: exit 2, one line naming file and key


def _edit_json(rel: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def tamper(run: Path) -> None:
        p = run / rel
        p.write_text(json.dumps(change(json.loads(p.read_text()))))
    return tamper


def _swap_member(run: Path) -> None:
    """A member folder from a model on other inputs (one factor column renamed)."""
    d = run / "model" / "delivered" / "members" / "source_lr"
    for name in ("meta.json",):
        meta = json.loads((d / name).read_text())
        meta["feature_names_in"][0] = "geology"
        (d / name).write_text(json.dumps(meta))


def _set_key(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(d: dict[str, Any]) -> dict[str, Any]:
        d[key] = value
        return d
    return change


def _nan_weight(d: dict[str, Any]) -> dict[str, Any]:
    d["weights"][next(iter(d["weights"]))] = float("nan")
    return d


def _negative_std(d: dict[str, Any]) -> dict[str, Any]:
    d["stats"]["factors"]["elevation"]["std"] = -1.0
    return d


def _bomb(rel: str) -> Callable[[Path], None]:
    def tamper(run: Path) -> None:
        (run / rel).write_text("[" * 100_000 + "]" * 100_000)
    return tamper


CLI_CASES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "nan-head-weight": ("ft", _edit_json("model/delivered/head.json", _nan_weight),
                        r"head\.json: weights\.source_lr: nan"),
    "nesting-bomb": ("ft", _bomb("model.json"), r"model\.json: JSON nested"),
    "invalid-norm": ("ft", _edit_json("model.json", _set_key("norm", "zscore")),
                     r"model\.json: norm: 'zscore'"),
    "prevalence-2": ("ft", _edit_json("model.json", _set_key("prevalence", 2)),
                     r"model\.json: prevalence: 2"),
    "negative-std": ("ft", _edit_json("model.json", _negative_std),
                     r"model\.json: stats\.factors\.elevation\.std: -1\.0"),
    "swapped-member": ("ft", _swap_member, r"members/source_lr.*head\.json"),
    "metrics-cv-not-an-object": ("src", _edit_json("metrics.json", _set_key("cv", {"lr": 1})),
                                 r"metrics\.json: malformed 'cv'"),
    "metrics-auc-a-string": ("src", _edit_json("metrics.json", _set_key("cv", {
        "lr": {"summary": {"auc": {"mean": "high"}}}})), r"metrics\.json: cv\.lr: AUC 'high'"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_issue_examples_through_the_cli(case: str, runs: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import re

    which, tamper, names = CLI_CASES[case]
    shutil.copytree(runs / "src", tmp_path / "src")
    if which == "ft":
        shutil.copytree(runs / "ft", tmp_path / "ft")
    tamper(tmp_path / which)
    rehash(tmp_path / which)
    capsys.readouterr()
    rc = main(["predict", "--run", str(tmp_path / which), "--out", str(tmp_path / "maps"),
               "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "internal error" not in err and "Traceback" not in err, err
    assert re.search(names, " ".join(err.split())), err
    assert not (tmp_path / "maps").exists()
