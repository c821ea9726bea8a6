"""The Trainer: mini-batch training of a ``Sequential`` classifier with fastreg's regularizers.

One training step, in order::

    xb, yb = X[batch], y[batch]                 (gathered into preallocated buffers)
    xb = augment(xb, seed, epoch, index_offset) (optional)
    xb, target = mix(xb, yb, seed, epoch, index_offset)   (optional: mixup / cutmix, soft labels)
    logits = model.forward(xb)                  (dropout and batch norm: fastreg kernels)
    loss, grad = cross_entropy(logits, target or yb, label_smoothing=...)   (fastreg, one pass)
    model.backward(grad)                        (dropout mask regenerated, not stored)
    grad += d/dw (l1 |w| + l2 w^2)              (fastreg.l1_grad / l2_grad / elastic_net_grad,
                                                 accumulate=True, on the penalty mask)
    optimizer.step(grads)                       (fastreg.optim: SGD, Adam, AdamW)
    w <- prox_l1(w, lr * prox_l1)               (fastreg.prox_l1: exact zeros)

Randomness, all derived from ``seed`` so that a run is reproducible and a resumed run continues
bit for bit: the shuffle of epoch ``e`` is ``np.random.default_rng([seed, e]).permutation(n)``;
each Dropout layer has its own Philox key (derived from ``seed`` and the layer's position when
it has none) and a 64-bit counter offset that advances by the number of elements per training
call; ``augment`` gets ``(seed, epoch, index_offset)``.

Array module: NumPy, or CuPy when X is a CuPy array (see ``_xp``; untested here).

Data parallel (``comm``, an mpi4py communicator; start the same script on N processes with
``mpiexec -n N python -m mpi4py script.py``). Every rank calls ``fit`` with the *same* full data
set and visits the same global batches (the shuffle above); rank r takes the contiguous block
``fastreg.distributed.shard(len(batch), r, N)`` of each global batch (uneven blocks allowed,
also empty ones). Per step, each rank::

    logits = model.forward(x_r)        batch norm synchronized over comm (global statistics);
                                       dropout word = f(global row index) (Dropout's window)
    loss_r, grad = sum of the rows' losses / B   (B = global batch: the ranks' gradients add
                                                  up to the global mean loss's)
    model.backward(grad)               (batch-norm backward synchronized too)
    GradientAllreduce(average=False)   one flat preallocated buffer, 25 MiB buckets, summed
    grad += penalties; optimizer.step; prox   (the same inputs on every rank: the same bits)

Augmentation gets ``index_offset = start of the batch + first row of the rank's block``, so each
sample is augmented as in one process. Epoch metrics are summed over ranks (one Allreduce),
validation is sharded likewise; ``time`` is the rank's own. Rank 0 decides early stopping (its
decision is broadcast), writes checkpoints (atomically; every rank learns whether it worked) and
reads them on resume (the state is broadcast: no shared file system needed), and is the only
rank with a progress bar or printed lines. A checkpoint holds no rank-specific state, so a run
resumes on any number of ranks. A rank that dies or hangs makes the others raise
``fastreg.distributed.CollectiveTimeout`` after FASTREG_MPI_TIMEOUT seconds (default 300)
instead of waiting forever, and the job is then aborted (``comm.Abort``, at once under
``python -m mpi4py``, else when the process exits).

Exactness against one process on the same global batches: on 1 rank the arithmetic is the
single-process one (no synchronized batch norm, no Allreduce: bit-identical results); on N > 1
ranks the sums are split differently (batch-norm statistics, weight gradients), so the weights
agree to rounding (float64: ~1e-12 relative per step, 1e-10 after a few AdamW steps), while
every rank holds bit-identical weights. The same holds for a run resumed on another number of
ranks; resumed on the same number it is bit-identical to the uninterrupted run.
"""
import contextlib
import copy
import math
import numbers
import sys
import time
import warnings

import numpy as np

from .. import _arrays, _config, _registry, _threads
from ..ema import EMA
from . import checkpoint as _ckpt
from . import kernels
from ._xp import array_module, to_host
from ..loss import _cross_entropy, cross_entropy
from .callbacks import LRScheduler
from .layers import BatchNorm, Sequential

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "time")


def _check_batch_size(batch_size):
    """batch_size as an int >= 1 (bools refused: ``True`` is not a batch size)."""
    if (isinstance(batch_size, (bool, np.bool_))
            or not isinstance(batch_size, numbers.Integral) or batch_size < 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return int(batch_size)


def _modules(module):
    """``module`` and all its descendants."""
    yield module
    for child in module.children():
        yield from _modules(child)


def _derive_seed(seed, index):
    """A 64-bit Philox key for dropout layer ``index`` of a run with ``seed``."""
    return int(np.random.SeedSequence([int(seed), 1, int(index)]).generate_state(2, np.uint64)[0])


def _tensor_as_array(t, name):
    """A torch tensor as the array the trainer computes with: a NumPy view of a CPU tensor, a
    CuPy view of a CUDA one (``__cuda_array_interface__``; CuPy needed), without copying;
    bfloat16, which NumPy lacks, widened to float32 (the trainer's data is converted to the
    parameters' dtype anyway). No autograd is recorded (detached)."""
    t = t.detach()
    if t.device.type == "cuda":
        try:
            import cupy
        except ImportError:
            raise TypeError(f"{name} is a CUDA tensor: the trainer needs CuPy for device data "
                            f"(pip install cupy), or pass {name}.cpu()") from None
        return cupy.asarray(t)
    if t.device.type != "cpu":
        raise TypeError(f"{name} is a torch tensor on device {t.device}: pass {name}.cpu()")
    if t.dtype == sys.modules["torch"].bfloat16:
        t = t.float()
    try:
        return t.resolve_conj().resolve_neg().numpy()
    except (TypeError, RuntimeError) as exc:
        raise TypeError(f"{name}: a torch tensor of dtype {t.dtype} has no NumPy equivalent "
                        f"({exc})") from None


class Trainer:
    """Train a classifier (``fastreg.train.Sequential``) with fastreg's regularization kernels.

    Parameters
    ----------
    model : Sequential
        E.g. ``fastreg.train.mlp((64, 256, 256, 10), dropout=0.5)``.
    optimizer : fastreg.optim.SGD, Adam or AdamW
        Built on ``model.parameters()`` (the same arrays, in the same order). Its
        ``decay_mask`` is the weight-decay mask; it is also the default penalty mask.
    l1, l2 : float
        Penalties ``l1 * sum|w| + l2 * sum w**2`` whose gradients are added to the loss's
        (coupled regularization) for the masked parameters. Finite real numbers >= 0 (bools
        are refused).
    prox_l1 : float
        After each optimizer step, soft-threshold the masked parameters by ``lr * prox_l1``
        (proximal L1: exact zeros).
    penalty_mask : sequence of bool, optional
        Which parameters get the penalties and the proximal step; default: the optimizer's
        ``decay_mask`` (weight matrices, not biases or batch-norm parameters).
    callbacks : sequence of Callback
        E.g. ``[EarlyStopping(patience=5)]``.
    augment : callable, optional
        ``augment(batch, seed, epoch, index_offset) -> batch`` applied to each training batch
        (not to validation). ``index_offset`` is the position of the batch's first sample in
        the epoch's shuffled order, so sample ``j`` of the batch is augmented with stream
        position ``index_offset + j`` of epoch ``epoch``: each sample gets one independent draw
        per epoch, reproducible from the seed (the draw follows the sample's position in the
        shuffled order, a seeded permutation of its dataset index, rather than the index
        itself, so that one call covers a whole batch).
    mix : callable, optional
        ``mix(batch, labels, seed, epoch, index_offset) -> (batch, soft_labels)`` applied to
        each training batch after ``augment``: mixup or cutmix
        (``fastreg.train.augment.image_mixup`` / ``image_cutmix``), keyed like ``augment``;
        ``soft_labels`` is (batch rows, classes), float, and the loss is the cross-entropy
        against it (timm's SoftTargetCrossEntropy, smoothed by ``label_smoothing`` if set).
        Training accuracy is still counted against the original labels. With ``comm`` each
        rank mixes within its block of the global batch.
    label_smoothing : float
        In [0, 1]: the training loss is ``fastreg.cross_entropy(..., label_smoothing=)``
        (torch's definition; Szegedy et al. 2016). Validation (``evaluate``) always reports the
        plain cross-entropy.
    seed : int
        Root of all randomness of the run (shuffling, dropout keys, augmentation); an integer
        in [0, 2**64).
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
        Passed to every fastreg call (layers, penalties, prox).
    verbose : int
        0 quiet; 1 a tqdm progress bar per epoch (quiet if tqdm is not installed); 2 one line
        per epoch.
    profile : bool
        Time every fastreg kernel call; ``history["kernel_time"]`` then holds the seconds spent
        in kernels per epoch.
    comm : mpi4py communicator, optional
        Data-parallel training over the ranks of ``comm`` (e.g. ``MPI.COMM_WORLD``): see the
        module notes. Every rank builds the same model (same seed), optimizer and Trainer and
        calls ``fit`` / ``evaluate`` / ``save_checkpoint`` / ``load_checkpoint`` with the same
        arguments (these are collective then); ``fit`` starts from rank 0's state. Needs
        ``pip install "fastreg-kernels[mpi]"``. Host (NumPy) arrays only: the gradient Allreduce
        refuses device arrays.
    threads : int >= 1 or None
        Threads for fastreg's kernels and NumPy's matmul during ``fit``: fastreg's own
        (``with fastreg.threads(n)``, which governs the cpu backend's Numba kernels and the c
        backend's OpenMP alike, like ``fastreg.set_num_threads``) and, through threadpoolctl
        when it is installed, BLAS and other OpenMP libraries; restored afterwards. Default 1:
        the trainer's tensors are small (a digits batch is 64 x 256), so threads buy little,
        and spinning worker pools of BLAS, OpenMP and Numba compete for the cores (measured on
        a busy 2-core machine: ~40 ms per digits epoch with 1 thread, ~750 ms with 2). None
        leaves every pool alone.
    ema : float or dict, optional
        Keep an exponential moving average of the parameters and buffers (``fastreg.EMA``,
        timm ModelEmaV3's rule), updated after every optimizer step with
        ``step = optimizer.step_count``: a float is the decay, a dict the options of
        ``fastreg.EMA`` (``decay``, ``min_decay``, ``update_after_step``, ``use_warmup``,
        ``warmup_gamma``, ``warmup_power``). ``predict`` and ``evaluate`` (hence the
        validation metrics of ``fit``) then use the EMA weights (``eval_with_ema = False``
        turns that off; ``ema_weights()`` swaps them in for any code), and checkpoints hold
        the averages (``ema/...``), so a resumed run continues them bit for bit.

    Returns
    -------
    Trainer

    Raises
    ------
    TypeError
        model is not a Sequential; comm is not an mpi4py communicator; l1, l2 or prox_l1 is
        not a real number (or is a bool); threads is not an int; augment or mix is not
        callable.
    ImportError
        comm given but mpi4py is not installed.
    ValueError
        The optimizer does not update exactly the model's parameters, or a bad hyper-parameter
        (a negative or non-finite penalty, label_smoothing outside [0, 1], a seed outside
        [0, 2**64)), an unknown backend name, or threads < 1.
    BackendUnavailableError
        backend names a backend that cannot run here (the reason is in the message).
    """

    def __init__(self, model, optimizer, *, l1=0.0, l2=0.0, prox_l1=0.0, penalty_mask=None,
                 callbacks=(), augment=None, seed=0, backend="auto", verbose=1, profile=False,
                 threads=1, comm=None, ema=None, mix=None, label_smoothing=0.0):
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a fastreg.train.Sequential, got "
                            f"{type(model).__name__}")
        params = model.parameters()
        opt_params = list(getattr(optimizer, "params", []))
        if len(opt_params) != len(params) or any(
                a is not b and not _same_memory(a, b) for a, b in zip(params, opt_params)):
            raise ValueError("the optimizer must be built on model.parameters() (the same "
                             "arrays in the same order)")
        for name, v in (("l1", l1), ("l2", l2), ("prox_l1", prox_l1)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
                raise TypeError(f"{name} must be a real number >= 0, got "
                                f"{type(v).__name__} {v!r}")
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        seed = _arrays.check_uint64(seed, "seed")
        if not isinstance(backend, str) or backend.lower() not in ("auto", *_config.BACKENDS):
            raise ValueError(f"backend must be one of {('auto', *_config.BACKENDS)}, got "
                             f"{backend!r}")
        backend = backend.lower()
        _registry.resolve(backend, *params)   # an unavailable backend raises now, with why
        if threads is not None:
            threads = _threads._check_count(threads, "threads")
        if augment is not None and not callable(augment):
            raise TypeError("augment must be a callable (batch, seed, epoch, index_offset)")
        if mix is not None and not callable(mix):
            raise TypeError("mix must be a callable (batch, labels, seed, epoch, index_offset)")
        label_smoothing = _arrays.check_probability(label_smoothing, "label_smoothing")
        self.model, self.optimizer = model, optimizer
        self.l1, self.l2, self.prox_l1 = float(l1), float(l2), float(prox_l1)
        mask = optimizer.decay_mask if penalty_mask is None else [bool(m) for m in penalty_mask]
        if len(mask) != len(params):
            raise ValueError(f"penalty_mask has {len(mask)} entries for {len(params)} "
                             "parameters")
        self.penalty_mask = list(mask)
        self.callbacks = list(callbacks)
        for i, cb in enumerate(self.callbacks):
            if isinstance(cb, type):
                raise TypeError(f"callbacks[{i}] is the class {cb.__name__}, not a callback: "
                                f"pass an instance, {cb.__name__}(...)")
        self.augment = augment
        self.mix = mix
        self.label_smoothing = label_smoothing
        self.seed = seed
        self.backend = backend
        self.verbose = int(verbose)
        self.profile = bool(profile)
        self.threads = threads
        model.set_backend(backend)
        for i, layer in enumerate(model.dropout_layers()):
            if layer.seed is None:
                layer.seed = _derive_seed(self.seed, i)
        self.epoch = 0                     # epochs completed
        self.stop_training = False
        # callback states and stop flag of a state loaded outside fit (load_checkpoint,
        # load_state_dict): the next fit puts them back after on_train_begin, which resets
        # callbacks, so that loading then fitting resumes as fit(resume=True) does
        self._loaded_callbacks = None
        # an epoch that an exception (Ctrl-C included) cut short: its updates are in the model
        # but not in epoch / history; the next fit warns (see fit's Notes)
        self._partial_epoch = None
        self.history = {k: [] for k in METRICS}
        self._has_validation = False
        self._bufs = {}
        self._params = params
        self._grads = model.gradients()
        self._penalized = [(w, g) for w, g, m in zip(params, self._grads, self.penalty_mask)
                           if m]
        self.ema = self._make_ema(ema, backend)   # after the dropout seeds: model is final
        self.eval_with_ema = self.ema is not None
        self._ema_swapped = False
        self.comm, self.rank, self.world_size = None, 0, 1
        self._allreduce = None
        if comm is not None:
            from .. import distributed as dist
            # GradientAllreduce checks comm and preallocates the flat buffer and its buckets
            allreduce = dist.GradientAllreduce(self._grads, comm, average=False)
            self.comm, self.rank, self.world_size = comm, comm.Get_rank(), comm.Get_size()
            if self.world_size > 1:
                # one rank: the single-process arithmetic (bit-identical); more: sync BN + sums
                self._allreduce = allreduce

    # -- weight EMA -------------------------------------------------------------------------
    _EMA_OPTIONS = ("decay", "min_decay", "update_after_step", "use_warmup", "warmup_gamma",
                    "warmup_power")

    def _ema_named(self):
        """``[(checkpoint name, array)]`` of what the EMA averages: parameters, then buffers."""
        return ([(f"param/{n}", p) for n, p in self.model.named_parameters()]
                + [(f"buffer/{n}", b) for n, b in self.model.named_buffers()])

    def _make_ema(self, ema, backend):
        if ema is None:
            return None
        if isinstance(ema, dict):
            opts = dict(ema)
        elif isinstance(ema, numbers.Real) and not isinstance(ema, (bool, np.bool_)):
            opts = {"decay": ema}
        else:
            raise TypeError(f"ema must be None, a decay (a float) or a dict of fastreg.EMA "
                            f"options, got {type(ema).__name__}")
        unknown = sorted(set(opts) - set(self._EMA_OPTIONS))
        if unknown:
            raise ValueError(f"ema: unknown options {unknown}; known: {list(self._EMA_OPTIONS)}")
        return EMA([a for _, a in self._ema_named()], backend=backend, **opts)

    @contextlib.contextmanager
    def ema_weights(self):
        """Inside the block the model holds the EMA's parameters and buffers; its own are put
        back on exit (also on an exception).

        Parameters
        ----------
        None

        Returns
        -------
        context manager

        Raises
        ------
        ValueError
            The trainer has no EMA (``Trainer(ema=...)``).
        """
        if self.ema is None:
            raise ValueError("this trainer keeps no EMA: pass Trainer(ema=...)")
        if self._ema_swapped:          # nested: the EMA weights are in already
            yield
            return
        arrays = [a for _, a in self._ema_named()]
        saved = [a.copy() for a in arrays]
        self.ema.copy_to(arrays)
        self._ema_swapped = True
        try:
            yield
        finally:
            for a, s in zip(arrays, saved):
                a[...] = s
            self._ema_swapped = False

    # -- data parallel helpers ------------------------------------------------------------
    @property
    def is_root(self):
        """True on rank 0 (and without ``comm``): the rank that prints, decides and writes."""
        return self.rank == 0

    def _dist(self):
        from .. import distributed as dist
        return dist

    def _sum(self, values):
        """float64 values summed over the ranks (identity without comm)."""
        values = np.asarray(values, np.float64)
        if self.comm is None:
            return values
        return self._dist().allreduce(values, self.comm, op="sum")

    def _root_call(self, fn, what):
        """Run ``fn()`` on rank 0 only and broadcast its result; an exception on rank 0 is
        raised there and reported on every other rank (no rank is left waiting)."""
        if self.comm is None:
            return fn()
        result, error = None, None
        if self.is_root:
            try:
                result = fn()
            except Exception as exc:   # re-raised below, after the others know
                error = exc
        status = self._dist().broadcast_object(
            None if error is None else f"{type(error).__name__}: {error}", self.comm)
        if error is not None:
            raise error
        if status is not None:
            raise RuntimeError(f"{what} failed on rank 0: {status}")
        return result

    def _check_same_everywhere(self, error, values, what):
        """Collective: raise on every rank if any rank failed (``error``) or the ranks' values
        differ (same data, batch size and epochs are required on every rank)."""
        if self.comm is None:
            if error is not None:
                raise error
            return
        dist = self._dist()
        v = np.asarray([0.0 if error is None else 1.0] + [float(x) for x in values], np.float64)
        hi = dist.allreduce(v, self.comm, op="max")
        lo = dist.allreduce(v, self.comm, op="min")
        if error is not None:
            raise error
        if hi[0]:
            raise RuntimeError(f"{what}: the input checks failed on another rank (see its "
                               "error)")
        if not np.array_equal(hi, lo):
            raise ValueError(f"{what}: the ranks disagree on the data or the arguments (every "
                             "rank must pass the same X, y, validation, epochs, batch_size and "
                             "shuffle); per-rank values differ in "
                             f"{np.nonzero(hi != lo)[0].tolist()}")

    # -- input checks ---------------------------------------------------------------------
    def _check_data(self, X, y, xname, yname):
        X = self._as_array(X, xname)
        y = self._as_array(y, yname)
        xp = array_module(X)
        dtype = self._params[0].dtype
        if X.dtype.kind not in "biuf":
            raise TypeError(f"{xname} must hold real numbers, got dtype {X.dtype}")
        if X.ndim != 2:
            raise ValueError(f"{xname} must be 2-D (samples, features), got shape {X.shape}")
        if X.shape[1] != self.model.in_features:
            raise ValueError(f"{xname} has {X.shape[1]} features, the model expects "
                             f"{self.model.in_features}")
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(f"{xname} has {len(X)} samples but {yname} has shape {y.shape}: "
                             "one integer label per sample")
        if len(X) == 0:
            raise ValueError(f"{xname} is empty")
        if y.dtype.kind not in "iu":
            raise TypeError(f"{yname} must hold integer class labels, got dtype {y.dtype}")
        k = self.model.out_features
        bad = xp.nonzero((y < 0) | (y >= k))[0]
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{yname}[{i}] = {int(y[i])} is not a class label in [0, {k}) "
                             f"({len(bad)} label(s) out of range)")
        X = xp.ascontiguousarray(X, dtype=dtype)
        finite = xp.isfinite(X).all(axis=1)
        if not bool(finite.all()):
            i = int(xp.nonzero(~finite)[0][0])
            raise ValueError(f"{xname}[{i}] holds NaN or inf (sample {i}; "
                             f"{int((~finite).sum())} sample(s) in all)")
        return X, xp.ascontiguousarray(y, dtype=np.int64)

    @staticmethod
    def _as_array(a, name):
        """An array (NumPy or CuPy) as it is; a torch tensor as a view (``_tensor_as_array``);
        any other array-like (a list, ...) through ``np.asarray``."""
        if type(a).__module__.startswith("torch"):
            return _tensor_as_array(a, name)
        if hasattr(a, "ndim") and hasattr(a, "dtype") and hasattr(a, "shape"):
            return a
        try:
            return np.asarray(a)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be an array or an array-like of numbers "
                            f"({type(a).__name__} given): {exc}") from None

    def _has_batch_norm(self):
        """True when the model holds BatchNorm layers (training mode needs > 1 row per
        batch)."""
        return any(isinstance(m, BatchNorm) for m in _modules(self.model))

    def _batches(self, n, batch_size):
        """``[(start, stop), ...]`` of the training batches of an epoch of n samples: every
        ``batch_size`` rows; with BatchNorm layers a last batch of one row joins the previous
        batch (which then has ``batch_size + 1`` rows), since batch norm cannot train on one
        row."""
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] == 1 and self._has_batch_norm():
            starts.pop()
        return [(a, b) for a, b in zip(starts, starts[1:] + [n])]

    def metric_names(self):
        """The keys of the epoch logs of the current ``fit``.

        Parameters
        ----------
        None

        Returns
        -------
        list of str
        """
        names = ["loss", "accuracy", "time"]
        if self._has_validation:
            names += ["val_loss", "val_accuracy"]
        if self.profile:
            names.append("kernel_time")
        return names

    # -- state ----------------------------------------------------------------------------
    def model_state(self, rng=True, ema=False):
        """Copies of the model's parameters and buffers (and RNG positions when ``rng``, the
        weight averages when ``ema``).

        Parameters
        ----------
        rng : bool
            Include the dropout seeds and offsets (``"rng/..."`` entries).
        ema : bool
            Include the EMA's averages and update count, when the trainer keeps an EMA
            (``"ema/param/<name>"``, ``"ema/buffer/<name>"``, ``"ema/num_updates"``; host
            arrays): with ``eval_with_ema`` they are the weights that were evaluated.

        Returns
        -------
        dict of str to array
            ``"param/<name>"``, ``"buffer/<name>"``, ``"rng/<name>"``; arrays on the model's
            device.
        """
        out = {f"param/{n}": p.copy() for n, p in self.model.named_parameters()}
        out.update({f"buffer/{n}": b.copy() for n, b in self.model.named_buffers()})
        if rng:
            out.update({f"rng/{n}": np.array(v, np.uint64)
                        for n, v in self.model.rng_state().items()})
        if ema and self.ema is not None:
            out.update(self._ema_entries())
        return out

    def _ema_entries(self):
        """The EMA's state as checkpoint entries (``ema/num_updates``, ``ema/<name>``)."""
        state = self.ema.state_dict()
        out = {"ema/num_updates": state["num_updates"]}
        out.update({f"ema/{name}": state[str(i)] for i, (name, _) in enumerate(self._ema_named())})
        return out

    def _ema_state_of(self, entries, what):
        """``EMA.load_state_dict``'s mapping from checkpoint entries (``ema/...``); None when
        there are none. ValueError for entries this trainer cannot take, or an incomplete set."""
        keys = [k for k in entries if k.startswith("ema/")]
        if not keys:
            return None
        if self.ema is None:
            raise ValueError(f"{what} has EMA entries ({keys[0]!r}, ...) but this trainer keeps "
                             "no EMA")
        names = ["ema/num_updates"] + [f"ema/{name}" for name, _ in self._ema_named()]
        missing = sorted(set(names) - set(keys))
        extra = sorted(set(keys) - set(names))
        if missing or extra:
            raise ValueError(f"{what}: EMA entries missing {missing}, unexpected {extra} (the "
                             "averages are saved whole or not at all)")
        ema = {"num_updates": entries["ema/num_updates"]}
        ema.update({str(i): entries[f"ema/{name}"]
                    for i, (name, _) in enumerate(self._ema_named())})
        return ema

    def _check_model_state(self, state, what):
        expected = {k: (tuple(v.shape), v.dtype) for k, v in self.model_state(rng=False).items()}
        got = {k: (tuple(v.shape), v.dtype) for k, v in state.items()
               if k.startswith(("param/", "buffer/"))}
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(f"{k}: {got[k][0]} {got[k][1]} (model: {expected[k][0]} "
                       f"{expected[k][1]})" for k in set(got) & set(expected)
                       if got[k] != expected[k])
        if missing or extra or wrong:
            raise ValueError(f"{what} does not match this model: missing {missing}, "
                             f"unexpected {extra}, mismatched {wrong}")

    def load_model_state(self, state):
        """Copy parameters and buffers (and RNG positions, if present) into the model, in place.

        Parameters
        ----------
        state : dict
            As returned by ``model_state``.

        Returns
        -------
        None

        Raises
        ------
        ValueError
            Names, shapes or dtypes that do not match the model (nothing is changed then).
        """
        self._check_model_state(state, "the state")
        ema = self._ema_state_of(state, "the state")
        if ema is not None:   # checked whole before it changes anything: first
            self.ema.load_state_dict({k: to_host(v) for k, v in ema.items()})
        xp = array_module(self._params[0])
        for n, p in self.model.named_parameters():
            p[...] = xp.asarray(state[f"param/{n}"])
        for n, b in self.model.named_buffers():
            b[...] = xp.asarray(state[f"buffer/{n}"])
        rng = {k[len("rng/"):]: int(v) for k, v in state.items() if k.startswith("rng/")}
        if rng:
            self.model.set_rng_state(rng)

    def state_dict(self):
        """Everything needed to resume: model, optimizer, RNG counters, callbacks, history.

        Parameters
        ----------
        None

        Returns
        -------
        dict of str to numpy.ndarray
            Flat, ``np.savez``-able, host arrays.
        """
        out = {k: to_host(v) for k, v in self.model_state(rng=True).items()}
        out.update({f"optim/{k}": to_host(v) for k, v in self.optimizer.state_dict().items()})
        out["trainer/optimizer"] = np.array(type(self.optimizer).__name__)
        out["trainer/epoch"] = np.array(self.epoch, np.int64)
        out["trainer/seed"] = np.array(self.seed, np.uint64)
        out["trainer/stop_training"] = np.array(self.stop_training)
        out["trainer/lr"] = np.array(float(self.optimizer.lr), np.float64)
        if self.ema is not None:
            out.update(self._ema_entries())
        for k, v in self.history.items():
            out[f"history/{k}"] = np.asarray(v, np.float64)
        for i, cb in enumerate(self.callbacks):
            out[f"callback/{i}/class"] = np.array(type(cb).__name__)
            for k, v in cb.state_dict().items():
                out[f"callback/{i}/{k}"] = v
        return out

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned; everything is checked before anything changes.

        Parameters
        ----------
        state : dict of str to array

        Returns
        -------
        None

        Raises
        ------
        ValueError
            Any entry missing, unexpected, of the wrong shape, dtype or range (seeds and
            counter offsets in [0, 2**64), counts >= 0), or inconsistent (another model,
            optimizer class or configuration, other callbacks, a partial optimizer or
            best-weights state); the message names the entry. The trainer (weights, buffers,
            optimizer state, RNG positions, epoch, history, callbacks) is then unchanged.
        """
        self._apply_state(self._check_state(state))

    # -- checkpoint entries: specification, validation, application -------------------------
    def _state_spec(self):
        """``spec(name) -> Spec`` of every entry a checkpoint of this trainer may hold (None:
        not accepted). Shapes and dtypes come from the model and the optimizer, so that a
        file's members are checked against them before their data is read."""
        Spec = _ckpt.Spec
        model = {f"param/{n}": Spec(tuple(p.shape), p.dtype)
                 for n, p in self.model.named_parameters()}
        model.update({f"buffer/{n}": Spec(tuple(b.shape), b.dtype)
                      for n, b in self.model.named_buffers()})
        fixed = dict(model)
        fixed.update({f"rng/{n}": Spec((), "iu") for n in self.model.rng_state()})
        fixed["optim/step"] = Spec((), "iu")
        for name in getattr(self.optimizer, "_STATE", ()):
            for i, p in enumerate(self._params):
                fixed[f"optim/{name}.{i}"] = Spec(tuple(p.shape), p.dtype)
        fixed.update({"trainer/optimizer": Spec((), "U"), "trainer/epoch": Spec((), "iu"),
                      "trainer/seed": Spec((), "iu"), "trainer/stop_training": Spec((), "b")})
        fixed["trainer/lr"] = Spec((), "f")
        if self.ema is not None:
            fixed["ema/num_updates"] = Spec((), "iu")
            fixed.update({f"ema/{k}": v for k, v in model.items()})
            # a callback's snapshot of the model (EarlyStopping's best weights) holds the
            # averages too
            model = dict(model, **{k: v for k, v in fixed.items() if k.startswith("ema/")})
        for k in (*METRICS, "kernel_time"):
            fixed[f"history/{k}"] = Spec((None,), "f")
        free = []
        for i, cb in enumerate(self.callbacks):
            fixed[f"callback/{i}/class"] = Spec((), "U")
            describe = getattr(cb, "state_spec", None)     # duck-typed callbacks may lack it
            sub = describe(model) if describe is not None else None
            if sub is None:      # a callback that does not describe its state: any entries
                free.append(f"callback/{i}/")
            else:
                fixed.update({f"callback/{i}/{k}": v for k, v in sub.items()})

        def spec(name):
            if name in fixed:
                return fixed[name]
            if any(name.startswith(prefix) for prefix in free):
                return Spec(None, None)
            return None
        return spec

    def _check_state(self, state):
        """Validate a whole state (a checkpoint's entries) against this trainer; return what
        ``_apply_state`` needs. Raises ValueError naming the entry; changes nothing."""
        state = _ckpt.check_entries(state, self._state_spec())

        def need(name):
            if name not in state:
                raise ValueError(f"the checkpoint has no entry {name!r}")
            return state[name]

        def integer(name, lo, hi):
            v = int(need(name)[()])
            if not lo <= v < hi:
                raise ValueError(f"checkpoint entry {name!r} = {v} is outside [{lo}, {hi})")
            return v

        for n, _ in self.model.named_parameters():
            need(f"param/{n}")
        for n, _ in self.model.named_buffers():
            need(f"buffer/{n}")
        rng = {n: integer(f"rng/{n}", 0, 2**64) for n in self.model.rng_state()}
        opt_name = str(need("trainer/optimizer")[()])
        if opt_name != type(self.optimizer).__name__:
            raise ValueError(f"the checkpoint was written with optimizer {opt_name!r}, this "
                             f"trainer uses {type(self.optimizer).__name__!r} "
                             "(entry 'trainer/optimizer')")
        epoch = integer("trainer/epoch", 0, 2**63)
        seed = integer("trainer/seed", 0, 2**64)
        stop = bool(need("trainer/stop_training")[()])
        lr = float(need("trainer/lr")[()])
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"checkpoint entry 'trainer/lr' = {lr} must be a finite number >= 0")
        ema = None
        if self.ema is not None:   # shapes and dtypes: checked by the spec
            ema = {"num_updates": integer("ema/num_updates", 0, 2**63)}
            ema.update({str(i): need(f"ema/{name}")
                        for i, (name, _) in enumerate(self._ema_named())})
        history = {k: [float(v) for v in need(f"history/{k}")] for k in METRICS}
        n = len(history["loss"])
        for k in METRICS:
            if len(history[k]) != n:
                raise ValueError(f"checkpoint entry 'history/{k}' has {len(history[k])} "
                                 f"epochs, 'history/loss' has {n}")
        if n > epoch:
            raise ValueError(f"the checkpoint's history ('history/loss', ...) has {n} epochs "
                             f"but 'trainer/epoch' is {epoch}")
        if "history/kernel_time" in state:
            history["kernel_time"] = [float(v) for v in state["history/kernel_time"]]
            if len(history["kernel_time"]) > n:
                raise ValueError(f"checkpoint entry 'history/kernel_time' has "
                                 f"{len(history['kernel_time'])} epochs, more than the {n} "
                                 "of 'history/loss'")
        # the optimizer: after a step the trainer's optimizer holds its state for every
        # parameter (each gets a gradient every step), before it none
        step = integer("optim/step", 0, 2**63)
        kept = _optimizer_state_names(self.optimizer)
        if kept is not None:
            for i, p in enumerate(self._params):
                for name in self.optimizer._STATE:
                    key = f"optim/{name}.{i}"
                    want = step > 0 and name in kept and p.size > 0
                    if want and key not in state:
                        raise ValueError(f"the checkpoint has no entry {key!r} (the optimizer "
                                         f"has taken {step} steps)")
                    if key in state and not want:
                        why = (f"this {type(self.optimizer).__name__} keeps no {name}"
                               if name not in kept else "the optimizer has taken no step")
                        raise ValueError(f"unexpected checkpoint entry {key!r}: {why}")
        optim_state = {k[len("optim/"):]: v for k, v in state.items() if k.startswith("optim/")}
        probe = copy.copy(self.optimizer)   # its own checks, without touching the optimizer
        try:
            probe.load_state_dict(optim_state)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"the checkpoint's optimizer state (optim/...) is refused: "
                             f"{exc}") from exc
        del probe
        callbacks = []
        model_keys = [k for k in state if k.startswith(("param/", "buffer/"))]
        for i, cb in enumerate(self.callbacks):
            prefix = f"callback/{i}/"
            name = str(need(prefix + "class")[()])
            if name != type(cb).__name__:
                raise ValueError(f"checkpoint entry {prefix + 'class'!r} is {name!r}, this "
                                 f"trainer's callback {i} is {type(cb).__name__!r}")
            sub = {k[len(prefix):]: v for k, v in state.items()
                   if k.startswith(prefix) and k != prefix + "class"}
            weights = [k for k in sub if k.startswith("best_weights/")]
            if weights:      # best weights: all of the model's entries, or none
                missing = sorted(set(model_keys) - {k[len("best_weights/"):] for k in weights})
                if missing:
                    raise ValueError(f"the checkpoint has no entry "
                                     f"{prefix + 'best_weights/' + missing[0]!r} (best "
                                     "weights are saved whole or not at all)")
                # and the averages with them, whole or not at all (older checkpoints: none)
                self._ema_state_of({k[len("best_weights/"):]: sub[k] for k in weights},
                                   f"checkpoint entries {prefix}best_weights/")
            try:
                if hasattr(cb, "check_state_dict"):
                    cb.check_state_dict(sub, prefix)
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"checkpoint of callback {i} ({type(cb).__name__}): "
                                 f"{exc}") from exc
            callbacks.append((cb, sub))
        return {"state": state, "rng": rng, "epoch": epoch, "seed": seed, "stop": stop,
                "history": history, "optim": optim_state, "callbacks": callbacks, "lr": lr,
                "ema": ema}

    def _apply_state(self, plan):
        """Change the trainer to a state checked by ``_check_state``."""
        # callbacks first: a third-party callback may still refuse its state (its checks are
        # its own); it and the ones before it are then put back and nothing else has changed
        done = []
        for i, (cb, sub) in enumerate(plan["callbacks"]):
            before = cb.state_dict()
            try:
                cb.load_state_dict(sub)
            except Exception as exc:
                for c, b in reversed(done + [(cb, before)]):
                    c.load_state_dict(b)
                raise ValueError(f"callback {i} ({type(cb).__name__}) refused the "
                                 f"checkpoint's state: {exc}; nothing was changed") from exc
            done.append((cb, before))
        self.optimizer.load_state_dict(plan["optim"])     # checked on a copy: cannot fail
        self.optimizer.lr = plan["lr"]
        if plan["ema"] is not None:
            self.ema.load_state_dict(plan["ema"])
        state = plan["state"]
        xp = array_module(self._params[0])
        for n, p in self.model.named_parameters():
            p[...] = xp.asarray(state[f"param/{n}"])
        for n, b in self.model.named_buffers():
            b[...] = xp.asarray(state[f"buffer/{n}"])
        self.model.set_rng_state(plan["rng"])
        self.epoch, self.seed, self.stop_training = plan["epoch"], plan["seed"], plan["stop"]
        self.history = {k: list(v) for k, v in plan["history"].items()}
        self._loaded_callbacks = ([(cb, cb.state_dict()) for cb, _ in plan["callbacks"]],
                                  plan["stop"])
        self._partial_epoch = None   # a consistent state again

    def save_checkpoint(self, path):
        """Write ``state_dict()`` to ``path`` (``.npz``) atomically.

        With ``comm``: collective; rank 0 writes (the state is identical on every rank), and
        a failure there raises on every rank.

        Parameters
        ----------
        path : str or os.PathLike

        Returns
        -------
        str
            The absolute path.
        """
        return self._root_call(lambda: _ckpt.save(path, self.state_dict()),
                               "writing the checkpoint")

    def load_checkpoint(self, path):
        """Restore a checkpoint written by ``save_checkpoint`` (checked before any change). A
        ``fit`` after it continues the run as ``fit(checkpoint=path, resume=True)`` does: the
        callbacks' states loaded here are put back after their ``on_train_begin``.

        Parameters
        ----------
        path : str or os.PathLike

        Returns
        -------
        None

        Raises
        ------
        FileNotFoundError, PermissionError
            The file cannot be opened.
        ValueError
            A damaged file (not a zip archive, truncated, garbage, an unexpected member, a
            member whose header does not fit the entry it must hold, e.g. a huge declared
            shape), or a checkpoint that ``load_state_dict`` refuses; the underlying error is
            chained. Each member's header is checked against this trainer's model and
            optimizer before its data is read, and the trainer is unchanged after an error.

        Notes
        -----
        With ``comm``: collective; rank 0 reads and checks the file and broadcasts it, so the
        other ranks need not see the file. The checkpoint may come from any number of ranks.
        """
        def read():
            return self._check_state(_ckpt.load(path, self._state_spec()))
        if self.comm is None:
            self._apply_state(read())
            return
        plan = self._root_call(read, "reading the checkpoint")
        state = self._dist().broadcast_object(plan["state"] if self.is_root else None,
                                              self.comm)
        self._apply_state(plan if self.is_root else self._check_state(state))

    # -- training -------------------------------------------------------------------------
    def _buffer(self, key, shape, dtype, xp):
        k = (key, shape)
        buf = self._bufs.get(k)
        if buf is None:
            buf = self._bufs[k] = xp.empty(shape, dtype)
        return buf

    def _train_step(self, xb, yb, total=None, soft=None):
        """One step on rows xb with labels yb (soft: mixed labels to train on instead); the
        loss is the mean over the batch, or the rows' sum / ``total`` (the global batch) with
        comm. Returns (loss, correct)."""
        xp = array_module(xb)
        logits = self.model.forward(xb)
        grad = self._buffer("grad", logits.shape, logits.dtype, xp)
        loss, grad = _cross_entropy(logits, yb if soft is None else soft, None, -100, "mean",
                                    self.label_smoothing, True, grad, self.backend, total)
        correct = _correct(logits, yb)
        self.model.backward(grad)
        if self._allreduce is not None:
            # host arrays here (GradientAllreduce refuses device arrays: CuPy untested)
            self._allreduce.reduce(self._grads)
        if self.l1 or self.l2:
            for w, g in self._penalized:
                if self.l1 and self.l2:
                    kernels.elastic_net_grad(w, self.l1, self.l2, out=g, accumulate=True,
                                             backend=self.backend)
                elif self.l1:
                    kernels.l1_grad(w, self.l1, out=g, accumulate=True, backend=self.backend)
                else:
                    kernels.l2_grad(w, self.l2, out=g, accumulate=True, backend=self.backend)
        kernels.optimizer_step(self.optimizer, self._grads)
        if self.prox_l1:
            threshold = self.optimizer.lr * self.prox_l1
            for w, _ in self._penalized:
                kernels.prox_l1(w, threshold, backend=self.backend)
        if self.ema is not None:
            self.ema.update([a for _, a in self._ema_named()], step=self.optimizer.step_count)
        return loss, correct

    def train_epoch(self, X, y, batch_size=32, shuffle=True, progress=None):
        """One pass over (X, y) in training mode; no checks, no callbacks (``fit`` does those).

        Parameters
        ----------
        X : array (N, F), the model's dtype, C-contiguous
        y : int64 array (N,)
        batch_size : int
            Rows per batch; with BatchNorm layers a last batch of one row is merged into the
            previous one (see ``fit``).
        shuffle : bool
            Visit the samples in the order ``default_rng([seed, epoch]).permutation(N)``.
        progress : tqdm bar, optional

        Returns
        -------
        loss : float
            Mean training loss over the epoch (the data term, without penalties: the
            cross-entropy with ``label_smoothing``, against the mixed labels with ``mix``).
        accuracy : float
            Fraction of training samples classified correctly during the epoch (against their
            own labels, also when mixed).

        Notes
        -----
        With ``comm`` (collective): every rank passes the whole (X, y) and trains on its block
        of each global batch; the returned metrics are over all ranks' samples. The progress
        bar's per-step loss is the rank's own block's.
        """
        # the model's batch norm synchronizes over this trainer's communicator while it trains
        # (set here, not when the trainer is built: another trainer may share the model)
        self.model.set_comm(self.comm if self._allreduce is not None else None)
        xp = array_module(X)
        n = len(X)
        epoch = self.epoch
        self.model.train()
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if shuffle \
            else np.arange(n)
        order = xp.asarray(order)
        loss_sum, correct = 0.0, 0
        dist = self._dist() if self.comm is not None else None
        try:
            for start, stop in self._batches(n, batch_size):
                idx = order[start:stop]
                m = len(idx)                     # the global batch
                first = 0
                if dist is not None:
                    block = dist.shard(m, self.rank, self.world_size)
                    idx, first = idx[block], block.start
                    self.model.set_row_window(first, m)
                ml = len(idx)                    # this rank's rows of it
                xb = xp.take(X, idx, axis=0,
                             out=self._buffer("xb", (ml, X.shape[1]), X.dtype, xp))
                yb = xp.take(y, idx, out=self._buffer("yb", (ml,), y.dtype, xp))
                if self.augment is not None and ml:
                    xb = self.augment(xb, self.seed, epoch, start + first)
                soft = None
                if self.mix is not None and ml:
                    xb, soft = self.mix(xb, yb, self.seed, epoch, start + first)
                loss, c = self._train_step(xb, yb, None if dist is None else m, soft)
                loss_sum += loss * m if dist is not None else loss * ml
                correct += c
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss * m / max(ml, 1):.4f}", refresh=False)
        finally:
            if dist is not None:
                self.model.set_row_window(None, None)
        self.epoch += 1
        if dist is not None:
            loss_sum, correct = self._sum([loss_sum, correct])
        return float(loss_sum) / n, float(correct) / n

    def fit(self, X, y, validation=None, epochs=1, batch_size=32, shuffle=True,
            checkpoint=None, resume=False):
        """Train until ``epochs`` epochs are complete or a callback stops training.

        Parameters
        ----------
        X : array (N, F), float
            Training inputs; converted once to the model's dtype.
        y : integer array (N,)
            Class labels in ``[0, model.out_features)``.
        validation : (X_val, y_val), optional
            Evaluated after every epoch (``val_loss``, ``val_accuracy``).
        epochs : int
            Total number of epochs of the run (Keras's meaning: a resumed run at epoch 3 with
            ``epochs=6`` trains 3 more).
        batch_size : int
            Rows per training batch (the global batch with ``comm``). The last batch of an
            epoch has ``N % batch_size`` rows, except when the model has BatchNorm layers and
            that remainder is 1: batch norm cannot train on one row (the variance of one value
            is undefined; PyTorch raises there, and its ``DataLoader(drop_last=True)`` would
            drop the row), so that row joins the previous batch, which has ``batch_size + 1``
            rows. Every sample is thus still visited once per epoch. With BatchNorm layers,
            ``batch_size=1`` or a single training sample is refused before any work.
        shuffle : bool
        checkpoint : str or os.PathLike, optional
            ``.npz`` file written (atomically) after every epoch; its folder is checked for
            writing before any work.
        resume : bool
            If ``checkpoint`` exists, restore it first and continue from its epoch (the result
            is bit-identical to an uninterrupted run).

        Returns
        -------
        dict of str to list
            The history: per epoch ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``
            (NaN without validation), ``time`` (seconds of training and validation), and
            ``kernel_time`` when profiling.

        Raises
        ------
        ValueError
            Bad shapes, labels out of range, NaN or inf in the inputs (naming the sample),
            a bad epochs or batch_size, a model with BatchNorm layers and batches of one row
            (batch_size=1 or N = 1), a checkpoint of another model; all raised before any
            training.
        TypeError
            X or y is not an array-like of numbers, y does not hold integers.
        OSError
            The checkpoint folder does not exist or is not writable.

        Notes
        -----
        With ``comm`` (collective): every rank passes the same arguments (checked: a rank whose
        data, epochs, batch_size or shuffle differ makes every rank raise); training starts
        from rank 0's state (parameters, optimizer, dropout keys: the checkpoint on resume);
        only rank 0 touches the checkpoint file.

        An exception inside an epoch (Ctrl-C included) leaves that epoch's updates so far in
        the model and the optimizer, but not in ``epoch`` or the history; the next ``fit``
        warns (RuntimeWarning). A checkpoint written after every epoch gives the exact
        continuation: ``fit(..., checkpoint=path, resume=True)`` or ``load_checkpoint(path)``.
        """
        import os
        error, summary = None, []
        try:
            if (isinstance(epochs, (bool, np.bool_))
                    or not isinstance(epochs, numbers.Integral) or epochs < 0):
                raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
            batch_size = _check_batch_size(batch_size)
            X, y = self._check_data(X, y, "X", "y")
            if self._has_batch_norm() and (len(X) == 1 or batch_size == 1):
                raise ValueError(
                    "the model has BatchNorm layers, which cannot train on a batch of one row "
                    "(the variance of one value is undefined): "
                    + ("X has a single sample" if len(X) == 1 else "batch_size=1")
                    + "; use more samples per batch, or a model without BatchNorm")
            summary = [epochs, batch_size, bool(shuffle), *_fingerprint(X, y)]
            if validation is not None:
                if len(validation) != 2:
                    raise ValueError("validation must be a pair (X_val, y_val)")
                Xv, yv = self._check_data(validation[0], validation[1], "X_val", "y_val")
                summary += _fingerprint(Xv, yv)
            summary += [checkpoint is not None, bool(resume)]
        except Exception as exc:
            if self.comm is None:
                raise
            error = exc
        self._check_same_everywhere(error, summary + [0] * (16 - len(summary)), "fit")
        self._has_validation = validation is not None

        def read_checkpoint(path):
            path = _ckpt.check_writable(path)
            if not (resume and os.path.exists(path)):
                return path, None
            # the whole checkpoint is checked here, before any callback or state changes
            return path, self._check_state(_ckpt.load(path, self._state_spec()))

        plan = None
        if checkpoint is not None:
            # rank 0 checks the folder and reads the file; the others get (None, None)
            checkpoint, plan = self._root_call(lambda: read_checkpoint(checkpoint),
                                               "opening the checkpoint") or (checkpoint, None)
        # kept until every on_train_begin has run: a hook that raises (a monitor this fit does
        # not produce) must not lose the loaded state for the next fit
        loaded = self._loaded_callbacks
        LRScheduler.check_callbacks(self.callbacks)   # before any callback's state changes
        for cb in self.callbacks:
            cb.on_train_begin(self)
        if self.comm is None or self.is_root:
            if plan is not None:
                self._apply_state(plan)
            elif loaded is not None:   # a state loaded before this fit: its callbacks resume
                for cb, sub in loaded[0]:
                    cb.load_state_dict(sub)
                self.stop_training = loaded[1]
            else:
                self.stop_training = False
        if self.comm is not None:
            # every rank starts from rank 0's state (its checkpoint or its fresh state)
            from_root = self._dist().broadcast_object(
                self.state_dict() if self.is_root else None, self.comm)
            if not self.is_root:
                self.load_state_dict(from_root)
            del from_root
        self._loaded_callbacks = None   # what this fit loaded is in use now
        bar = None
        if self.verbose == 1 and self.is_root:
            try:
                from tqdm.auto import tqdm
                bar = tqdm
            except ImportError:
                bar = None
        if self._partial_epoch is not None:   # (a checkpoint just applied has cleared it)
            warnings.warn(f"the fit before was interrupted in epoch {self._partial_epoch + 1}: "
                          "the model holds that epoch's partial updates, which the epoch count "
                          "and the history do not show; for an exact continuation load the "
                          "last checkpoint (fit(..., checkpoint=path, resume=True) or "
                          "load_checkpoint)", RuntimeWarning, stacklevel=2)
        self._partial_epoch = None
        running = None   # the epoch being trained, until its history entry is written
        # the settings fit changes for its run, each undone in the finally below once made
        quiet = []   # non-root ranks: callbacks print nothing
        profiling = limits = None
        try:
            if not self.is_root:
                quiet = [cb for cb in self.callbacks if getattr(cb, "verbose", False)]
                for cb in quiet:
                    cb.verbose = False
            if self.profile:
                kernels.enable_profiling()
                profiling = True
            entering = _thread_limits(self.threads, self.backend)
            entering.__enter__()
            limits = entering
            while self.epoch < epochs and not self.stop_training:
                epoch = running = self.epoch
                t0 = time.perf_counter()
                kernels.reset_timings()
                progress = None
                if bar is not None:
                    progress = bar(total=len(self._batches(len(X), batch_size)), leave=True,
                                   file=sys.stderr,
                                   desc=f"epoch {epoch + 1}/{epochs}", dynamic_ncols=True)
                loss, acc = self.train_epoch(X, y, batch_size, shuffle, progress)
                logs = {"loss": loss, "accuracy": acc}
                if validation is not None:
                    ev = self.evaluate(Xv, yv, checked=True)
                    logs["val_loss"], logs["val_accuracy"] = ev["loss"], ev["accuracy"]
                else:
                    logs["val_loss"] = logs["val_accuracy"] = math.nan
                logs["time"] = time.perf_counter() - t0
                if self.profile:
                    logs["kernel_time"] = kernels.total_time()
                    self.history.setdefault("kernel_time", [])
                for k, v in logs.items():
                    self.history[k].append(v)
                running = None   # the epoch is complete: count, weights and history agree
                if progress is not None:
                    progress.set_postfix({k: f"{v:.4f}" for k, v in logs.items()
                                          if k != "time" and not math.isnan(v)})
                    progress.close()
                elif self.verbose >= 2 and self.is_root:
                    print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(
                        f"{k} {v:.4f}" for k, v in logs.items() if not math.isnan(v)))
                for cb in self.callbacks:
                    cb.on_epoch_end(self, epoch, logs)
                if self.comm is not None:   # rank 0 decides (the ranks' logs agree anyway)
                    self.stop_training = self._dist().decide(self.stop_training, self.comm)
                if checkpoint is not None:
                    self.save_checkpoint(checkpoint)
            for cb in self.callbacks:
                cb.on_train_end(self)
        except BaseException:
            if running is not None:
                self._partial_epoch = running
            raise
        finally:
            if limits is not None:
                limits.__exit__(None, None, None)
            if profiling:
                kernels.disable_profiling()
            for cb in quiet:
                cb.verbose = True
        return self.history

    # -- inference ------------------------------------------------------------------------
    def predict(self, X, batch_size=512):
        """Logits of X in evaluation mode (the model's mode is restored afterwards).

        Parameters
        ----------
        X : array (N, F)
            Or an array-like (converted with ``np.asarray``).
        batch_size : int
            >= 1.

        Returns
        -------
        array (N, K)
            A new array (on X's device).

        Raises
        ------
        ValueError
            A bad batch_size; X not 2-D or with another number of features than the model's.

        Notes
        -----
        Local even with ``comm`` (no communication): each rank predicts the rows it is given
        (the weights and running statistics are identical on every rank).
        """
        batch_size = _check_batch_size(batch_size)
        if self.ema is not None and self.eval_with_ema and not self._ema_swapped:
            with self.ema_weights():
                return self.predict(X, batch_size)
        X = self._as_array(X, "X")
        xp = array_module(X)
        X = xp.ascontiguousarray(X, dtype=self._params[0].dtype)
        if X.ndim != 2 or X.shape[1] != self.model.in_features:
            raise ValueError(f"X must have shape (samples, {self.model.in_features}), got "
                             f"{X.shape}")
        was_training = self.model.training
        self.model.eval()
        try:
            out = xp.empty((len(X), self.model.out_features), X.dtype)
            for start in range(0, len(X), batch_size):
                out[start:start + batch_size] = self.model.forward(X[start:start + batch_size])
        finally:
            self.model.train(was_training)
        return out

    def evaluate(self, X, y, batch_size=512, checked=False):
        """Mean loss and accuracy of (X, y) in evaluation mode.

        Parameters
        ----------
        X : array (N, F)
        y : integer array (N,)
            Array-likes are converted with ``np.asarray``.
        batch_size : int
            >= 1.
        checked : bool
            Skip the input checks (``fit`` has done them).

        Returns
        -------
        dict
            ``{"loss": float, "accuracy": float}``.

        Notes
        -----
        With ``comm`` (collective): every rank passes the same (X, y); each evaluates its
        block of the rows and the sums are reduced, so every rank returns the same numbers.
        """
        batch_size = _check_batch_size(batch_size)
        if self.comm is None:
            if not checked:
                X, y = self._check_data(X, y, "X", "y")
            logits = self.predict(X, batch_size)
            loss = cross_entropy(logits, y, grad=False, backend=self.backend)
            correct = _correct(logits, y)
            return {"loss": loss, "accuracy": correct / len(X)}
        if not checked:
            error, summary = None, []
            try:
                X, y = self._check_data(X, y, "X", "y")
                summary = _fingerprint(X, y)
            except Exception as exc:
                error = exc
            self._check_same_everywhere(error, summary or [0, 0, 0, 0], "evaluate")
        block = self._dist().shard(len(X), self.rank, self.world_size)
        loss_sum, correct = 0.0, 0
        if block.stop > block.start:
            logits = self.predict(X[block], batch_size)
            loss_sum = cross_entropy(logits, y[block], reduction="sum", grad=False,
                                     backend=self.backend)
            correct = _correct(logits, y[block])
        loss_sum, correct = self._sum([loss_sum, correct])
        return {"loss": float(loss_sum) / len(X), "accuracy": float(correct) / len(X)}


@contextlib.contextmanager
def _thread_limits(threads, backend):
    """Inside the block, fastreg's kernels use at most ``threads`` threads on either host
    backend (``fastreg.threads``, this Python thread), and BLAS and OpenMP libraries too,
    through threadpoolctl when it is installed; all restored on exit. None: a no-op. (backend
    is not needed: ``fastreg.threads`` governs Numba and C alike.)"""
    del backend
    if threads is None:
        yield
        return
    threads = _threads.check_count(threads, "threads")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    with _threads.threads(threads):
        if threadpool_limits is None:
            yield
        else:
            with threadpool_limits(limits=threads):
                yield


def _correct(logits, labels):
    """How many rows' argmax equal their label."""
    return int((logits.argmax(axis=1) == labels).sum()) if len(labels) else 0


def _optimizer_state_names(optimizer):
    """The per-parameter state a fastreg optimizer holds for every parameter once it has
    stepped (it creates it at the first step); None for an optimizer this trainer does not
    know (its own ``load_state_dict`` checks are then the only ones)."""
    from .. import optim
    if isinstance(optimizer, optim.SGD):
        return {"momentum_buffer"} if optimizer.momentum != 0 else set()
    if isinstance(optimizer, optim.Adam):       # AdamW too
        return {"exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if optimizer.amsgrad else set())
    return None


def _fingerprint(X, y):
    """Four numbers that differ (almost surely) when two ranks hold different data: the shape
    and CRC-32s of up to ~4096 evenly spaced rows of X and of y."""
    import zlib
    step = max(1, len(X) // 4096)
    xs = np.ascontiguousarray(to_host(X[::step]))
    ys = np.ascontiguousarray(to_host(y[::step]))
    return [len(X), X.shape[1], zlib.crc32(xs.view(np.uint8)),
            zlib.crc32(ys.view(np.uint8))]


def _same_memory(a, b):
    """True when a and b are views of the same memory (the optimizer may hold views)."""
    try:
        return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
                and a.shape == b.shape)
    except AttributeError:
        return False
