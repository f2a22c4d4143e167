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
#: Seconds a connected scheduler may take to answer a check before it counts as gone.
ANSWER_TIMEOUT = 30
#: Seconds between checks that the scheduler still answers while a command uses it.
WATCH_INTERVAL = 15


def scheduler_address(address: str | None = None) -> str | None:
    """``address``, else ``$LSM_SCHEDULER``; None (local scheduler) when both are empty."""
    if address is None:
        address = os.environ.get(ENV)
    address = (address or "").strip()
    return address or None


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text or type(err).__name__)[:200]


async def _identity(addr: str, timeout: float) -> Any:
    """What the service at ``addr`` answers to a Dask ``identity`` request."""
    import asyncio

    from distributed.comm import connect

    comm = await asyncio.wait_for(connect(addr, timeout=timeout), timeout)
    try:
        await asyncio.wait_for(comm.write({"op": "identity", "reply": True}), timeout)
        return await asyncio.wait_for(comm.read(), timeout)
    finally:
        comm.abort()


def probe_scheduler(addr: str, timeout: float) -> str | None:
    """None if a Dask scheduler at ``addr`` answers within ``timeout`` seconds, else
    why not (one phrase).

    It runs in a thread of its own, bounded by ``timeout`` twice over, so a port that
    accepts and then says nothing, or says something else, cannot hang the caller.
    """
    import asyncio
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lsm-probe")
    fut = pool.submit(asyncio.run, _identity(addr, timeout))
    pool.shutdown(wait=False)
    try:
        reply = fut.result(timeout=2 * timeout + 1)
    except (TimeoutError, concurrent.futures.TimeoutError, asyncio.TimeoutError):
        return f"no answer within {timeout:g} s"
    except OSError as err:
        return f"cannot connect ({_first_line(err)})"
    except Exception as err:  # garbage decoded as a message: anything can come out
        return f"it is not a Dask scheduler ({type(err).__name__} on its reply)"
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        what = reply.get("type") if isinstance(reply, dict) else type(reply).__name__
        return f"it is not a Dask scheduler (it says it is {what!r})"
    return None


class _Watch:
    """Checks every :data:`WATCH_INTERVAL` s that the scheduler answers; when it does
    not, records why and interrupts the main thread (a computation waiting on a
    scheduler that stopped answering would wait for ever)."""

    def __init__(self, addr: str) -> None:
        import threading

        self.addr = addr
        self.lost: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lsm-scheduler-watch",
                                       daemon=True)

    def _run(self) -> None:
        import _thread

        while not self.stop.wait(WATCH_INTERVAL):
            why = probe_scheduler(self.addr, ANSWER_TIMEOUT)
            if why is not None and not self.stop.is_set():
                self.lost = why
                _thread.interrupt_main()
                return

    def __enter__(self) -> _Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()


def _lost(addr: str, why: str) -> SchedulerError:
    return SchedulerError(f"--scheduler {addr}: the scheduler was lost during the command "
                          f"({why}); files written so far are complete, the rest were not "
                          "written: run the command again")


@contextlib.contextmanager
def dask_scheduler(address: str | None = None, *,
                   timeout: float | None = None) -> Iterator[Any]:
    """Connect to the dask scheduler at ``address`` (or ``$LSM_SCHEDULER``) for the block.

    Yields the :class:`distributed.Client`, or None when no address is set (the
    local threaded scheduler stays in use).  Before connecting, the address must
    answer a Dask ``identity`` request within ``timeout`` (default
    :data:`CONNECT_TIMEOUT`) seconds; while the block runs (in the main thread), the
    scheduler is checked every :data:`WATCH_INTERVAL` seconds.

    Raises
    ------
    SchedulerError
        ``distributed`` is not installed; nothing, or no Dask scheduler, answers at
        the address; or the scheduler was lost or stopped answering during the block.
    """
    import threading

    addr = scheduler_address(address)
    if addr is None:
        yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise SchedulerError(f"--scheduler {addr}: needs the 'distributed' package "
                             "(pip install distributed)") from None
    wait = timeout or CONNECT_TIMEOUT
    why = probe_scheduler(addr, wait)
    if why is not None:
        verb = "cannot connect to a dask scheduler" if why.startswith(("cannot", "no ")) \
            else "cannot use it"
        raise SchedulerError(f"--scheduler {addr}: {verb} ({why})")
    try:
        client = Client(addr, timeout=wait, set_as_default=True)
    except (OSError, TimeoutError, ValueError) as err:
        raise SchedulerError(f"--scheduler {addr}: cannot connect to a dask scheduler "
                             f"({_first_line(err)})") from None
    watch = _Watch(addr) if threading.current_thread() is threading.main_thread() else None
    try:
        with watch or contextlib.nullcontext():
            yield client
    except KeyboardInterrupt:
        if watch is not None and watch.lost is not None:
            raise _lost(addr, f"it stopped answering: {watch.lost}") from None
        raise
    except SchedulerError:
        raise
    except Exception as err:
        # a failure of the cluster (not of lsm): the scheduler no longer answers, or the
        # error is distributed's own (closed comm, cancelled futures)
        mod = type(err).__module__ or ""
        gone = probe_scheduler(addr, min(wait, 5))
        if gone is not None or mod.startswith("distributed") or \
                type(err).__name__ in ("CancelledError", "FutureCancelledError"):
            raise _lost(addr, gone or _first_line(err)) from None
        raise
    finally:
        try:
            client.close(timeout=5)
        except Exception:  # a scheduler that is gone cannot be told goodbye
            pass
