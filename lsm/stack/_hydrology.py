"""Compiled (numba) kernels of the global hydrology behind the wetness index.

Depression filling (Priority-Flood+epsilon), multiple-flow-direction
accumulation and the wetness index itself, each one pass over flat arrays,
with no Python object per cell and no grid-sized temporaries beyond the
result and one byte per cell of bookkeeping.  They reproduce, cell for cell,
the algorithms documented in :mod:`lsm.stack.terrain` (the filled surface
exactly; accumulation up to the order of floating-point additions).

numba comes with shap (a dependency); :mod:`lsm.stack.terrain` imports this
module only when a kernel is needed, and the compiled code is cached on disk
(``__pycache__``, or numba's user cache when the package folder is read-only).
"""

from __future__ import annotations

import math

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)

# Neighbour order of the Python reference: rows -1, 0, +1, columns -1, 0, +1.
_DI = np.array([-1, -1, -1, 0, 0, 1, 1, 1], dtype=np.int64)
_DJ = np.array([-1, 0, 1, -1, 1, -1, 0, 1], dtype=np.int64)


@_jit
def _heap_push(lev, idx, n, level, cell):
    # binary min-heap on (level, cell): cells are unique, so the order is total
    k = n
    while k > 0:
        parent = (k - 1) >> 1
        pl = lev[parent]
        if pl < level or (pl == level and idx[parent] < cell):
            break
        lev[k] = pl
        idx[k] = idx[parent]
        k = parent
    lev[k] = level
    idx[k] = cell

@_jit
def _heap_pop(lev, idx, n):
    # removes the top of a heap of n items; the caller has read lev[0], idx[0]
    n -= 1
    level = lev[n]
    cell = idx[n]
    k = 0
    while True:
        child = 2 * k + 1
        if child >= n:
            break
        if child + 1 < n and (lev[child + 1] < lev[child] or (
                lev[child + 1] == lev[child] and idx[child + 1] < idx[child])):
            child += 1
        cl = lev[child]
        if level < cl or (level == cl and cell < idx[child]):
            break
        lev[k] = cl
        idx[k] = idx[child]
        k = child
    if n > 0:
        lev[k] = level
        idx[k] = cell

@_jit
def _doubled(a, n):
    """``a`` at twice its size, its first ``n`` entries kept (a growing stack or heap)."""
    out = np.empty(2 * a.size, dtype=a.dtype)
    out[:n] = a[:n]
    return out


@_jit
def _fill(flat, shut, ny, nx, seeds, eps, di, dj):
    """Priority-Flood+epsilon in place on the flat ``flat`` (inf where invalid).

    ``shut`` (uint8, flat) is 1 on invalid cells; ``seeds`` are flat indices in
    increasing order.  Same visiting order as the reference: lowest
    (level, index) first from the heap, the pit queue (FIFO) before the heap.
    """
    cap = max(1024, 2 * seeds.size)
    lev = np.empty(cap, dtype=np.float64)
    idx = np.empty(cap, dtype=np.int64)
    n = 0
    for s in seeds:
        shut[s] = 1
        if n == lev.size:
            lev, idx = _doubled(lev, n), _doubled(idx, n)
        _heap_push(lev, idx, n, flat[s], s)
        n += 1
    queue = np.empty(1024, dtype=np.int64)
    head = 0
    tail = 0
    while n > 0 or head < tail:
        if head < tail:
            cell = queue[head]
            head += 1
            level = flat[cell]
        else:
            level = lev[0]
            cell = idx[0]
            _heap_pop(lev, idx, n)
            n -= 1
        row = cell // nx
        col = cell - row * nx
        for k in range(8):
            r = row + di[k]
            c = col + dj[k]
            if r < 0 or r >= ny or c < 0 or c >= nx:
                continue
            nb = r * nx + c
            if shut[nb]:
                continue
            shut[nb] = 1
            if flat[nb] <= level + eps:
                flat[nb] = level + eps
                if tail == queue.size:
                    if head > 0:  # reuse the consumed front of the queue
                        queue[:tail - head] = queue[head:tail]
                        tail -= head
                        head = 0
                    if tail == queue.size:
                        queue = _doubled(queue, tail)
                queue[tail] = nb
                tail += 1
            else:
                if n == lev.size:
                    lev, idx = _doubled(lev, n), _doubled(idx, n)
                _heap_push(lev, idx, n, flat[nb], nb)
                n += 1

@_jit
def _weights(filled, row, col, dist, exponent, di, dj, w, down):
    """Freeman weights of one cell towards its 8 neighbours into ``w`` (``down``:
    the neighbour is lower); returns their sum."""
    ny, nx = filled.shape
    z = filled[row, col]
    total = 0.0
    for k in range(8):
        w[k] = 0.0
        down[k] = False
        r = row + di[k]
        c = col + dj[k]
        if r < 0 or r >= ny or c < 0 or c >= nx:
            continue
        drop = z - filled[r, c]
        if drop > 0:  # False where either side is NaN
            down[k] = True
            w[k] = (drop / dist[k]) ** exponent
            total += w[k]
    return total

@_jit
def _accumulate(filled, dist, exponent, di, dj):
    """MFD accumulation in topological order (Kahn): a cell is passed on once all
    the higher neighbours draining into it have been."""
    ny, nx = filled.shape
    acc = np.full((ny, nx), np.nan)
    pending = np.zeros((ny, nx), dtype=np.uint8)  # donors not yet passed on; 255: done
    w = np.empty(8)
    down = np.zeros(8, dtype=np.bool_)
    for i in range(ny):
        for j in range(nx):
            z = filled[i, j]
            if not np.isfinite(z):
                continue
            acc[i, j] = 1.0
            for k in range(8):
                r = i - di[k]
                c = j - dj[k]
                if 0 <= r < ny and 0 <= c < nx and filled[r, c] - z > 0:
                    pending[i, j] += 1
    stack = np.empty(1024, dtype=np.int64)
    top = 0
    for i in range(ny):
        for j in range(nx):
            if pending[i, j] == 0 and np.isfinite(filled[i, j]):
                if top == stack.size:
                    stack = _doubled(stack, top)
                stack[top] = i * nx + j
                top += 1
                while top > 0:
                    top -= 1
                    cell = stack[top]
                    row = cell // nx
                    col = cell - row * nx
                    pending[row, col] = 255
                    total = _weights(filled, row, col, dist, exponent, di, dj, w, down)
                    a = acc[row, col]
                    for k in range(8):
                        if down[k]:
                            r = row + di[k]
                            c = col + dj[k]
                            if w[k] > 0:
                                acc[r, c] += a * (w[k] / total)
                            pending[r, c] -= 1
                            if pending[r, c] == 0:
                                if top == stack.size:
                                    stack = _doubled(stack, top)
                                stack[top] = r * nx + c
                                top += 1
    return acc

@_jit
def _wetness(z, acc, hx, hy, cell_area, width, min_tan):
    """ln(a / tan b), float32, NaN on the border and where the 3x3 window of ``z``
    holds a NaN; Horn gradient of the unfilled DEM, as the numpy kernels."""
    ny, nx = z.shape
    out = np.full((ny, nx), np.nan, dtype=np.float32)
    for i in range(1, ny - 1):
        for j in range(1, nx - 1):
            hole = False
            for a in range(-1, 2):
                for b in range(-1, 2):
                    if np.isnan(z[i + a, j + b]):
                        hole = True
            if hole:
                continue
            # float64 arithmetic whatever the DEM's dtype
            nw, n_, ne = (np.float64(z[i - 1, j - 1]), np.float64(z[i - 1, j]),
                          np.float64(z[i - 1, j + 1]))
            w_, e_ = np.float64(z[i, j - 1]), np.float64(z[i, j + 1])
            sw, s_, se = (np.float64(z[i + 1, j - 1]), np.float64(z[i + 1, j]),
                          np.float64(z[i + 1, j + 1]))
            p = ((ne + 2.0 * e_ + se) - (nw + 2.0 * w_ + sw)) / (8.0 * hx)
            q = ((sw + 2.0 * s_ + se) - (nw + 2.0 * n_ + ne)) / (8.0 * hy)
            tan_beta = max(math.hypot(p, q), min_tan)
            sca = acc[i, j] * cell_area / width
            out[i, j] = math.log(sca / tan_beta)
    return out


def fill_depressions(z: np.ndarray, seed: np.ndarray, valid: np.ndarray,
                     eps: float) -> np.ndarray:
    """Filled float64 copy of ``z`` (NaN where not ``valid``); see terrain._fill_depressions.

    ``z`` may be float32: its values are exact in float64, and the copy is the
    only float64 grid made here.
    """
    ny, nx = z.shape
    filled = np.empty((ny, nx), dtype=np.float64)
    np.copyto(filled, z)
    filled[~valid] = np.inf
    closed = np.logical_not(valid).view(np.uint8).reshape(-1)
    _fill(filled.reshape(-1), closed, ny, nx, np.flatnonzero(seed), float(eps), _DI, _DJ)
    del closed
    filled[~valid] = np.nan
    return filled


def mfd_accumulation(filled: np.ndarray, hx: float, hy: float,
                     exponent: float) -> np.ndarray:
    """Contributing cells (float64, NaN where ``filled`` is NaN); see terrain._mfd_accumulation."""
    dist = np.array([math.hypot(di * hy, dj * hx) for di, dj in zip(_DI, _DJ, strict=True)])
    return _accumulate(np.ascontiguousarray(filled, dtype=np.float64), dist,
                       float(exponent), _DI, _DJ)


def wetness(z: np.ndarray, acc: np.ndarray, hx: float, hy: float,
            min_tan: float) -> np.ndarray:
    """Wetness index from the unfilled DEM and the accumulation; see terrain._twi_numpy."""
    width = math.sqrt(abs(hx * hy))
    # z stays in its own dtype (float32 values are promoted exactly cell by cell)
    return _wetness(np.ascontiguousarray(z), acc, float(hx), float(hy), float(abs(hx * hy)),
                    width, float(min_tan))
