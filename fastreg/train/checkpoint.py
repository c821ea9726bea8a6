"""Checkpoint files: flat ``.npz`` archives, written atomically, read without pickle.

A checkpoint is one ``.npz`` of named NumPy arrays (``np.load(..., allow_pickle=False)``: nothing
in it can run code). It is written to a temporary file in the destination's folder, flushed to
disk, then moved over the destination with ``os.replace``, which is atomic on POSIX and Windows:
a crash at any moment leaves either the old complete file or the new complete file. The file
gets the permissions a plain ``open(path, "wb")`` would give it: those of the file it replaces,
or ``0o666`` less the process's umask for a new file (not the ``0o600`` of the temporary file).
"""
import os
import stat
import tempfile

import numpy as np

FORMAT = "fastreg.train checkpoint v1"


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
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".fastreg-ckpt-", suffix=".npz.tmp", dir=folder)
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
    return path


def load(path):
    """Read a checkpoint written by ``save`` into a dict of NumPy arrays (no pickle).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict of str to numpy.ndarray

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a fastreg.train checkpoint (or it holds pickled objects).
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path!r} is not a readable .npz checkpoint: {exc}") from None
    if "format" not in arrays or str(arrays["format"]) != FORMAT:
        raise ValueError(f"{path!r} is not a fastreg.train checkpoint (no format entry "
                         f"{FORMAT!r})")
    del arrays["format"]
    return arrays
