"""Numba's on-disk cache, made safe for processes that fill it at the same time.

Numba saves a compiled function by reading the function's index file (signature -> data file),
picking the first free data-file number, writing the index back and then the data. Two
processes that compile the same function for different signatures at the same time (pytest
-n 2, DataLoader or multiprocessing workers on an empty cache) read the same index, pick the
same number and overwrite each other: the index loses signatures and names a data file that
holds another signature's machine code. A later process then compiles again, or fails: seen
here after ``pytest -n 2``, a kernel's typing of ``_put`` for float32 arrays loaded the float64
code the index named and stopped with a TypingError. A reader can also meet a new index before
the data file it names is written, and load the machine code of an older source from that
file.

``guard()`` replaces ``IndexDataCacheFile.save`` with the same steps under an exclusive
``lockf`` (POSIX) lock on a lock file in the cache directory, data file first, then the index
that names it. Loading takes no lock (both files are replaced atomically). A POSIX lock belongs
to the process: a child forked while a thread of the parent holds it does not hold it too (an
``flock`` would stay held by the child's copy of the file until the child exits). Within a
process a thread lock orders the saves (a POSIX lock does not exclude the process's own threads,
and closing any descriptor of the file releases it). Where ``fcntl``, the lock file (another
user's, say) or the lock itself is not available, Numba's own save runs.
"""
import os
import threading

LOCK_NAME = "fastreg-numba-cache.lock"
_in_process = threading.Lock()  # orders this process's saves


def _after_fork_in_child():
    global _in_process
    _in_process = threading.Lock()  # (a parent's thread may have held it at the fork)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def guard():
    """Install the locked save (once per process; all of Numba's caches, CPU and CUDA)."""
    try:
        import fcntl
        from numba.core import caching
    except ImportError:  # not POSIX
        return False
    cls = caching.IndexDataCacheFile
    if getattr(cls, "_fastreg_guard", False):
        return True
    if not all(hasattr(cls, n) for n in ("_load_index", "_save_index", "_save_data",
                                          "_data_name")):
        return False  # a Numba whose cache works otherwise: leave it alone
    numba_save = cls.save

    def save(self, key, data):
        with _in_process:
            _save(self, key, data)

    def _save(self, key, data):
        try:
            fd = os.open(os.path.join(self._cache_path, LOCK_NAME), os.O_RDWR | os.O_CREAT,
                         0o666)
        except OSError:
            return numba_save(self, key, data)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
            except OSError:  # no locks on this file system
                return numba_save(self, key, data)
            overloads = self._load_index()
            name = overloads.get(key)
            if name is not None:
                self._save_data(name, data)
                return
            taken = set(overloads.values())
            number = 1
            while self._data_name(number) in taken:
                number += 1
            name = overloads[key] = self._data_name(number)
            self._save_data(name, data)
            self._save_index(overloads)
        finally:
            os.close(fd)  # (releases the lock)

    save.__doc__ = numba_save.__doc__
    cls.save = save
    cls._fastreg_guard = True
    return True
