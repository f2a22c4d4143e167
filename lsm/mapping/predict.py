"""Block-wise prediction of a factor stack to a probability raster.

:func:`predict_raster` turns a region's factor stack (an ``xarray.Dataset``
with one variable per factor on dims ``("y", "x")``) into a lazy
``P(landslide)`` raster.  Each block of the stack becomes one table of the
pixels whose factors are all finite; the model sees that table and nothing
else.  Pixels with any missing factor stay NaN and never reach the model, and
blocks without a single valid pixel skip the model call.

Example
-------
>>> prob = predict_raster(stack, model_predict, factors=["slope", "lithology"])  # doctest: +SKIP
>>> prob.compute()                                                                # doctest: +SKIP
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from lsm.errors import FactorMismatchError

PredictFn = Callable[[pd.DataFrame], np.ndarray]

NAME = "susceptibility"
_TOL = 1e-6
#: Rows of one ``predict_fn`` call: a large block is predicted in slices of this
#: many valid pixels, so the tables, design matrices and model buffers of a call
#: stay a few tens of MB, whatever the chunk size (the allocator reuses buffers
#: that size instead of asking the OS for fresh pages every call).
BATCH_ROWS = 1 << 18


def predict_raster(
    stack: xr.Dataset,
    predict_fn: PredictFn,
    *,
    factors: Sequence[str],
    dtype: str | np.dtype = "float32",
    value_range: tuple[float, float] | None = (0.0, 1.0),
    name: str = NAME,
) -> xr.DataArray:
    """Predict ``P(landslide)`` for every pixel of a factor stack, block by block.

    Parameters
    ----------
    stack
        Factor stack: one 2-D variable per factor on the same grid, NaN where
        a factor is missing, georeferenced with rioxarray.  Dask-backed
        variables give a lazy result; numpy-backed ones are predicted at once.
    predict_fn
        Maps a table with one column per factor (raw factor values, columns
        named and ordered as ``factors``) to one probability per row.  It must
        be row-wise: a pixel's probability may not depend on the other rows of
        the table, so that blocks can be predicted independently.
    factors
        Names of the factors the model takes, in the model's order.
    dtype
        Floating dtype of the result.
    value_range
        Values ``predict_fn`` may return (rounding aside); ``None`` for
        unbounded outputs such as per-pixel SHAP values.
    name
        Name of the result.

    Returns
    -------
    xarray.DataArray
        ``"susceptibility"`` on the stack's grid, with its CRS and transform,
        NaN (also its ``_FillValue``) where any factor is missing.

    Raises
    ------
    FactorMismatchError
        A factor is not in the stack, or factor variables are not on one 2-D grid.

    Example
    -------
    >>> prob = predict_raster(stack, lambda t: model.predict_proba(t)[:, 1],
    ...                       factors=["slope", "elevation"])          # doctest: +SKIP
    """
    factors = list(factors)
    if not factors:
        raise FactorMismatchError("predict_raster: no factors given")
    missing = [f for f in factors if f not in stack.data_vars]
    if missing:
        raise FactorMismatchError(
            f"factor(s) {', '.join(map(repr, missing))} not in the stack "
            f"(it has: {', '.join(map(str, stack.data_vars)) or 'nothing'})"
        )
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type, got {dtype}")

    first = stack[factors[0]]
    if first.ndim != 2:
        raise FactorMismatchError(
            f"factor {factors[0]!r} has dims {first.dims}; expected 2-D ('y', 'x')"
        )
    for f in factors[1:]:
        if stack[f].dims != first.dims:
            raise FactorMismatchError(
                f"factor {f!r} has dims {stack[f].dims}, {factors[0]!r} has {first.dims}"
            )

    block_fn = _BlockPredictor(predict_fn, factors, dtype, value_range)
    if any(stack[f].chunks is not None for f in factors):
        data = _predict_dask([stack[f].data for f in factors], block_fn, dtype)
    else:
        data = block_fn(*[np.asarray(stack[f].values) for f in factors])

    out = xr.DataArray(
        data,
        dims=first.dims,
        coords={d: stack.coords[d] for d in first.dims if d in stack.coords},
        name=name,
        attrs={"long_name": "P(landslide)" if name == NAME else name,
               "factors": ",".join(factors)},
    )
    if stack.rio.crs is not None:
        out = out.rio.write_crs(stack.rio.crs)
    out = out.rio.write_transform(stack.rio.transform())
    return out.rio.write_nodata(np.nan, encoded=False)


class _BlockPredictor:
    """Predicts one block: table of the all-finite pixels -> probabilities."""

    def __init__(self, predict_fn: PredictFn, factors: list[str], dtype: np.dtype,
                 value_range: tuple[float, float] | None = (0.0, 1.0)):
        self.predict_fn = predict_fn
        self.factors = factors
        self.dtype = dtype
        self.value_range = value_range

    def __call__(self, *blocks: np.ndarray) -> np.ndarray:
        shape = blocks[0].shape
        out = np.full(shape, np.nan, dtype=self.dtype)
        valid = np.ones(shape, dtype=bool)
        for b in blocks:
            valid &= np.isfinite(b)
        n = int(valid.sum())
        if n == 0:
            return out
        index = np.flatnonzero(valid.ravel())
        flat = [b.ravel() for b in blocks]
        prob = np.empty(n, dtype=np.float64)
        for lo in range(0, n, BATCH_ROWS):
            rows = index[lo:lo + BATCH_ROWS]
            table = pd.DataFrame({f: b[rows] for f, b in zip(self.factors, flat, strict=True)})
            part = np.asarray(self.predict_fn(table), dtype=np.float64).reshape(-1)
            if part.shape[0] != len(rows):
                raise ValueError(
                    f"predict_fn returned {part.shape[0]} values for a table of {len(rows)} rows"
                )
            prob[lo:lo + len(rows)] = part
        if self.value_range is None:
            out[valid] = prob
            return out
        lo, hi = self.value_range
        # Rounding may overshoot [0, 1] by a hair; anything more is a model bug.
        bad = ~((prob >= lo - _TOL) & (prob <= hi + _TOL))
        if bad.any():
            raise ValueError(
                f"predict_fn returned {int(bad.sum())} value(s) outside [{lo:g}, {hi:g}] or "
                f"NaN (e.g. {prob[bad][0]!r})"
            )
        out[valid] = np.clip(prob, lo, hi)
        return out


def _predict_dask(arrays: list, block_fn: _BlockPredictor, dtype: np.dtype):
    import dask.array as da

    # All factors must share one chunking so that block i of each lines up.
    ref = next(a for a in arrays if isinstance(a, da.Array))
    aligned = [
        a.rechunk(ref.chunks) if isinstance(a, da.Array) else da.from_array(a, chunks=ref.chunks)
        for a in arrays
    ]
    # meta= keeps dask from calling the model on a dummy block to infer dtypes;
    # a random name because predict_fn (a model) cannot be hashed reliably.
    return da.map_blocks(
        block_fn,
        *aligned,
        dtype=dtype,
        meta=np.empty((0, 0), dtype=dtype),
        name=f"predict-raster-{uuid.uuid4().hex}",
    )
