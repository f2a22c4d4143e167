"""Run a command's dask work on a distributed cluster (``--scheduler`` / ``LSM_SCHEDULER``).

Without an address nothing changes: dask's local threaded scheduler computes
stacks, statistics, samples and maps.  With one, :func:`dask_scheduler`
connects a :class:`distributed.Client` for the duration of the block; the
client makes itself dask's default scheduler, so every ``.compute()`` of the
command runs on the cluster's workers, and closing it restores the local
scheduler.  Raster writers compute one band of blocks at a time and write on
the client (see :mod:`lsm.io.raster_write`), so outputs need not be reachable
from the workers; input rasters must be, at the same paths.

``distributed`` is imported only when an address is given.

Example
-------
>>> with dask_scheduler("tcp://10.0.0.5:8786"):          # doctest: +SKIP
...     predict_maps(run)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from lsm.errors import SchedulerError

#: Environment variable read when no address is given.
ENV = "LSM_SCHEDULER"
#: Seconds to wait for the scheduler before giving up.
CONNECT_TIMEOUT = 30


def scheduler_address(address: str | None = None) -> str | None:
    """``address``, else ``$LSM_SCHEDULER``; None (local scheduler) when both are empty."""
    if address is None:
        address = os.environ.get(ENV)
    address = (address or "").strip()
    return address or None


@contextlib.contextmanager
def dask_scheduler(address: str | None = None, *,
                   timeout: float | None = None) -> Iterator[Any]:
    """Connect to the dask scheduler at ``address`` (or ``$LSM_SCHEDULER``) for the block.

    Yields the :class:`distributed.Client`, or None when no address is set (the
    local threaded scheduler stays in use).

    Raises
    ------
    SchedulerError
        ``distributed`` is not installed, or the scheduler cannot be reached.
    """
    addr = scheduler_address(address)
    if addr is None:
        yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise SchedulerError(f"--scheduler {addr}: needs the 'distributed' package "
                             "(pip install distributed)") from None
    try:
        client = Client(addr, timeout=timeout or CONNECT_TIMEOUT, set_as_default=True)
    except (OSError, TimeoutError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SchedulerError(f"--scheduler {addr}: cannot connect to a dask scheduler "
                             f"({first})") from None
    try:
        yield client
    finally:
        client.close()
