"""Counter-based random numbers: Philox4x32-10 and the stream every fastreg op draws from.

Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11. A counter-based
generator is a pure function ``(counter, key) -> 4 words``: no state to carry between threads,
processes or backends, which is what makes fastreg's masks identical everywhere.

The stream for ``seed``: word ``g`` (a 64-bit position) is word ``g & 3`` of
``philox4x32(counter=(b & 0xFFFFFFFF, b >> 32, 0, 0), key=(seed & 0xFFFFFFFF, seed >> 32))`` with
``b = g >> 2``. Positions are 64-bit, so neither arrays beyond 2**32 elements nor long training
runs ever reuse a counter.
"""
import math
import os
import threading
import weakref

import numpy as np

from . import _arrays, _registry
from ._dispatch import Job

__all__ = ["philox4x32", "random_bits", "uniform", "Generator"]


def _as_words(a, name, width):
    if _arrays.is_device(a):
        info = _arrays.DeviceArrayInfo(a)
        if info.dtype != np.uint32:
            raise TypeError(f"{name} on the device must be uint32, got {info.dtype}")
        if not info.shape or info.shape[-1] != width:
            raise ValueError(f"{name} must have shape (..., {width}), got {info.shape}")
        return a
    arr = _arrays.as_host(a, name)
    if arr.dtype.kind not in "ui":
        raise TypeError(f"{name} must hold unsigned 32-bit integers, got dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[-1] != width:
        raise ValueError(f"{name} must have shape (..., {width}), got {arr.shape}")
    if arr.dtype != np.uint32:
        if arr.size and (arr.min() < 0 or arr.max() > 0xFFFFFFFF):
            raise ValueError(f"{name} values must be in [0, 2**32)")
        arr = arr.astype(np.uint32)
    return arr


def philox4x32(counter, key, *, backend="auto"):
    """The Philox4x32-10 block function, element-wise over leading axes.

    Parameters
    ----------
    counter : array_like of uint32, shape (..., 4)
        128-bit counters as four 32-bit words.
    key : array_like of uint32, shape (..., 2)
        64-bit keys as two 32-bit words; leading axes broadcast against counter's.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    ndarray of uint32, shape (..., 4)
        The four output words (a device array for device input).

    Raises
    ------
    TypeError
        Non-integer dtype.
    ValueError
        Last axis not 4 (counter) or 2 (key), values outside [0, 2**32), shapes that do not
        broadcast.

    Notes
    -----
    Known answer: counter (0, 0, 0, 0), key (0, 0) -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8.
    """
    ctr = _as_words(counter, "counter", 4)
    k = _as_words(key, "key", 2)
    backend = _registry.resolve(backend, ctr, k)
    device_in = _arrays.is_device(ctr) or _arrays.is_device(k)
    job = Job(backend, host_input=not device_in)
    cshape = tuple(_arrays.describe(ctr, "counter").shape)
    kshape = tuple(_arrays.describe(k, "key").shape)
    if device_in:
        if cshape[:-1] != kshape[:-1]:
            raise ValueError("device counter and key must have the same leading shape, got "
                             f"{cshape} and {kshape}")
        lead = cshape[:-1]
    else:
        try:
            lead = np.broadcast_shapes(cshape[:-1], kshape[:-1])
        except ValueError:
            raise ValueError(f"counter {cshape} and key {kshape} do not broadcast")
        ctr = np.broadcast_to(ctr, lead + (4,))
        k = np.broadcast_to(k, lead + (2,))
    n = math.prod(lead)
    c2 = job.contig(ctr).reshape(n, 4)
    k2 = job.contig(k).reshape(n, 2)
    res = job.empty((n, 4), np.uint32)
    if n:
        job.op("philox4x32")(c2, k2, res)
    return job.finish(res, None).reshape(lead + (4,))


def _stream_call(op, shape, seed, offset, dtype, words_per_element, backend):
    shape = _arrays.check_shape(shape)
    n = math.prod(shape)
    backend = _registry.resolve(backend)
    seed, offset = resolve_seed(seed, offset, n, words_per_element)
    job = Job(backend, host_input=False)
    res = job.empty((n,), dtype)
    if n:
        job.op(op)(seed, offset, res)
    return res.reshape(shape)


def random_bits(shape, *, seed, offset=None, backend="auto"):
    """Raw 32-bit words of the stream: element i is word ``offset + i``.

    Parameters
    ----------
    shape : int or tuple of int
    seed : int in [0, 2**64) or Generator
        A Generator hands out the next ``size`` words (then leave ``offset`` out).
    offset : int in [0, 2**64), optional
        Position of element 0 (default 0); ``offset + size`` must not exceed 2**64.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    ndarray of uint32, of ``shape``
        (a device array for backend "cuda").

    Raises
    ------
    ValueError
        Bad shape, seed or offset.
    """
    return _stream_call("random_bits", shape, seed, offset, np.uint32, 1, backend)


def uniform(shape, *, seed, offset=None, dtype=np.float32, backend="auto"):
    """Uniform floats in [0, 1) from the stream.

    float32: element i is ``(w[offset + i] >> 8) * 2**-24`` (24 random bits; every value is a
    multiple of 2**-24). float64: element i takes two words, ``lo = w[2 (offset + i)]`` and
    ``hi = w[2 (offset + i) + 1]``, and is ``((hi << 32 | lo) >> 11) * 2**-53`` (53 bits).

    Parameters
    ----------
    shape : int or tuple of int
    seed : int in [0, 2**64) or Generator
        A Generator hands out the next ``size`` elements (2 words each for float64, starting at
        an even word); then leave ``offset`` out.
    offset : int in [0, 2**64), optional
        Counted in elements of ``dtype`` (default 0).
    dtype : float32 or float64
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    ndarray of ``dtype``, of ``shape``
        Values in [0, 1); a device array for backend "cuda".

    Raises
    ------
    TypeError
        dtype not float32 or float64.
    ValueError
        Bad shape, seed or offset.
    """
    dtype = np.dtype(dtype)
    if dtype not in _arrays.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return _stream_call("uniform", shape, seed, offset, dtype, 2 if dtype == np.float64 else 1,
                        backend)


# every Generator, for new locks in a fork child (one that another thread of the parent held in
# ``take`` would stay held there; the position is one assignment, consistent either way)
_generators = weakref.WeakSet()


def _after_fork_in_child():
    for g in list(_generators):
        g._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Generator:
    """A seed and a 64-bit position in its Philox stream, handing out non-overlapping ranges.

    Pass it as ``seed=`` to any of fastreg's random ops (``dropout``, ``channel_dropout``,
    ``drop_path``, ``dropout_mask``, ``random_bits``, ``uniform``): the op takes the next
    ``size`` words of the stream (``offset`` is then owned by the generator and must not be
    given) and advances the position, so no two calls ever share a word. ``state_dict()`` /
    ``load_state_dict()`` save and restore it exactly (two plain integers). Like
    ``torch.Generator`` it is mutable; like a JAX key, ``spawn(k)`` derives independent
    generators (for workers or layers) deterministically from this one.

    Parameters
    ----------
    seed : int in [0, 2**64)
    position : int in [0, 2**64), optional
        The first stream word not yet used (default 0).

    Notes
    -----
    ``take`` is thread-safe: two Python threads drawing from one generator get disjoint ranges
    (which one gets the lower range depends on scheduling).
    """

    def __init__(self, seed, position=0):
        self._seed = _arrays.check_uint64(seed, "seed")
        self._position = _arrays.check_uint64(position, "position")
        self._lock = threading.Lock()
        _generators.add(self)

    @property
    def seed(self):
        """The key of the stream (int)."""
        return self._seed

    @property
    def position(self):
        """The first word not handed out yet (int)."""
        return self._position

    def take(self, count):
        """Reserve the next ``count`` words and return the offset of the first.

        Parameters
        ----------
        count : int >= 0

        Returns
        -------
        int
            The offset to pass to an op together with ``self.seed``.

        Raises
        ------
        ValueError
            ``count`` negative or not an integer, or the range would pass 2**64 (the position is
            then unchanged).
        """
        return self._take(_arrays.check_uint64(count, "count"), 1)

    def _take(self, count, words_per_element):
        """The offset, in elements of ``words_per_element`` words, of the next ``count``
        elements; the position (in words) moves past them."""
        k = words_per_element
        with self._lock:
            start = -(-self._position // k)  # the first element whose words are all unused
            _arrays.check_counter_range(start * k, count * k, "generator position")
            self._position = (start + count) * k
        return start

    def spawn(self, n):
        """``n`` independent generators whose seeds are drawn from this stream (2 words each).

        Parameters
        ----------
        n : int >= 0

        Returns
        -------
        list of Generator
            At position 0; this generator advances by ``2 * n``.
        """
        n = _arrays.check_uint64(n, "n")
        start = self.take(2 * n)
        words = random_bits((2 * n,), seed=self._seed, offset=start, backend="numpy")
        words = words.astype(np.uint64)
        return [Generator(int(words[2 * i]) | (int(words[2 * i + 1]) << 32)) for i in range(n)]

    def state_dict(self):
        """``{"seed": int, "position": int}``: everything needed to resume the stream."""
        return {"seed": self._seed, "position": self._position}

    def load_state_dict(self, state):
        """Restore a ``state_dict()``; values may be ints or 0-d integer arrays (from ``np.load``).

        Raises
        ------
        ValueError
            A missing key or a value outside [0, 2**64); nothing is changed then.
        """
        try:
            seed, position = state["seed"], state["position"]
        except (KeyError, TypeError) as exc:
            raise ValueError("state must be a mapping with 'seed' and 'position'") from exc
        seed = _arrays.check_uint64(seed, "state['seed']")
        position = _arrays.check_uint64(position, "state['position']")
        with self._lock:
            self._seed, self._position = seed, position

    def __repr__(self):
        return f"fastreg.random.Generator(seed={self._seed}, position={self._position})"


def resolve_seed(seed, offset, count, words_per_element=1, name="seed"):
    """``(seed, offset)`` for an op drawing ``count`` elements of ``words_per_element`` words.

    A Generator hands out its next range (``offset`` must then be None or 0); an integer seed is
    checked and used with ``offset``. Call it last, after every other check, so that a refused
    call leaves the generator where it was."""
    if isinstance(seed, Generator):
        if offset not in (None, 0):
            raise ValueError(f"offset must not be given with a Generator as {name}: the "
                             f"generator owns the position (got offset={offset!r})")
        return seed.seed, seed._take(count, words_per_element)
    seed = _arrays.check_uint64(seed, name)
    offset = _arrays.check_uint64(0 if offset is None else offset, "offset")
    _arrays.check_counter_range(offset * words_per_element, count * words_per_element)
    return seed, offset
