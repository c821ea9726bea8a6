"""The PyTorch peer of ``fastreg bench``'s small-ops section, timed in a process of its own.

Why a process: fastreg loads GNU OpenMP with the passive wait policy (``fastreg._threads``), and
torch shares that libgomp when it is loaded into the same process afterwards, so torch's small
ops would pay a sleeping thread's wake-up per parallel region (a batch-norm forward on (64, 256)
read 107-165 us that way, 46 us in a process where torch loads libgomp first). The peer process
imports torch before anything of fastreg, with the environment the benchmark was started with
(fastreg's temporary ``OMP_WAIT_POLICY`` is never inherited), so torch runs as it does for a user
who uses torch alone.

Turns: the section asks the peer for a few timed calls per round (``Remote.timed``) between its
own rounds of fastreg calls, so the two still take turns and a change of load hits both alike.
Only the calls are timed, inside the peer; the request and reply around them are not.

The peer reads requests from its stdin and exits when that closes, so it ends with the benchmark;
on Linux the kernel also kills it when the benchmark's process ends (``_die_with_parent``: a
peer stopped between turns reads nothing), so ``kill -9`` or SIGTERM of the benchmark leaves
no peer behind.
"""
import atexit
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time

# the peer's first statement: torch before fastreg (the package import below loads no OpenMP)
_BOOT = "import torch; from fastreg.bench.torch_peer import serve; serve()"
START_TIMEOUT = 120.0   # seconds for the peer to import torch and answer


class PeerError(RuntimeError):
    """The peer could not start or failed a request (the message carries its traceback)."""


def _openmp_libraries():
    """Paths of the OpenMP runtimes mapped into this process, in load order (Linux)."""
    found = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if line.count(" ") >= 5 else ""
                if any(n in path for n in ("libgomp", "libomp", "libiomp")) and path not in found:
                    found.append(path)
    except OSError:
        pass
    return found


def _set_all_affinity(cpus):
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (OSError, ValueError):   # a thread that ended meanwhile
            pass


def _die_with_parent():
    """Linux: have the kernel SIGKILL this process when the benchmark's process ends. Closing
    the pipe is not enough: between its turns the peer is stopped (``TorchPeer.pause``), and a
    stopped process reads nothing, so a benchmark killed then (kill -9, SIGTERM) left it
    stopped for as long as its launcher lived; SIGKILL ends a stopped process too."""
    parent = os.environ.get("FASTREG_BENCH_PARENT")
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    try:   # the benchmark ended before the call above (a launcher between is no reason)
        os.kill(int(parent), 0)
    except ProcessLookupError:
        os._exit(1)
    except OSError:
        pass


def serve(stdin=None, stdout=None):
    """The peer's loop (run in the peer process by ``TorchPeer``): answer requests until stdin
    closes. Requests are pickled tuples ``(verb, *args)``; replies ``("ok", value)`` or
    ``("error", text)``."""
    import traceback

    import torch
    _die_with_parent()
    inp = stdin or sys.stdin.buffer
    out = stdout or os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr   # nothing else may write into the reply pipe
    calls = {}
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    def hello():
        return {"pid": os.getpid(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "openmp": _openmp_libraries(),
                "wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "spincount": os.environ.get("GOMP_SPINCOUNT")}

    def setup(op):
        from . import cases
        calls[op] = cases.small_torch_call(op)

    def timed(op, n):
        from .small import time_each   # after torch (imports fastreg, which loads nothing)
        return time_each(calls[op], n)

    def set_threads(n):
        torch.set_num_threads(n)
        return torch.get_num_threads()

    def pin(cpu, n):
        _set_all_affinity({cpu} if cpu is not None else affinity)
        return set_threads(n), cpus()

    def cpus():
        return sorted(os.sched_getaffinity(0))

    verbs = {"hello": hello, "setup": setup, "timed": timed, "threads": set_threads, "pin": pin,
             "cpus": cpus}
    while True:
        try:
            request = pickle.load(inp)
        except EOFError:
            return
        try:
            reply = ("ok", verbs[request[0]](*request[1:]))
        except Exception:
            reply = ("error", traceback.format_exc())
        pickle.dump(reply, out)
        out.flush()


STOP_TIMEOUT = 1.0   # seconds wait_stopped waits at most (0.26 ms is usual)


def _thread_states(pid):
    """The state letter of each thread of process ``pid`` (Linux's /proc); None where that
    cannot be read (another platform, the process ended)."""
    try:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        return states
    except (OSError, IndexError):
        return None


def wait_stopped(pid, timeout=STOP_TIMEOUT):
    """Wait until every thread of process ``pid`` is stopped (``SIGSTOP`` sent): kill() returns
    before the signal has stopped them, and a thread spinning in user space on another CPU
    (torch's OpenMP team after its turn) runs on meanwhile: 0.26 ms from kill() to all stopped
    (median of 200; at most 0.41), on the 2-vCPU VM, where a turn of 10 fastreg calls takes
    about 0.2 ms, and in about half of the turns the peer's threads were still running at its
    end. Returns whether they were seen stopped (False: no /proc, or not within ``timeout``
    seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        states = _thread_states(pid)
        if states is None:
            return False
        if all(s in "Tt" for s in states):
            return True
        if time.monotonic() > deadline:
            return False
        os.sched_yield()


class Remote:
    """One small op in the peer: ``timed(n)`` makes n calls there, each timed alone, and returns
    their seconds (``fastreg.bench.small.time_calls`` takes it as a contender)."""

    def __init__(self, peer, op):
        self.peer, self.op = peer, op

    def timed(self, n):
        try:
            return self.peer.ask("timed", self.op, n)
        finally:
            self.peer.pause()


class TorchPeer:
    """A process that imports torch (and not fastreg's OpenMP) and times torch's small ops.

    Parameters
    ----------
    threads : int
        torch.set_num_threads in the peer.

    Raises
    ------
    PeerError
        When the peer cannot start (torch missing: the message says so).
    """

    def __init__(self, threads):
        import fastreg
        root = os.path.dirname(os.path.dirname(os.path.abspath(fastreg.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        if threading.current_thread() is threading.main_thread():
            # see _die_with_parent: the kernel's signal follows the creating thread's end, so
            # only a peer made by the main thread (fastreg bench's) asks for it
            env["FASTREG_BENCH_PARENT"] = str(os.getpid())
        else:
            env.pop("FASTREG_BENCH_PARENT", None)
        self._paused = False
        self.pauses = self.unstopped = 0   # turns ended, and those not seen stopped (pause)
        atexit.register(self._resume)   # never leave a stopped peer behind
        self._stderr = tempfile.TemporaryFile()   # a file, not a pipe: warnings never block it
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        try:
            self.info = self.ask("hello")
        except PeerError:
            self.close()
            raise
        self.info["threads"] = self.ask("threads", threads)
        self.version = self.info["torch"]

    @property
    def pid(self):
        return self.proc.pid

    def pause(self):
        """Stop the peer (SIGSTOP) until its next request: after its turn, torch's OpenMP
        threads keep spinning for milliseconds (GNU's default policy: about 300,000 spins), on
        the CPUs where the next contender's turn runs. Stopped, they spin on no CPU, and each
        contender gets the machine as it would alone; torch's threads resume where they were,
        still spinning, at its next turn. Returns once they are stopped (``wait_stopped``;
        ``unstopped`` counts the turns after which they were not seen so)."""
        if not self._paused and self.proc.poll() is None and hasattr(signal, "SIGSTOP"):
            os.kill(self.proc.pid, signal.SIGSTOP)
            self._paused = True
            self.pauses += 1
            if not wait_stopped(self.proc.pid):
                self.unstopped += 1

    def _resume(self):
        if self._paused:
            self._paused = False
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def ask(self, verb, *args):
        """Send one request, return the peer's answer; PeerError when it failed or died."""
        self._resume()
        if self.proc.stdin.closed:
            raise PeerError("the torch peer process ended: closed")
        try:
            pickle.dump((verb, *args), self.proc.stdin)
            self.proc.stdin.flush()
            status, value = pickle.load(self.proc.stdout)
        except (BrokenPipeError, EOFError, OSError, pickle.UnpicklingError):
            self._end()
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip().splitlines()
            raise PeerError("the torch peer process ended: "
                            + (text[-1] if text else "no message")) from None
        if status != "ok":
            raise PeerError(f"the torch peer failed {verb}{args}:\n{value}")
        return value

    def call(self, op):
        """A ``Remote`` contender for small op ``op`` (its data built in the peer)."""
        self.ask("setup", op)
        return Remote(self, op)

    def pin(self, cpu, threads):
        """Every thread of the peer on CPU ``cpu`` (None: back to the CPUs it started with),
        torch with ``threads`` threads; returns (torch's threads, the peer's CPUs)."""
        return self.ask("pin", cpu, threads)

    def _end(self):
        self._resume()
        try:
            self.proc.stdin.close()   # the peer's loop ends at EOF
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        """End the peer; idempotent."""
        self._end()
        self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
