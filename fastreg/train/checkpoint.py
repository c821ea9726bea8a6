"""Checkpoint files: flat ``.npz`` archives, written atomically, read without pickle, checked
before they are read.

Writing. A checkpoint is one ``.npz`` of named NumPy arrays. It is written to a temporary file
``.fastreg-ckpt-<pid>@<host>@<random>.npz.tmp`` in the destination's folder, flushed to disk,
moved over the destination with ``os.replace`` (atomic on POSIX and Windows: a crash at any
moment leaves either the old complete file or the new complete file), and the folder is then
flushed too (``fsync`` of the directory, POSIX), so that the rename itself survives a power cut.
The file gets the permissions a plain ``open(path, "wb")`` would give it: those of the file it
replaces, or ``0o666`` less the process's umask for a new file (not the ``0o600`` of the
temporary file).

Leftovers. A process killed during a save leaves its temporary file behind. Each save removes
the leftovers in its folder that are certainly abandoned: regular files owned by this user whose
name is a fastreg temporary name and which either were written by a process of this host that
no longer exists (the pid is in the name), or have not been modified for ``STALE_AFTER_S``
seconds (one hour: a save in progress keeps writing its file, and a save on another host of a
shared file system is judged by that age alone). A live writer's file is never removed: its pid
exists, and its file is fresh.

Reading (``load``). Nothing in the file is trusted: ``np.load(..., allow_pickle=False)`` is not
enough, since an ``.npy`` header may claim any shape (a few bytes can declare 8 TiB) and an
unexpected member may be huge. ``load`` therefore takes the specification of every entry the
caller accepts (``Spec``: shape, dtype, size limit) and, before reading any data: refuses a
member whose name is not specified; reads each member's ``.npy`` header alone and checks it
against the specification; and checks that the member's size in the zip directory is exactly
the header plus the data that header declares. Only then is the data read (zipfile checks its
CRC). Any defect (not a zip, truncated, garbage, an unknown or malformed member) raises
ValueError, chained to the underlying error.
"""
import errno
import os
import re
import socket
import stat
import tempfile
import time
import zipfile
from typing import NamedTuple

import numpy as np

FORMAT = "fastreg.train checkpoint v1"
TMP_PREFIX = ".fastreg-ckpt-"
TMP_SUFFIX = ".npz.tmp"
STALE_AFTER_S = 3600.0          # a temporary file untouched this long is abandoned
MAX_TEXT = 4096                 # characters in a text entry (class names, reasons)
MAX_FREE_BYTES = 64 * 2**20     # bytes of an entry whose shape is not fixed

_TMP_NAME = re.compile(r"^\.fastreg-ckpt-(?:(\d+)@([A-Za-z0-9._-]*)@)?[A-Za-z0-9_]+\.npz\.tmp$")


class Spec(NamedTuple):
    """What one checkpoint entry must look like.

    Attributes: ``shape``, a tuple whose ``None`` items are free lengths, or None for any
    shape; ``dtype``, a NumPy dtype (exactly that one), or a string of dtype kinds ("iu"
    integers, "f" floats, "b" bool, "U" text), or None for any plain (non-object) dtype;
    ``max_bytes``, the largest data size accepted when the shape is not fixed.
    """
    shape: object = ()
    dtype: object = None
    max_bytes: int = MAX_FREE_BYTES

    def check(self, name, shape, dtype):
        """Raise ValueError naming the entry unless (shape, dtype) fit this specification
        (called on the header of a file member, before its data is read)."""
        shape = tuple(int(n) for n in shape)
        dtype = np.dtype(dtype)
        if any(n < 0 for n in shape):
            raise ValueError(f"checkpoint entry {name!r} has an invalid shape {shape}")
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(f"checkpoint entry {name!r} has dtype {dtype}: only plain "
                             "numbers, bools and text are accepted")
        if isinstance(self.dtype, str):
            if dtype.kind not in self.dtype:
                raise ValueError(f"checkpoint entry {name!r} has dtype {dtype}, expected "
                                 f"{_KIND_NAMES.get(self.dtype, self.dtype)}")
        elif self.dtype is not None and dtype != np.dtype(self.dtype):
            raise ValueError(f"checkpoint entry {name!r} has dtype {dtype}, expected "
                             f"{np.dtype(self.dtype)}")
        if dtype.kind == "U" and dtype.itemsize // 4 > MAX_TEXT:
            raise ValueError(f"checkpoint entry {name!r} is a text of {dtype.itemsize // 4} "
                             f"characters (at most {MAX_TEXT})")
        if self.shape is not None:
            if len(shape) != len(self.shape) or any(
                    want is not None and got != want for got, want in zip(shape, self.shape)):
                want = tuple("any" if n is None else n for n in self.shape)
                raise ValueError(f"checkpoint entry {name!r} has shape {shape}, expected {want}")
        if self.shape is None or None in self.shape:
            nbytes = _nbytes(shape, dtype)
            if nbytes > self.max_bytes:
                raise ValueError(f"checkpoint entry {name!r} has shape {shape} ({nbytes} "
                                 f"bytes), larger than the {self.max_bytes} accepted")


_KIND_NAMES = {"iu": "an integer dtype", "f": "a float dtype", "b": "bool", "U": "text"}


def _nbytes(shape, dtype):
    n = dtype.itemsize
    for d in shape:
        n *= d
    return n


def check_entries(state, spec):
    """Check a dict of arrays (in memory) against ``spec``; host NumPy arrays out.

    Parameters
    ----------
    state : mapping of str to array-like
    spec : callable
        ``spec(name)`` -> ``Spec``, or None for a name that is not accepted.

    Returns
    -------
    dict of str to numpy.ndarray

    Raises
    ------
    ValueError
        A key that is not a str or not accepted, or an entry that does not fit its Spec
        (naming the entry).
    """
    if not hasattr(state, "items"):
        raise ValueError(f"state must be a mapping of names to arrays, got "
                         f"{type(state).__name__}")
    out = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise ValueError(f"state has a key {name!r} that is not a str")
        s = spec(name)
        if s is None:
            raise ValueError(f"unexpected checkpoint entry {name!r}")
        if hasattr(value, "get") and type(value).__module__.startswith("cupy"):
            value = value.get()
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint entry {name!r} is not an array: {exc}") from exc
        s.check(name, arr.shape, arr.dtype)
        out[name] = arr
    return out


# -- writing -----------------------------------------------------------------------------------

def check_writable(path):
    """Raise a clear error now if a checkpoint cannot be written at ``path`` later.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.

    Returns
    -------
    str
        The absolute path.

    Raises
    ------
    OSError
        The folder does not exist or is not writable, or path is a folder.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint path {path!r} is a folder; give a file name such "
                                "as 'run.npz'")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint folder {folder!r} does not exist")
    try:   # the real test: create (and delete) a file where the temporary file will go
        fd, tmp = tempfile.mkstemp(prefix=".fastreg-check-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise PermissionError(f"checkpoint folder {folder!r} is not writable: {exc}") from None
    return path


def _umask():
    """The process's umask, read without changing it where possible (Linux: /proc), else with
    the classic set-and-restore."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode(path):
    """Permission bits for the checkpoint at ``path``: the existing file's, or the umask's."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _host():
    """This host's name as it goes into temporary file names (safe characters only)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64]


def _pid_alive(pid):
    """True unless no process ``pid`` exists on this host (a pid we may not signal exists)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temporaries(folder, now=None):
    """Remove the temporary files that killed saves left in ``folder`` (see the module notes).

    Parameters
    ----------
    folder : str
    now : float, optional
        The current time (``time.time()``); tests pass another.

    Returns
    -------
    list of str
        The names removed. Errors (a file that vanished, no permission) are ignored: this is
        housekeeping and never fails a save.
    """
    now = time.time() if now is None else now
    host, uid = _host(), (os.getuid() if hasattr(os, "getuid") else None)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TMP_NAME.match(name)
        if m is None:
            continue
        full = os.path.join(folder, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid):
            continue
        dead = m.group(1) is not None and m.group(2) == host and not _pid_alive(int(m.group(1)))
        if dead or now - st.st_mtime > STALE_AFTER_S:
            try:
                os.unlink(full)
                removed.append(name)
            except OSError:
                pass
    return removed


def _fsync_folder(folder):
    """Flush the folder's entries (the rename) to disk; a no-op where folders cannot be opened
    (Windows) or the file system does not support it."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def save(path, arrays):
    """Write ``arrays`` (``{name: array}``) to ``path`` as an ``.npz``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
    arrays : dict of str to numpy.ndarray
        Host arrays (no object arrays); a ``"format"`` entry is added.

    Returns
    -------
    str
        The absolute path written.

    Notes
    -----
    Leftover temporary files of killed saves in the folder are removed first (see the module
    notes); the folder is fsynced after the rename.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    remove_stale_temporaries(folder)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}@{_host()}@",
                               suffix=TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, format=np.array(FORMAT), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))   # mkstemp made it 0o600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)
    return path


# -- reading -----------------------------------------------------------------------------------

def _read_header(f, name):
    """(shape, fortran_order, dtype, header bytes) of the ``.npy`` stream ``f``."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version} (1.0 or 2.0 expected)")
    except (ValueError, SyntaxError, TypeError, EOFError, OverflowError) as exc:
        raise ValueError(f"checkpoint entry {name!r} has a malformed .npy header: "
                         f"{type(exc).__name__}: {exc}") from exc
    return tuple(shape), bool(fortran), np.dtype(dtype), f.tell()


def _read_member(zf, info, name, spec):
    """The array of member ``info``, checked against ``spec`` before its data is read."""
    with zf.open(info) as f:
        shape, fortran, dtype, header = _read_header(f, name)
        spec.check(name, shape, dtype)
        nbytes = _nbytes(shape, dtype)
        if info.file_size != header + nbytes:
            raise ValueError(f"checkpoint entry {name!r} declares shape {shape} and dtype "
                             f"{dtype} ({nbytes} bytes of data) but its member holds "
                             f"{info.file_size - header} bytes")
        count = nbytes // dtype.itemsize if dtype.itemsize else 0
        arr = np.empty(count, dtype)
        view = arr.view(np.uint8) if nbytes else memoryview(b"")
        got = 0
        while got < nbytes:
            n = f.readinto(view[got:])
            if not n:
                raise ValueError(f"checkpoint entry {name!r} is truncated ({got} of {nbytes} "
                                 "bytes)")
            got += n
        if f.read(1):
            raise ValueError(f"checkpoint entry {name!r} has data after its array")
    arr = arr.reshape(shape, order="F" if fortran else "C")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def load(path, spec):
    """Read a checkpoint written by ``save``: every member checked against ``spec`` before its
    data is read (no pickle).

    Parameters
    ----------
    path : str or os.PathLike
    spec : callable
        ``spec(name)`` -> ``Spec`` for an accepted entry, None for any other name (the
        ``"format"`` entry is handled here).

    Returns
    -------
    dict of str to numpy.ndarray
        Without the ``"format"`` entry.

    Raises
    ------
    FileNotFoundError, PermissionError, IsADirectoryError
        The file cannot be opened.
    ValueError
        Not a fastreg.train checkpoint, or a damaged one: not a zip archive, truncated,
        garbage, a member of an unexpected name, a header that does not fit its entry's Spec
        (e.g. a huge declared shape) or does not match the member's size, a bad CRC. The
        underlying error is chained (``__cause__``).
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        try:
            return _load(fh, path, spec)
        except ValueError:
            raise
        except Exception as exc:   # BadZipFile, EOFError, NotImplementedError, zlib.error...
            raise ValueError(f"{path!r} is not a readable .npz checkpoint: "
                             f"{type(exc).__name__}: {exc}") from exc


def _load(fh, path, spec):
    try:
        zf = zipfile.ZipFile(fh)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path!r} is not a readable .npz checkpoint (not a zip archive: "
                         f"{exc})") from exc
    with zf:
        infos = zf.infolist()
        if "format.npy" not in {i.filename for i in infos}:
            raise ValueError(f"{path!r} is not a fastreg.train checkpoint (no format entry "
                             f"{FORMAT!r})")
        names = {}
        for info in infos:   # every name is checked before any data is read
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{path!r}: unexpected member {info.filename!r} (not .npy)")
            name = info.filename[:-len(".npy")]
            if name in names:
                raise ValueError(f"{path!r}: entry {name!r} appears twice")
            if name != "format" and spec(name) is None:
                raise ValueError(f"{path!r}: unexpected checkpoint entry {name!r} (of "
                                 f"{info.file_size} bytes): the checkpoint does not match this "
                                 "trainer (its model, optimizer or callbacks); nothing was "
                                 "read")
            names[name] = info
        fmt = _read_member(zf, names.pop("format"), "format", Spec((), "U"))
        if str(fmt) != FORMAT:
            raise ValueError(f"{path!r} is not a fastreg.train checkpoint (format "
                             f"{str(fmt)[:80]!r}, expected {FORMAT!r})")
        return {name: _read_member(zf, info, name, spec(name)) for name, info in names.items()}
