"""Data-parallel training over MPI (Keras 3's ``set_distribution``).

Run the same script on every rank (``mpiexec -n 2 python train.py``) with the same data
and seed; after ``set_distribution(DataParallel())`` every ``fit`` in the process trains
data-parallel: each global batch is split into contiguous row shards, one per rank, and
the gradients are summed in place, one collective over the flat gradient buffer per step
(MPI's ``Allreduce``, or a shared-memory window between the ranks of one machine; see
``docs/distributed.md``).  MPI (``mpi4py``) is imported only here, when a
:class:`DataParallel` is made: install the extra with ``pip install "fastnn-cpu[mpi]"``.
"""

from __future__ import annotations

import os
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
        self._shared: dict = {}
        self._same_node = None
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
        """Sums the contiguous ``buf`` over the ranks, in place; returns it.  Every rank gets
        bit-identical sums: an in-place Allreduce, or for a large buffer when every rank
        is on one machine, a reduction through shared memory (:class:`SharedSum`)."""
        if self.size == 1:
            return buf
        shared = self._shared_for(buf)
        if shared is not None:
            return shared.sum_(buf)
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return buf

    def segment(self, size: int) -> tuple[int, int]:
        """[start, stop) of this rank's segment of a buffer of ``size`` entries: the part
        :meth:`reduce_scatter` sums and :meth:`allgather_` sends from this rank."""
        return shard_bounds(size, self.size, self.rank)

    def reduce_scatter(self, buf: np.ndarray) -> np.ndarray:
        """The sums over the ranks of this rank's :meth:`segment` of the contiguous ``buf``
        (each rank gets its own segment's sums only: half the traffic of :meth:`sum_` on
        two ranks).  Returns them as a contiguous array: a view of ``buf`` (shared memory)
        or a kept buffer (MPI's ``Reduce_scatter``), valid until the next call; the rest
        of ``buf`` is left unspecified.  The segment's bits are those :meth:`sum_` gives."""
        if self.size == 1:
            return buf
        shared = self._shared_for(buf)
        if shared is not None:
            return shared.reduce_scatter(buf)
        counts = self._counts(buf.size)
        key = ("scatter", buf.size, buf.dtype.str)
        if key not in self._shared:
            self._shared[key] = np.empty(counts[self.rank], buf.dtype)
        out = self._shared[key]
        self.comm.Reduce_scatter(buf, out, counts, op=self._MPI.SUM)
        return out

    def allgather_(self, buf: np.ndarray) -> np.ndarray:
        """Every rank's :meth:`segment` of the contiguous ``buf`` on every rank, in place
        (the inverse of :meth:`reduce_scatter`: each rank sends its own segment); returns
        ``buf``."""
        if self.size == 1:
            return buf
        shared = self._shared_for(buf)
        if shared is not None:
            return shared.allgather_(buf)
        counts = self._counts(buf.size)
        displs = [shard_bounds(buf.size, self.size, q)[0] for q in range(self.size)]
        self.comm.Allgatherv(self._MPI.IN_PLACE, [buf, counts, displs, self._type(buf)])
        return buf

    def shared_training(self, n_params: int, n_train: int, dtype, n_stats: int,
                        state_rows: int):  # fmt: skip
        """A :class:`SharedTraining` for parameters of ``n_params`` entries (the first
        ``n_train`` trained), float64 statistics of ``n_stats`` entries and an optimizer
        state of ``state_rows`` rows when every rank runs on this machine and shared memory
        is on (as for :meth:`sum_` of a buffer of ``n_train`` entries), else None.  Every
        rank must call it."""
        nbytes = n_train * np.dtype(dtype).itemsize
        if self.size == 1 or nbytes < SHARED_SUM_MIN_BYTES or not self._shared_ok():
            return None
        key = ("training", n_params, n_train, np.dtype(dtype).str, n_stats, state_rows)
        if key not in self._shared:
            self._shared[key] = SharedTraining(self.comm, self._MPI, n_params, n_train, dtype,
                                               n_stats, state_rows)  # fmt: skip
        return self._shared[key]

    def _counts(self, size: int) -> list[int]:
        return [hi - lo for lo, hi in (shard_bounds(size, self.size, q) for q in range(self.size))]

    def _type(self, buf: np.ndarray):
        return self._MPI.FLOAT if buf.dtype == np.float32 else self._MPI.DOUBLE

    def _shared_for(self, buf: np.ndarray):
        """The :class:`SharedSum` that sums buffers like ``buf``, or None when ``buf`` goes
        through MPI's collectives (small, or ranks on several machines)."""
        if buf.nbytes < SHARED_SUM_MIN_BYTES or not self._shared_ok():
            return None
        key = (buf.size, buf.dtype.str)
        if key not in self._shared:
            self._shared[key] = SharedSum(self.comm, self._MPI, buf.size, buf.dtype)
        return self._shared[key]

    def _shared_ok(self) -> bool:
        """Whether every rank runs on this machine and none has FASTNN_MPI_SHARED=0 (the
        ranks decide together: one path for all)."""
        if self._same_node is None:
            node = self.comm.Split_type(self._MPI.COMM_TYPE_SHARED)
            everyone = node.Get_size() == self.size
            node.Free()
            mine = everyone and os.environ.get("FASTNN_MPI_SHARED", "1") != "0"
            self._same_node = bool(self.comm.allreduce(int(mine), op=self._MPI.MIN))
        return self._same_node

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


#: Buffers from this size on are summed through shared memory when the ranks share a
#: machine (measured here, 2 ranks, 7.45 MB: 1.84 ms at best against 2.34 ms for MPICH's
#: Allreduce; docs/scaling.md).
SHARED_SUM_MIN_BYTES = 1 << 16


class SharedSum:
    """In-place sums of (size,) buffers over the ranks of one machine through an MPI
    shared-memory window: one slot per rank, each buffer cut into one segment per rank.

    :meth:`reduce_scatter`: each rank copies the segments of the others into its slot;
    after a barrier rank r adds the other ranks' copies of segment r to its own, in rank
    order.  :meth:`allgather_`: each rank publishes its segment in its slot; after a
    barrier every rank copies the other segments.  :meth:`sum_` is the two in turn.

    One barrier per call is enough when the calls alternate (a reduce-scatter, then an
    allgather, ...): a call writes regions of the slot that the other kind reads, and the
    previous call of its own kind, whose readers might still be at work, is behind the
    barrier of the call in between.  Two calls of one kind in a row put a barrier first."""

    def __init__(self, comm, MPI, size: int, dtype):
        self.comm, self.rank, self.ranks = comm, comm.Get_rank(), comm.Get_size()
        dtype = np.dtype(dtype)
        self.window = MPI.Win.Allocate_shared(size * dtype.itemsize, dtype.itemsize, comm=comm)
        self.slots = []
        for q in range(self.ranks):
            mem, _ = self.window.Shared_query(q)
            self.slots.append(np.frombuffer(mem, dtype, size))
        self.segments = [shard_bounds(size, self.ranks, q) for q in range(self.ranks)]
        self._last = "allgather"  # as if an allgather had run: a reduce-scatter may follow

    def _start(self, kind: str) -> None:
        if self._last == kind:  # another rank may still read what this call overwrites
            self.comm.Barrier()
        self._last = kind

    def reduce_scatter(self, buf: np.ndarray) -> np.ndarray:
        """The sums of this rank's segment, in place in ``buf`` (a view of it)."""
        self._start("reduce_scatter")
        mine, r = self.slots[self.rank], self.rank
        for q, (lo, hi) in enumerate(self.segments):
            if q != r:
                mine[lo:hi] = buf[lo:hi]
        self.comm.Barrier()
        lo, hi = self.segments[r]
        own = buf[lo:hi]
        for q in range(self.ranks):
            if q != r:  # one rank sums each segment: every rank gets the same bits
                np.add(own, self.slots[q][lo:hi], out=own)
        return own

    def allgather_(self, buf: np.ndarray) -> np.ndarray:
        """Every rank's segment of ``buf``, in place."""
        self._start("allgather")
        r = self.rank
        lo, hi = self.segments[r]
        self.slots[r][lo:hi] = buf[lo:hi]
        self.comm.Barrier()
        for q, (lo, hi) in enumerate(self.segments):
            if q != r:
                buf[lo:hi] = self.slots[q][lo:hi]
        return buf

    def sum_(self, buf: np.ndarray) -> np.ndarray:
        self.reduce_scatter(buf)
        return self.allgather_(buf)


#: bytes a shared slot is rounded up to, so that every rank's slot starts on a page (as
#: the engine's own buffers do: aligned loads and stores in the kernels)
PAGE = 4096


class SharedTraining:
    """The parameters and gradients of a data-parallel step in MPI shared memory, for ranks
    on one machine: one parameter vector that every rank reads (and each rank updates its
    segment of), and one gradient vector per rank, which the backward writes directly.

    A step is: the backward into :attr:`grads`; :meth:`sum_stats` (a barrier: every rank
    has its gradients and its statistics, which are summed); :meth:`reduce_scatter` (this
    rank adds the other ranks' gradients of its segment to its own, in rank order: the
    bits :meth:`SharedSum.sum_` gives); the update of this rank's segment of
    :attr:`params`; :meth:`publish` (a barrier: every update is done before any rank's
    next forward).  No copies: the gradients and parameters never leave shared memory.
    Each rank's slice of the optimizer state is a block of shared memory too, which
    :meth:`gather_state` copies into a whole state without a barrier.

    Attributes
    ----------
    params : numpy.ndarray
        (n_params,) the parameters, the same memory on every rank.
    grads : numpy.ndarray
        (n_params,) this rank's gradients.
    state : numpy.ndarray
        (state_rows, hi - lo) this rank's slice of the optimizer state.
    lo, hi : int
        This rank's segment of the first ``n_train`` entries.
    """

    def __init__(self, comm, MPI, n_params: int, n_train: int, dtype, n_stats: int,
                 state_rows: int):  # fmt: skip
        self.comm, self.rank, self.ranks = comm, comm.Get_rank(), comm.Get_size()
        dtype = np.dtype(dtype)
        first = self.rank == 0
        size = _pages(n_params * dtype.itemsize)  # each rank's slot page-aligned
        self.segments = [shard_bounds(n_train, self.ranks, q) for q in range(self.ranks)]
        self.lo, self.hi = self.segments[self.rank]
        block = _pages(state_rows * (self.hi - self.lo) * dtype.itemsize)
        # the parameters and every rank's statistics: rank 0's memory; the gradients and
        # the state's slices: a slot of every rank's
        self._windows = [MPI.Win.Allocate_shared(size if first else 0, dtype.itemsize, comm=comm),
                         MPI.Win.Allocate_shared(size, dtype.itemsize, comm=comm),
                         MPI.Win.Allocate_shared(8 * n_stats * self.ranks if first else 0, 8,
                                                 comm=comm),
                         MPI.Win.Allocate_shared(block, dtype.itemsize, comm=comm)]  # fmt: skip
        self.params = self._view(0, 0, dtype, n_params)
        self.slots = [self._view(1, q, dtype, n_params) for q in range(self.ranks)]
        self.grads = self.slots[self.rank]
        self.stats = self._view(2, 0, np.float64, n_stats * self.ranks).reshape(self.ranks, -1)
        self.states = [self._view(3, q, dtype, state_rows * (hi - lo)).reshape(state_rows, -1)
                       for q, (lo, hi) in enumerate(self.segments)]  # fmt: skip
        self.state = self.states[self.rank]
        self.loaded = shard_bounds(n_params, self.ranks, self.rank)

    def _view(self, window, owner, dtype, size):
        """(size,) of rank ``owner``'s memory in window number ``window``."""
        mem, _ = self._windows[window].Shared_query(owner)
        return np.frombuffer(mem, dtype, size)

    def load(self, params: np.ndarray) -> None:
        """Copies ``params`` (the same on every rank) into :attr:`params`, each rank its
        segment, between barriers (no rank still reads the previous contents)."""
        self.comm.Barrier()
        lo, hi = self.loaded
        self.params[lo:hi] = params[lo:hi]
        self.comm.Barrier()

    def sum_stats(self, part: np.ndarray) -> np.ndarray:
        """Sums the float64 ``part`` over the ranks in place (in rank order: the same bits
        everywhere) once every rank has it, and its gradients; returns it."""
        self.stats[self.rank] = part
        self.comm.Barrier()
        np.copyto(part, self.stats[0])
        for q in range(1, self.ranks):
            part += self.stats[q]
        return part

    def reduce_scatter(self) -> np.ndarray:
        """The sums over the ranks of this rank's segment of the gradients (a view of
        :attr:`grads`); after :meth:`sum_stats`."""
        lo, hi = self.lo, self.hi
        own = self.grads[lo:hi]
        for q in range(self.ranks):
            if q != self.rank:
                np.add(own, self.slots[q][lo:hi], out=own)
        return own

    def gather_state(self, state: np.ndarray) -> None:
        """Every rank's slice of the optimizer state into ``state`` (state_rows, n_train),
        after a :meth:`publish` (no rank is updating its slice)."""
        for (lo, hi), block in zip(self.segments, self.states):
            state[:, lo:hi] = block

    def publish(self) -> None:
        """Waits until every rank has updated its segment of :attr:`params` (and read the
        others' gradients: the next backward may overwrite them)."""
        self.comm.Barrier()


def _pages(nbytes: int) -> int:
    return -(-nbytes // PAGE) * PAGE


def shard_bounds(rows: int, size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank ``rank``'s contiguous shard of ``rows`` rows over ``size``
    ranks (the first ``rows % size`` shards one row longer)."""
    base, extra = divmod(rows, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def raised_on_every_rank(exc: BaseException) -> BaseException:
    """Marks ``exc`` as raised by every rank at the same point of the fit (after a
    collective that told every rank): uncaught, it ends each rank normally, with its
    message, rather than aborting MPI, which could kill a rank before it printed its own."""
    exc._fastnn_every_rank = True
    return exc


def _abort_on_uncaught(comm) -> None:
    """An exception nobody catches on one rank aborts every rank (instead of the others
    waiting forever in their next collective), unless every rank raises it
    (:func:`raised_on_every_rank`)."""
    previous = sys.excepthook
    if getattr(previous, "_fastnn_abort", False):
        return

    def hook(kind, value, tb):
        previous(kind, value, tb)
        sys.stderr.flush()
        if not getattr(value, "_fastnn_every_rank", False):
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
