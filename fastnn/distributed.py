"""Data-parallel training over MPI (Keras 3's ``set_distribution``).

Run the same script on every rank (``mpiexec -n 2 python train.py``) with the same data
and seed; after ``set_distribution(DataParallel())`` every ``fit`` in the process trains
data-parallel: each global batch is split into contiguous row shards, one per rank, and
the gradients are summed with one in-place ``Allreduce`` of the flat gradient buffer per
step (see ``docs/distributed.md``).  MPI (``mpi4py``) is imported only here, when a
:class:`DataParallel` is made: install the extra with ``pip install "fastnn-cpu[mpi]"``.
"""

from __future__ import annotations

import sys

import numpy as np

_distribution = None


class RankError(RuntimeError):
    """Another rank of a data-parallel fit raised: the message names the rank and its error
    (the rank that raised raises its own error)."""


def _mpi():
    """mpi4py's MPI module (initialises MPI), or ImportError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            "data-parallel training needs mpi4py and an MPI library: pip install "
            f'"fastnn-cpu[mpi]" (mpi4py and mpich); importing mpi4py failed: {exc}'
        ) from exc
    return MPI


def mpi_status() -> str:
    """One line on MPI for ``fastnn info``: library version and ranks, or why unavailable."""
    try:
        import mpi4py
    except ImportError:
        return 'unavailable: mpi4py is not installed (pip install "fastnn-cpu[mpi]")'
    try:
        MPI = _mpi()
        library = " ".join(MPI.Get_library_version().split()[:3])
        size = MPI.COMM_WORLD.Get_size()
    except Exception as exc:  # an MPI library that cannot start
        return f"unavailable: mpi4py {mpi4py.__version__} cannot start MPI: {exc}"
    return f"mpi4py {mpi4py.__version__}, {library}, {size} rank{'s' if size > 1 else ''}"


class DataParallel:
    """Data parallelism over the ranks of an MPI communicator (default ``COMM_WORLD``).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The communicator whose ranks share the training; default every rank.

    Attributes
    ----------
    rank, size : int
        This process's rank and the number of ranks.
    is_primary : bool
        Whether this is rank 0, the rank that prints and writes files.

    Raises
    ------
    ImportError
        When mpi4py (or its MPI library) is not installed.
    """

    def __init__(self, comm=None):
        MPI = _mpi()
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        if self.size > 1:
            _abort_on_uncaught(self.comm)

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, size={self.size})"

    def shard(self, rows: int) -> tuple[int, int]:
        """[start, stop) of this rank's contiguous shard of ``rows`` rows: the first
        ``rows % size`` ranks take one row more."""
        return shard_bounds(rows, self.size, self.rank)

    def sum_(self, buf: np.ndarray) -> np.ndarray:
        """Sums ``buf`` over the ranks, in place (one Allreduce); returns it."""
        if self.size > 1:
            self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return buf

    def broadcast_(self, buf: np.ndarray) -> np.ndarray:
        """Overwrites ``buf`` with rank 0's, in place; returns it."""
        if self.size > 1:
            self.comm.Bcast(buf, root=0)
        return buf

    def broadcast(self, value):
        """Rank 0's picklable ``value`` on every rank."""
        return self.comm.bcast(value, root=0) if self.size > 1 else value

    def gather_all(self, value) -> list:
        """Every rank's picklable ``value``, in rank order, on every rank."""
        return self.comm.allgather(value) if self.size > 1 else [value]


def shard_bounds(rows: int, size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank ``rank``'s contiguous shard of ``rows`` rows over ``size``
    ranks (the first ``rows % size`` shards one row longer)."""
    base, extra = divmod(rows, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _abort_on_uncaught(comm) -> None:
    """An exception nobody catches on one rank aborts every rank (instead of the others
    waiting forever in their next collective)."""
    previous = sys.excepthook
    if getattr(previous, "_fastnn_abort", False):
        return

    def hook(kind, value, tb):
        previous(kind, value, tb)
        sys.stderr.flush()
        comm.Abort(1)

    hook._fastnn_abort = True
    sys.excepthook = hook


def set_distribution(distribution) -> None:
    """Makes every later ``fit`` of the process train with ``distribution`` (a
    :class:`DataParallel`), or turns distribution off with ``None``.

    Raises
    ------
    TypeError
        For anything but a DataParallel or None.
    """
    global _distribution
    if distribution is not None and not isinstance(distribution, DataParallel):
        raise TypeError(
            "distribution must be a fastnn.distributed.DataParallel or None, got "
            f"{type(distribution).__name__}"
        )
    _distribution = distribution


def get_distribution():
    """The distribution :func:`set_distribution` set, or None."""
    return _distribution


#: Keras 3's name of the getter.
distribution = get_distribution


def is_secondary() -> bool:
    """Whether a distribution is set and this process is not its rank 0 (which alone
    prints and writes files)."""
    return _distribution is not None and not _distribution.is_primary
