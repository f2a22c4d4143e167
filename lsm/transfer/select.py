"""Choose and build the delivered transfer model from the target shots alone.

The delivered model is, by default, an *ensemble*: the recalibrated mean logit
of every source family, blended with the mean logit of target-only models
(random forest, logistic regression, XGBoost) trained on the shots, the source
weighted ``n0 / (n0 + n)`` for ``n`` shots (``n0`` = :data:`ENSEMBLE_N0`), and
the blend recalibrated on its out-of-fold margins.  Every other candidate is
scored too, by repeated cross-validation on the shots (stratified folds, or
spatial blocks when the shots are spread over enough of them) with the
out-of-fold log-loss, and replaces the default only when it beats it by more
than :data:`SWITCH_SE` paired standard errors: with tens of shots and dozens of
candidates, smaller wins are mostly the luck of the folds.  The default and
the switching threshold are the rule the real-data pilot supported (see the
README's Results); the winner is refitted on all shots.  The evaluation
hold-out is never passed in here.

Candidates (see :mod:`lsm.models.delivered` for the model they produce):

- ``ensemble(s+g1+g2.., n0)``: the default above;
- ``recal(f)``: Platt recalibration of source family ``f``'s logit (``mean``:
  the average logit of all source families; ``mean~c``: the same with the
  factors ``c`` held at their mean, offered when ``c``'s relation to
  landslides has opposite signs in source and target);
- ``offset(f, lam)``: the source logit as a feature beside the factors, ridge
  penalty ``lam`` on the factors' coefficients;
- ``residual(f)``: shallow boosting of the shots' residual over the calibrated
  source logit (XGBoost ``base_margin``);
- ``target(g)``: family ``g`` trained on the shots alone;
- ``stage1(f)`` / ``stage2(f)``: the family's own two-stage transfer;
- ``blend(f+g, w)``: ``w`` x recalibrated source ``f`` + ``(1 - w)`` x target ``g``;
- ``fit(g)``: production mode (``--shots all``) only: family ``g`` trained as
  ``lsm fit`` trains it (default, full-capacity parameters) on the target alone,
  with the target's own factors and normalisation (:attr:`Batch.F`).  The best
  of them by cross-validated log-loss is the default there; the transfer choice
  above replaces it only when lower by more than :data:`SWITCH_SE` paired
  standard errors (see :func:`select_strategy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_expit

from lsm.models.delivered import DeliveredModel, member_logit, neutralised

# -- data of one fold ----------------------------------------------------------------


@dataclass
class Batch:
    """Shots (or any rows) with the fixed source models' logits precomputed."""

    X: Any  # what the family models take (a DataFrame with feature names)
    Xa: np.ndarray  # float64 matrix, NaN -> 0 (normalised factors: 0 is the mean)
    S: dict[str, np.ndarray]  # source family -> logit; "mean" -> their average
    #: the same rows as ``lsm fit`` sees them (the target's own factors and
    #: normalisation), for the ``fit(g)`` candidates; None: they take ``X``
    F: Any = None

    def take(self, idx: np.ndarray) -> Batch:
        return Batch(_rows(self.X, idx), self.Xa[idx], {k: v[idx] for k, v in self.S.items()},
                     None if self.F is None else _rows(self.F, idx))

    def __len__(self) -> int:
        return self.Xa.shape[0]


def _rows(X: Any, idx: np.ndarray) -> Any:
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]


def make_batch(sources: dict[str, Any], X: Any, *, neutral: Sequence[str] = ()) -> Batch:
    """Compute each source model's logit on ``X`` once.

    ``"mean"`` is the average logit of all source families; with ``neutral``
    columns, ``"mean~<columns>"`` is the same average with those columns held
    at their mean (a factor whose meaning differs between the regions).
    """
    S = {f: member_logit(m, X) for f, m in sources.items()}
    if len(S) > 1:
        S["mean"] = np.mean(np.column_stack(list(S.values())), axis=1)
    if neutral:
        Xn = neutralised(X, list(neutral))
        S[neutral_key(neutral)] = np.mean(
            np.column_stack([member_logit(m, Xn) for m in sources.values()]), axis=1)
    Xa = np.nan_to_num(np.asarray(X, dtype=np.float64))
    return Batch(X, Xa, S)


def neutral_key(columns: Sequence[str]) -> str:
    """Source key of the mean source logit with ``columns`` held at their mean."""
    return "mean~" + "+".join(columns)


def _source_parts(src: str, sources: dict[str, Any], a: float
                  ) -> tuple[dict, dict, dict[str, list[str]]]:
    """Members, weights and neutral columns of a source logit (``mean`` spreads ``a``)."""
    if src.startswith("mean~"):
        cols = src[len("mean~"):].split("+")
        n = len(sources)
        names = {f: f"source_{f}~" + "+".join(cols) for f in sources}
        return ({names[f]: m for f, m in sources.items()},
                {names[f]: a / n for f in sources}, {names[f]: cols for f in sources})
    if src == "mean":
        n = len(sources)
        return ({f"source_{f}": m for f, m in sources.items()},
                {f"source_{f}": a / n for f in sources}, {})
    return {f"source_{src}": sources[src]}, {f"source_{src}": a}, {}


# -- the linear head ------------------------------------------------------------------


def fit_head(y: np.ndarray, z: np.ndarray | None = None, X: np.ndarray | None = None, *,
             lam_x: float = 10.0, lam_z: float = 1.0) -> tuple[float, float, np.ndarray | None]:
    """Penalised logistic regression ``logit = b + a z + X beta``.

    ``a`` is pulled towards 1 (trust the source's scale) with strength
    ``lam_z``; ``beta`` towards 0 with ``lam_x``; ``b`` is free.  Losses are
    summed, so more shots weigh more against the same penalties.  Returns
    ``(a, b, beta)`` (``a = 0`` without ``z``, ``beta = None`` without ``X``).
    """
    y = np.asarray(y, dtype=np.float64)
    sign = 2.0 * y - 1.0
    n = y.size
    zz = np.zeros(n) if z is None else np.asarray(z, dtype=np.float64)
    k = 0 if X is None else X.shape[1]
    a0 = 0.0 if z is None else 1.0
    lz = 0.0 if z is None else lam_z

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b, beta = theta[0], theta[1], theta[2:]
        m = a * zz + b + (X @ beta if k else 0.0)
        loss = -log_expit(sign * m).sum() + 0.5 * lz * (a - a0) ** 2 + 0.5 * lam_x * beta @ beta
        r = -sign * np.exp(log_expit(-sign * m))  # d loss_i / d m_i
        grad = np.concatenate([[r @ zz + lz * (a - a0), r.sum()],
                               (X.T @ r + lam_x * beta) if k else np.zeros(0)])
        if z is None:
            grad[0] = 0.0
        return float(loss), grad

    theta0 = np.zeros(2 + k)
    theta0[0] = a0
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 500, "gtol": 1e-7})
    th = res.x
    return float(th[0]), float(th[1]), (th[2:].copy() if k else None)


# -- factors whose relation to landslides differs between the regions ------------------


def _slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Univariate logistic slope of ``y`` on standardised ``x``, and its standard error."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    x, y = x[ok], np.asarray(y, dtype=np.float64)[ok]
    sd = x.std()
    if x.size < 4 or sd < 1e-12 or y.min() == y.max():
        return 0.0, np.inf
    x = (x - x.mean()) / sd
    _, b, beta = fit_head(y, None, x[:, None], lam_x=1e-6)
    p = 1.0 / (1.0 + np.exp(-(b + beta[0] * x)))
    info = np.sum(p * (1 - p) * x * x) - np.sum(p * (1 - p) * x) ** 2 / max(np.sum(p * (1 - p)),
                                                                          1e-12)
    return float(beta[0]), float(1.0 / np.sqrt(info)) if info > 1e-12 else np.inf


def factor_relations(X_source: Any, y_source: np.ndarray, X_target: Any, y_target: np.ndarray,
                     columns: Sequence[str], *, z: float = 1.645) -> dict[str, dict[str, Any]]:
    """Compare each factor's univariate relation to landslides in source and target.

    A factor *disagrees* when its logistic slope (on the standardised factor) has
    opposite signs in the two regions, each clearly non-zero: ``|slope| > z x SE``
    in the target and in the source.  Such a factor (a curvature that is unsigned in
    one region and signed in the other, say) misleads a source model; the candidate
    pool then also holds the sources with that factor held at its mean.
    """
    out: dict[str, dict[str, Any]] = {}
    for c in columns:
        bs, ss = _slope(np.asarray(X_source[c]), y_source)
        bt, st = _slope(np.asarray(X_target[c]), y_target)
        out[c] = {"source_slope": round(bs, 4), "target_slope": round(bt, 4),
                  "target_se": round(st, 4) if np.isfinite(st) else None,
                  "disagree": bool(bs * bt < 0 and abs(bt) > z * st and abs(bs) > z * ss)}
    return out


# -- strategies -----------------------------------------------------------------------


@dataclass
class Fitted:
    """A strategy fitted on some shots: its margin on other rows, and its model parts."""

    margin: Callable[[Batch], np.ndarray]
    parts: Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class Strategy:
    """One candidate way of building the delivered model from source models and shots."""

    kind: str
    source: str | None = None
    member: str | None = None
    lam: float | None = None
    weight: float | None = None
    opts: tuple[tuple[str, Any], ...] = ()
    rank: int = 50  # preference when the shots cannot tell candidates apart (lower first)

    @property
    def name(self) -> str:
        if self.kind == "recal":
            return f"recal({self.source})"
        if self.kind == "offset":
            return f"offset({self.source}, lam={self.lam:g})"
        if self.kind == "residual":
            return f"residual({self.source})"
        if self.kind == "target":
            return f"target({self.member})"
        if self.kind == "stage1":
            return f"stage1({self.source})"
        if self.kind == "stage2":
            extra = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in self.opts)
            return f"stage2({self.source}{', ' + extra if extra else ''})"
        if self.kind == "blend":
            return f"blend({self.source}+{self.member}, w={self.weight:g})"
        if self.kind == "ensemble":
            return f"ensemble({self.source}+{self.member}, n0={self.lam:g})"
        if self.kind == FIT:
            return f"fit({self.member})"
        return self.kind


@dataclass
class Context:
    """What strategies need besides the shots: the source models and how to train."""

    sources: dict[str, Any]
    make_target: Callable[[str, int], Any]  # (family, seed) -> unfitted family model
    seed: int = 0
    n_features: int = 0
    feature_names: list[str] | None = None
    #: ``(family, seed) -> unfitted model`` as ``lsm fit`` makes it (the ``fit(g)``
    #: candidates); None: the family's defaults
    make_fit: Callable[[str, int], Any] | None = None


def _fit_recal(st: Strategy, tr: Batch, y: np.ndarray, ctx: Context) -> Fitted:
    a, b, _ = fit_head(y, tr.S[st.source])
    members, weights, neutral = _source_parts(st.source, ctx.sources, a)
    return Fitted(lambda bt: a * bt.S[st.source] + b,
                  lambda: {"members": members, "weights": weights, "intercept": b,
                           "neutral": neutral})


def _fit_offset(st: Strategy, tr: Batch, y: np.ndarray, ctx: Context) -> Fitted:
    a, b, beta = fit_head(y, tr.S[st.source], tr.Xa, lam_x=float(st.lam))
    members, weights, neutral = _source_parts(st.source, ctx.sources, a)
    return Fitted(lambda bt: a * bt.S[st.source] + b + bt.Xa @ beta,
                  lambda: {"members": members, "weights": weights, "intercept": b,
                           "x_coef": beta, "neutral": neutral})


#: Residual booster: shallow, slow and strongly regularised, for tens of shots.
RESIDUAL_PARAMS = {"max_depth": 2, "eta": 0.1, "lambda": 5.0, "min_child_weight": 2.0,
                   "subsample": 0.8, "colsample_bytree": 0.8, "objective": "binary:logistic",
                   "nthread": 1, "verbosity": 0}
RESIDUAL_ROUNDS = 40


def _fit_residual(st: Strategy, tr: Batch, y: np.ndarray, ctx: Context) -> Fitted:
    import xgboost as xgb

    a, b, _ = fit_head(y, tr.S[st.source])
    base = a * tr.S[st.source] + b
    params = {**RESIDUAL_PARAMS, "seed": ctx.seed}
    d = xgb.DMatrix(tr.Xa.astype(np.float32), label=y, base_margin=base)
    booster = xgb.train(params, d, num_boost_round=RESIDUAL_ROUNDS)
    members, weights, neutral = _source_parts(st.source, ctx.sources, a)

    def margin(bt: Batch) -> np.ndarray:
        base_v = a * bt.S[st.source] + b
        dv = xgb.DMatrix(bt.Xa.astype(np.float32), base_margin=base_v)
        return np.asarray(booster.predict(dv, output_margin=True), dtype=np.float64)

    return Fitted(margin, lambda: {"members": members, "weights": weights, "intercept": b,
                                   "booster": booster, "neutral": neutral})


def _single(model: Any, name: str) -> Fitted:
    return Fitted(lambda bt: member_logit(model, bt.X),
                  lambda: {"members": {name: model}, "weights": {name: 1.0}, "intercept": 0.0})


def _fit_target(st: Strategy, tr: Batch, y: np.ndarray, ctx: Context) -> Fitted:
    model = ctx.make_target(st.member, ctx.seed).fit(tr.X, y)
    return _single(model, f"target_{st.member}")


#: Kind of the plain-fit candidates (production mode).
FIT = "fit"


def _default_fit(family: str, seed: int) -> Any:
    from lsm.models.base import get_family

    cls = get_family(family)
    return cls(**({"random_state": seed} if "random_state" in cls().get_params() else {}))


def _fit_plain(st: Strategy, tr: Batch, y: np.ndarray, ctx: Context) -> Fitted:
    """Family ``st.member`` as ``lsm fit`` trains it, on the target's own matrix."""
    model = (ctx.make_fit or _default_fit)(str(st.member), ctx.seed).fit(
        tr.X if tr.F is None else tr.F, y)
    name = f"fit_{st.member}"
    return Fitted(lambda bt: member_logit(model, bt.X if bt.F is None else bt.F),
                  lambda: {"members": {name: model}, "weights": {name: 1.0}, "intercept": 0.0})


def fit_strategies(families: Sequence[str]) -> list[Strategy]:
    """The plain-fit candidates of production mode, one per family."""
    return [Strategy(FIT, member=g, rank=70) for g in families]


def _fit_stage(st: Strategy, tr: Batch, y: np.ndarray, ctx: Context) -> Fitted:
    from lsm.transfer import adapt, finetune

    src = ctx.sources[st.source]
    model = adapt(src, tr.X, y, random_state=ctx.seed)
    if st.kind == "stage2":
        model = finetune(model, tr.X, y, source=src, random_state=ctx.seed, **dict(st.opts))
    return _single(model, f"{st.kind}_{st.source}")


def _fit_blend(st: Strategy, tr: Batch, y: np.ndarray, ctx: Context) -> Fitted:
    s = _fit_recal(Strategy("recal", source=st.source), tr, y, ctx)
    t = _fit_target(Strategy("target", member=st.member), tr, y, ctx)
    w = float(st.weight)

    def parts() -> dict[str, Any]:
        ps, pt = s.parts(), t.parts()
        weights = {k: w * v for k, v in ps["weights"].items()}
        weights.update({k: (1 - w) * v for k, v in pt["weights"].items()})
        return {"members": {**ps["members"], **pt["members"]}, "weights": weights,
                "intercept": w * ps["intercept"], "neutral": ps.get("neutral", {})}

    return Fitted(lambda bt: w * s.margin(bt) + (1 - w) * t.margin(bt), parts)


def ensemble_weight(n0: float, n: int) -> float:
    """Weight of the source in the default ensemble: ``n0 / (n0 + n)`` for ``n`` shots.

    The source counts as ``n0`` shots' worth of evidence: with 20 shots (K = 10)
    source and target ensemble weigh about equally, with 200 shots (K = 100) the
    target ensemble takes 90 %.
    """
    return float(n0) / (float(n0) + float(n))


def _fit_ensemble(st: Strategy, tr: Batch, y: np.ndarray, ctx: Context) -> Fitted:
    s = _fit_recal(Strategy("recal", source=st.source), tr, y, ctx)
    members = str(st.member).split("+")
    ts = [_fit_target(Strategy("target", member=g), tr, y, ctx) for g in members]
    w = ensemble_weight(float(st.lam), len(y))

    def margin(bt: Batch) -> np.ndarray:
        return w * s.margin(bt) + (1 - w) * np.mean([t.margin(bt) for t in ts], axis=0)

    def parts() -> dict[str, Any]:
        ps = s.parts()
        weights = {k: w * v for k, v in ps["weights"].items()}
        out_members = dict(ps["members"])
        for t in ts:
            pt = t.parts()
            out_members.update(pt["members"])
            weights.update({k: (1 - w) * v / len(ts) for k, v in pt["weights"].items()})
        return {"members": out_members, "weights": weights, "intercept": w * ps["intercept"],
                "neutral": ps.get("neutral", {})}

    return Fitted(margin, parts)


_FITTERS: dict[str, Callable[[Strategy, Batch, np.ndarray, Context], Fitted]] = {
    "recal": _fit_recal, "offset": _fit_offset, "residual": _fit_residual,
    "target": _fit_target, "stage1": _fit_stage, "stage2": _fit_stage, "blend": _fit_blend,
    "ensemble": _fit_ensemble, FIT: _fit_plain,
}
#: Strategies scored in cross-validation from their parts' out-of-fold margins.
_DERIVED = ("blend", "ensemble")

BLEND_WEIGHTS = (0.25, 0.5, 0.75)
#: Prior strength of the source in the default ensemble, in shots (see ensemble_weight).
ENSEMBLE_N0 = 20.0
#: The default is replaced only by a candidate whose cross-validated log-loss is lower
#: by more than this many paired standard errors.
SWITCH_SE = 3.0


def default_ensemble(source: str, target_families: Sequence[str]) -> Strategy:
    """The delivered default: the calibrated mean source blended with a target ensemble."""
    return Strategy("ensemble", source=source, member="+".join(target_families),
                    lam=ENSEMBLE_N0, rank=0)
OFFSET_LAMS = (30.0, 3.0)


def stage_options(family: str) -> tuple[tuple[tuple[str, Any], ...], ...]:
    """Stage-2 options under which ``family``'s own stages are candidates of the delivered
    model: its class's ``stage_candidates`` (none for a name that is not a family).

    Only cheap families declare some (built in: lr); the stages of rf, xgb and the MLP
    cost 20-400x more per fold on tens of shots and never ranked first among the
    candidates on the pilot's hold-out.
    """
    from lsm.models.base import get_family

    try:
        cls = get_family(family)
    except ValueError:
        return ()
    return tuple(tuple(opts.items()) for opts in cls.stage_candidates)


def target_candidates(families: Sequence[str]) -> list[str]:
    """The ``families`` trained on the shots alone as candidates of the delivered model
    (classes with ``delivered_target``), in the registry's order.

    Built in: rf, lr, xgb.  The MLP is not one: it costs ten times the others on tens of
    shots and was never the best target-only family in the shots-curve study.
    """
    from lsm.models.base import FAMILY_NAMES, get_family

    return [f for f in FAMILY_NAMES if f in families and get_family(f).delivered_target]


def default_strategies(source_families: Sequence[str], target_families: Sequence[str], *,
                       stages: bool = True) -> list[Strategy]:
    """The candidate pool: every source family (and their mean) x every combination."""
    srcs = list(source_families) + (["mean"] if len(source_families) > 1 else [])
    out: list[Strategy] = []
    for s in srcs:
        pref = 0 if s == "mean" else 1
        out.append(Strategy("recal", source=s, rank=10 + pref))
        for i, lam in enumerate(OFFSET_LAMS):
            out.append(Strategy("offset", source=s, lam=lam, rank=20 + 2 * i + pref))
        out.append(Strategy("residual", source=s, rank=30 + pref))
        for g in target_families:
            for w in BLEND_WEIGHTS:
                out.append(Strategy("blend", source=s, member=g, weight=w, rank=40 + pref))
    for g in target_families:
        out.append(Strategy("target", member=g, rank=60))
    if len(srcs) and target_families:
        out.append(default_ensemble(srcs[-1], target_families))
    if stages:
        for f in source_families:
            if stage_options(f):
                out.append(Strategy("stage1", source=f, rank=35))
                for opts in stage_options(f):
                    out.append(Strategy("stage2", source=f, opts=opts, rank=36))
    return out


def neutral_strategies(source: str, target_families: Sequence[str]) -> list[Strategy]:
    """Candidates built on the mean source with disagreeing factors held at their mean."""
    out = [Strategy("ensemble", source=source, member="+".join(target_families),
                    lam=ENSEMBLE_N0, rank=1),
           Strategy("recal", source=source, rank=12),
           Strategy("offset", source=source, lam=OFFSET_LAMS[0], rank=22)]
    for g in target_families:
        for w in BLEND_WEIGHTS:
            out.append(Strategy("blend", source=source, member=g, weight=w, rank=42))
    return out


# -- cross-validation on the shots ----------------------------------------------------


def shot_folds(y: np.ndarray, *, n_splits: int, n_repeats: int, seed: int,
               xy: np.ndarray | None = None, blocks: np.ndarray | None = None
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Train/validation index pairs over the shots, and how they were made.

    With ``blocks`` (a block id per shot: production mode passes the blocks of the
    folds that report skill), grouped stratified folds over those blocks when each
    class spans at least ``n_splits`` of them.  Otherwise spatial blocks (grouped,
    stratified folds) when the shots have coordinates and each class spans at least
    ``2 * n_splits`` blocks of a grid of about ``4 * n_splits`` blocks per side;
    otherwise repeated stratified folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y).astype(int)
    k = int(min(n_splits, np.bincount(y, minlength=2).min()))
    if k < 2:
        return [], "none (fewer than 2 shots of a class)"
    folds: list[tuple[np.ndarray, np.ndarray]] = []
    if blocks is not None and min(np.unique(blocks[y == c]).size for c in (0, 1)) >= k:
        for r in range(n_repeats):
            cv = StratifiedGroupKFold(k, shuffle=True, random_state=seed + r)
            folds += list(cv.split(np.zeros(y.size), y, blocks))
        return folds, f"the skill folds' spatial blocks ({k} folds x {n_repeats})"
    if xy is not None and np.isfinite(xy).all():
        span = np.ptp(xy, axis=0).max()
        bs = span / (4 * k) if span > 0 else 1.0
        g = (np.floor((xy[:, 0] - xy[:, 0].min()) / bs) * 10_000
             + np.floor((xy[:, 1] - xy[:, 1].min()) / bs)).astype(np.int64)
        if min(np.unique(g[y == c]).size for c in (0, 1)) >= 2 * k:
            for r in range(n_repeats):
                cv = StratifiedGroupKFold(k, shuffle=True, random_state=seed + r)
                folds += list(cv.split(np.zeros(y.size), y, g))
            return folds, f"spatial blocks ({k} folds x {n_repeats})"
    for r in range(n_repeats):
        cv = StratifiedKFold(k, shuffle=True, random_state=seed + r)
        folds += list(cv.split(np.zeros(y.size), y))
    return folds, f"stratified ({k} folds x {n_repeats})"


def _per_sample_loss(y: np.ndarray, m: np.ndarray) -> np.ndarray:
    return -log_expit((2.0 * y - 1.0) * m)


@dataclass
class Selection:
    """The outcome of :func:`select_strategy`."""

    chosen: Strategy
    best: Strategy
    cv_loss: dict[str, float]
    cv_auc: dict[str, float]
    folds: str
    rule: str
    oof: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    rows: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=int))
    relations: dict[str, dict[str, Any]] = field(default_factory=dict)
    neutral: list[str] = field(default_factory=list)
    #: production mode: the transfer choice and the best plain fit it was compared with,
    #: and the cross-validated log-loss of each (the transfer's as delivered: recalibrated)
    versus: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        top = sorted(self.cv_loss, key=self.cv_loss.get)[:8]
        out = {"chosen": self.chosen.name, "best_cv": self.best.name, "rule": self.rule,
               "folds": self.folds, "disagreeing_factors": list(self.neutral),
               "cv_log_loss": {k: round(self.cv_loss[k], 5) for k in top},
               "cv_auc": {k: round(self.cv_auc[k], 5) for k in top}}
        if self.versus:
            out["transfer_vs_fit"] = dict(self.versus)
        return out


def select_strategy(strategies: Sequence[Strategy], shots: Batch, y: np.ndarray, ctx: Context,
                    *, n_splits: int = 5, n_repeats: int = 2, xy: np.ndarray | None = None,
                    switch_se: float = SWITCH_SE, blocks: np.ndarray | None = None
                    ) -> Selection:
    """Score every strategy by out-of-fold log-loss on the shots; keep the preferred one
    unless another is clearly better (see the module docstring)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=np.float64)
    folds, how = shot_folds(y, n_splits=n_splits, n_repeats=n_repeats, seed=ctx.seed, xy=xy,
                            blocks=blocks)
    fallback = min(strategies, key=lambda s: s.rank)
    if not folds:
        return Selection(fallback, fallback, {}, {}, how,
                         f"too few shots to cross-validate: the preferred {fallback.name}")
    base = [s for s in strategies if s.kind not in _DERIVED]
    derived = [s for s in strategies if s.kind in _DERIVED]
    needed = set(base)
    for s in derived:  # blends and ensembles are scored from their parts' OOF margins
        needed.add(Strategy("recal", source=s.source, rank=-1))
        for g in str(s.member).split("+"):
            needed.add(Strategy("target", member=g, rank=-1))
    key = {s: (s.kind, s.source, s.member, s.lam, s.opts) for s in needed}
    uniq: dict[tuple, Strategy] = {}
    for s in needed:
        uniq.setdefault(key[s], s)
    oof_k: dict[tuple, np.ndarray] = {k: np.zeros(0) for k in uniq}
    rows: list[np.ndarray] = []
    margins: dict[tuple, list[np.ndarray]] = {k: [] for k in uniq}
    for tr, va in folds:
        btr, bva = shots.take(tr), shots.take(va)
        rows.append(va)
        for k, s in uniq.items():
            try:
                margins[k].append(_FITTERS[s.kind](s, btr, y[tr], ctx).margin(bva))
            except ValueError:  # e.g. a family that cannot fit this fold
                margins[k].append(np.full(va.size, np.nan))
    idx = np.concatenate(rows)
    yy = y[idx]
    for k in uniq:
        oof_k[k] = np.concatenate(margins[k])
    oof: dict[str, np.ndarray] = {}
    n_train = int(round(y.size * (1 - 1 / max(2, len(folds) // max(1, n_repeats)))))
    for s in strategies:
        if s.kind in _DERIVED:
            m_s = oof_k[("recal", s.source, None, None, ())]
            m_t = np.mean([oof_k[("target", None, g, None, ())]
                           for g in str(s.member).split("+")], axis=0)
            w = s.weight if s.kind == "blend" else ensemble_weight(float(s.lam), n_train)
            oof[s.name] = w * m_s + (1 - w) * m_t
        else:
            oof[s.name] = oof_k[key[s]]
    by_name = {s.name: s for s in strategies}
    losses = {n: _per_sample_loss(yy, m) for n, m in oof.items() if np.isfinite(m).all()}
    cv_loss = {n: float(v.mean()) for n, v in losses.items()}
    cv_auc = {n: float(roc_auc_score(yy, oof[n])) for n in losses}
    best = min(cv_loss, key=cv_loss.get)
    n_eff = y.size  # repeats of the same shots are not independent evidence
    fits = [n for n in losses if by_name[n].kind == FIT]
    transfer = {n: v for n, v in losses.items() if by_name[n].kind != FIT} or losses
    preferred = min(transfer, key=lambda n: (by_name[n].rank, cv_loss[n]))
    # the preferred candidate stays unless another beats it by more than SWITCH_SE
    # paired standard errors: with tens of shots and many candidates, smaller wins are
    # mostly the luck of the folds (the winner's curse)
    clear = {}
    for n, v in transfer.items():
        d = v - losses[preferred]
        se = d.std(ddof=1) / np.sqrt(n_eff) if d.size > 1 else 0.0
        if d.mean() < -switch_se * se:
            clear[n] = cv_loss[n]
    chosen = min(clear, key=clear.get) if clear else preferred
    rule = (f"{chosen} beats the default by more than {switch_se:g} standard errors of "
            "the cross-validated log-loss" if clear else
            f"default {preferred}: no candidate beats it by more than {switch_se:g} "
            f"standard errors of the cross-validated log-loss (best: {best})")
    versus: dict[str, Any] = {}
    if fits and chosen not in fits:
        # production: with every label the user's alternative is 'lsm fit', so the best
        # plain fit (lowest log-loss of a handful) is the default there, and the transfer
        # choice (itself the pick of dozens) replaces it only when its log-loss, as
        # delivered, is lower by more than ``switch_se`` paired standard errors
        fit = min(fits, key=cv_loss.get)
        t_each = _delivered_loss(by_name[chosen], yy, oof[chosen])
        t_loss = float(t_each.mean())
        d = t_each - losses[fit]
        se = d.std(ddof=1) / np.sqrt(n_eff) if d.size > 1 else 0.0
        versus = {"transfer": chosen, "transfer_cv_log_loss": round(t_loss, 5),
                  "fit": fit, "fit_cv_log_loss": round(cv_loss[fit], 5),
                  "fit_cv_auc": round(cv_auc[fit], 5), "difference_se": round(float(se), 5)}
        if d.mean() < -switch_se * se:
            rule += (f"; its log-loss as delivered ({t_loss:.4f}) beats the best plain fit on "
                     f"the target alone, {fit} ({cv_loss[fit]:.4f}), by more than "
                     f"{switch_se:g} standard errors")
        else:
            rule = (f"{fit}, the best plain fit on the target alone (log-loss "
                    f"{cv_loss[fit]:.4f}): the transfer choice {chosen} ({t_loss:.4f}) does "
                    f"not beat it by more than {switch_se:g} standard errors")
            chosen = fit
    sel = Selection(by_name[chosen], by_name[best], cv_loss, cv_auc, how, rule, oof, idx)
    sel.versus = versus
    return sel


def _delivered_loss(strategy: Strategy, y: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """Per-row cross-validated log-loss of ``strategy`` as :func:`build` delivers it: an
    ensemble recalibrated on its out-of-fold margins (two parameters on every point)."""
    if strategy.kind == "ensemble":
        a, b, _ = fit_head(y, margin, lam_z=CALIBRATION_LAM)
        margin = a * margin + b
    return _per_sample_loss(y, margin)


#: Pull of the calibration slope towards 1 (the ensemble's own scale).
CALIBRATION_LAM = 10.0


def build(strategy: Strategy, shots: Batch, y: np.ndarray, ctx: Context,
          selection: Selection | None = None) -> DeliveredModel:
    """Fit ``strategy`` on all shots and return it as a :class:`DeliveredModel`.

    An ensemble is then recalibrated (Platt, slope pulled towards 1) on its
    out-of-fold margins from ``selection``: its members were not calibrated
    together, and those margins come from models that never saw the rows.
    """
    fitted = _FITTERS[strategy.kind](strategy, shots, np.asarray(y, dtype=np.float64), ctx)
    parts = fitted.parts()
    if (strategy.kind == "ensemble" and selection is not None
            and strategy.name in selection.oof and selection.rows.size):
        yy = np.asarray(y, dtype=np.float64)[selection.rows]
        a, b, _ = fit_head(yy, selection.oof[strategy.name], lam_z=CALIBRATION_LAM)
        parts["weights"] = {k: a * v for k, v in parts["weights"].items()}
        parts["intercept"] = a * parts["intercept"] + b
    return DeliveredModel.assemble(strategy=strategy.name, n_features=ctx.n_features,
                                   feature_names=ctx.feature_names, **parts)


def fit_delivered(sources: dict[str, Any], X: Any, y: Any, *,
                  make_target: Callable[[str, int], Any], target_families: Sequence[str],
                  seed: int = 0, n_splits: int = 5, n_repeats: int = 2,
                  xy: np.ndarray | None = None, strategies: Sequence[Strategy] | None = None,
                  stages: bool = True, source_table: tuple[Any, np.ndarray] | None = None,
                  continuous: Sequence[str] = (), fit_matrix: Any = None,
                  fit_families: Sequence[str] = (),
                  make_fit: Callable[[str, int], Any] | None = None,
                  blocks: np.ndarray | None = None) -> tuple[DeliveredModel, Selection]:
    """Choose a strategy by cross-validation on the shots ``(X, y)`` and fit it on all.

    Parameters
    ----------
    sources : dict
        Fitted source models by family (never modified).
    X, y
        The target shots (design matrix and 0/1 labels).  Nothing else of
        the target is seen.
    make_target : callable
        ``(family, seed) -> unfitted model`` for the target-trained candidates.
    target_families : sequence of str
        Families trained on the shots alone as candidates and blend members.
    xy : ndarray of shape (n, 2), optional
        Coordinates of the shots, for spatial folds.
    source_table : (X, y), optional
        The source's design matrix and labels; with ``continuous`` (column names),
        factors whose relation disagrees between source and shots are flagged and
        the pool gains the sources with those factors held at their mean.
    fit_matrix, fit_families, make_fit
        Production mode: the same rows as ``lsm fit`` sees them (the target's own
        factors and normalisation), and the families trained on it as ``lsm fit``
        trains them (``make_fit(family, seed)``); each is a ``fit(g)`` candidate,
        the default there, replaced by the transfer choice only when that is clearly better.
        The delivered model then takes ``fit_matrix``'s columns.
    blocks : ndarray of shape (n,), optional
        Spatial block of each row: the inner folds group whole blocks (production
        mode: the blocks of the folds that report skill; see :func:`shot_folds`).

    Returns
    -------
    (DeliveredModel, Selection)
    """
    y = np.asarray(y).astype(np.float64)
    ctx = Context(sources=sources, make_target=make_target, seed=seed,
                  n_features=np.asarray(X).shape[1],
                  feature_names=list(X.columns) if hasattr(X, "columns") else None)
    neutral: list[str] = []
    relations: dict[str, dict[str, Any]] = {}
    if source_table is not None and hasattr(X, "columns"):
        Xsrc, ysrc = source_table
        cols = [c for c in continuous if c in X.columns and c in Xsrc.columns]
        relations = factor_relations(Xsrc, np.asarray(ysrc), X, y, cols)
        neutral = [c for c, r in relations.items() if r["disagree"]]
    pool = list(strategies or default_strategies(list(sources), list(target_families),
                                                 stages=stages))
    if neutral and strategies is None:
        pool += neutral_strategies(neutral_key(neutral), list(target_families))
    shots = make_batch(sources, X, neutral=neutral)
    if fit_matrix is not None and fit_families:
        if len(fit_matrix) != len(y):
            raise ValueError(f"fit_matrix has {len(fit_matrix)} rows for {len(y)} labels")
        shots.F = fit_matrix
        pool += fit_strategies(fit_families)
        ctx.make_fit = make_fit
    sel = select_strategy(pool, shots, y, ctx, n_splits=n_splits, n_repeats=n_repeats, xy=xy,
                          blocks=blocks)
    sel.relations = relations
    sel.neutral = neutral
    if sel.chosen.kind == FIT:  # the delivered model takes the fit's own columns
        F = shots.F
        shots = Batch(F, np.nan_to_num(np.asarray(F, dtype=np.float64)), {})
        ctx.n_features = shots.Xa.shape[1]
        ctx.feature_names = list(F.columns) if hasattr(F, "columns") else None
    return build(sel.chosen, shots, y, ctx, sel), sel
