"""nn.Modules backed by fastreg kernels: counter-based dropout and batch norm.

Dropout modules own a 64-bit ``seed`` and a 64-bit ``offset`` (the position in the Philox
stream). Every training call uses words ``offset .. offset + draws - 1`` and advances ``offset``
by ``draws`` (elements for ``Dropout``, (sample, channel) pairs for ``Dropout1d/2d/3d``, samples
for ``DropPath``), so no draw repeats, backward regenerates the mask from ``(seed, offset)`` and
nothing is stored. The counter is a non-persistent int64 buffer (a graph input under
``torch.compile``: compiled graphs do not depend on its value), the seed a Python int; neither
is a state_dict key, so a converted model's state_dict loads with ``strict=True`` into the
original torch model and back. Both travel in the state_dict's metadata
(``state_dict._metadata``, which ``torch.save``/``torch.load`` keep), so a resumed run continues
the same random stream; a torch state_dict without them loads too (the module keeps its own
seed and counter). On CUDA the counter lives on the GPU with the module: a training call reads
it (one small copy to the host, beside the synchronization the CUDA bridge does anyway).

Batch-norm modules subclass ``torch.nn.BatchNorm1d`` / ``BatchNorm2d`` / ``BatchNorm3d``: same
constructor, parameters (``weight``, ``bias``) and buffers (``running_mean``, ``running_var``,
``num_batches_tracked``), so state_dicts load either way and ``isinstance`` checks still hold;
only ``forward`` runs fastreg. ``BatchNormReLU2d`` has the same parameters and buffers but is
deliberately *not* an ``nn.BatchNorm2d`` (nor a ``_BatchNorm``): tools that find batch-norm
layers by ``isinstance`` and replace them (``nn.SyncBatchNorm.convert_sync_batchnorm``,
``torch.utils.mkldnn.to_mkldnn``, timm's ``freeze_batch_norm_2d``) would drop its ReLU; they
leave it alone instead. ``frt.SyncBatchNorm.convert_sync_batchnorm`` converts it (ReLU kept).
"""
import warnings

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .. import _arrays
from ..dropout import MODES
from . import _bridge
from . import functions, ops

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "DropPath", "BatchNorm1d",
           "BatchNorm2d", "BatchNorm3d", "BatchNormReLU2d"]

_U64 = 1 << 64
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
# training calls whose offsets a module remembers for activation checkpointing's recomputation
# (see _CounterDropout._advance): more than the calls of one step in any model
_REPLAYS = 4096
# the autograd engine's current backward pass (-1 outside one); a private torch function, so
# looked up once (without it, a recomputation is not recognised: the behaviour before)
_GRAPH_TASK = getattr(torch._C, "_current_graph_task_id", None)

# torch.nn.functional.dropout2d's warning for 3-D input (torch 2.x), word for word
_DROPOUT2D_3D_WARNING = (
    "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
    "behavior is desired - input is interpreted as shape (N, C, L), where C is the channel "
    "dim. This behavior will change in a future release to interpret the input as one without "
    "a batch dimension, i.e. shape (C, H, W). To maintain the 1D channel-wise dropout "
    "behavior, please switch to using dropout1d instead.")

# torch.nn.functional.dropout1d/2d/3d's messages for inputs of other ranks (torch 2.13)
_DROPOUT1D_RANK_ERROR = (
    "dropout1d: Expected 2D or 3D input, but received a {}D input. Note that dropout1d exists "
    "to provide channel-wise dropout on inputs with 1 spatial dimension, a channel dimension, "
    "and an optional batch dimension (i.e. 2D or 3D inputs).")
_DROPOUT_ND_RANK_WARNING = (
    "dropout{n}d: Received a {dim}-D input to dropout{n}d, which is deprecated and will result "
    "in an error in a future release. To retain the behavior and silence this warning, please "
    "use dropout instead. Note that dropout{n}d exists to provide channel-wise dropout on inputs "
    "with {n} spatial dimensions, a channel dimension, and an optional batch dimension (i.e. "
    "{lo}D or {hi}D inputs).")
_FEATURE_DROPOUT_ERROR = "Feature dropout requires at least 2 dimensions in the input"

_META_SEED, _META_OFFSET = "fastreg_seed", "fastreg_offset"
_ABSENT = object()


def new_seed():
    """A 64-bit seed from torch's default generator (so ``torch.manual_seed`` makes module
    seeds reproducible)."""
    hi, lo = torch.randint(0, 1 << 32, (2,), dtype=torch.int64).tolist()
    return (hi << 32) | lo


def _check_in_place_allowed(x):
    """torch's refusal of an in-place op on a leaf that requires grad (or a view of one),
    raised before any work: the stream counter then stays where it was."""
    base = x._base
    if x.requires_grad and x.is_leaf:
        raise RuntimeError("a leaf Variable that requires grad is being used in an in-place "
                           "operation.")
    if base is not None and base.requires_grad and base.is_leaf:
        raise RuntimeError("a view of a leaf Variable that requires grad is being used in an "
                           "in-place operation.")


class _CounterDropout(nn.Module):
    """Shared by the dropout modules: hyper-parameters, the (seed, offset) state, train/eval.

    Where the stream state lives (so that compiled graphs do not recompile at every step, and a
    converted model's state_dict loads with ``strict=True`` into the original torch model and
    back): the counter is a non-persistent int64 buffer ``_offset`` (the uint64 value's bits),
    advanced in place by each training call, a graph input under ``torch.compile``; the seed is a
    Python int (constant for the graph). Neither is a state_dict key (``nn.Dropout`` has none);
    both travel in the state_dict's metadata (``state_dict._metadata[<module name>]``, kept by
    ``torch.save``/``torch.load``, ``copy.deepcopy`` and ``load_state_dict``), so checkpoints
    resume the same stream.
    """

    _KIND = "element"

    def __init__(self, p=0.5, inplace=False, *, mode="inverted", seed=None, backend="auto"):
        super().__init__()
        self.p = _arrays.check_probability(p)
        self.inplace = _arrays.check_bool(inplace, "inplace")
        self.mode = _arrays.check_choice(mode, "mode", MODES)
        self.seed = new_seed() if seed is None else _arrays.check_uint64(seed, "seed")
        self.backend = backend
        self.register_buffer("_offset", torch.zeros((), dtype=torch.int64), persistent=False)

    @property
    def offset(self):
        """The stream position of the next training call, an int in [0, 2**64)."""
        return ops.to_uint64(int(self._offset))

    @offset.setter
    def offset(self, value):
        self._offset.fill_(ops.to_int64(_arrays.check_uint64(value, "offset")))

    def extra_repr(self):
        inplace = ", inplace=True" if self.inplace else ""
        return f"p={self.p}{inplace}, mode={self.mode!r}, seed={self.seed}, offset={self.offset}"

    def _prepare(self, x):
        """torch's rank rules for this module: ``(x to process, whether a batch axis was
        added)``; raises or warns as torch does."""
        if self._KIND == "path" and x.dim() < 1:
            raise ValueError("DropPath needs a sample axis (ndim >= 1), got a 0-d tensor")
        return x, False

    def _draws(self, x):
        if self._KIND == "element":
            return x.numel()
        if self._KIND == "channel":
            return x.shape[0] * x.shape[1]
        return x.shape[0]

    def forward(self, x):
        """Dropout of x in training (advancing the counter), the mode's scaling in eval.

        Parameters
        ----------
        x : torch.Tensor, float32 or float64, CPU or CUDA

        Returns
        -------
        torch.Tensor
            A new tensor in x's memory format, or x itself where torch returns it (eval in
            inverted mode, p = 0, and always when ``inplace=True``: x then holds the result).
        """
        # in eval the inverted modules are the identity for any dtype, as torch's (after the
        # rank checks of _prepare, which torch makes in eval too)
        identity = (not self.training and (self.mode == "inverted" or self.p == 0)
                    and isinstance(x, torch.Tensor))
        if not identity and (torch.compiler.is_compiling() or not (
                type(x) is torch.Tensor and x.layout == torch.strided
                and _bridge.host_float(x))):
            _bridge.check_float(x, f"{type(self).__name__} input", half=True)
        original = x
        x, added = self._prepare(x)
        if not self.training:
            if self.mode == "inverted" or self.p == 0:
                return original
            if self.inplace:
                return original.mul_(1.0 - self.p)
            y = x * (1.0 - self.p)
            return y.squeeze(0) if added else y
        if self._KIND == "channel" and x.dim() < 2:
            # torch's feature dropout returns the input at p = 0 and zeros at p = 1 before it
            # needs a channel axis (fastreg's dropped elements are +0.0: zero_, not mul_(0))
            if self.p == 0:
                return original
            if self.p == 1:
                return original.zero_() if self.inplace else torch.zeros_like(original)
            raise RuntimeError(_FEATURE_DROPOUT_ERROR)
        if self.inplace and torch.is_grad_enabled():
            _check_in_place_allowed(original)   # before the counter moves (torch would refuse)
        y = self._advance(x, self._draws(x), self._drop)
        if self.inplace:
            if y is not x:
                x.copy_(y)
            return original
        return y.squeeze(0) if added else y

    def _drop(self, x, offset):
        """The training call's kernel at stream position ``offset`` (an int64 tensor while
        compiling, a Python int in eager mode)."""
        if torch.compiler.is_compiling():
            return ops.dropout(x, offset, ops.to_int64(self.seed), self.p, True, self.mode,
                               self._KIND, False, self.backend)[0]
        if not (x.requires_grad and torch.is_grad_enabled()):  # nothing to record: 20 us less
            return ops.dropout_run(x, self.seed, offset, self.p, True, self.mode, self._KIND,
                                   False, self.backend)
        return functions.DropoutFunction.apply(x, self.p, self.seed, offset, True, self.mode,
                                               self._KIND, self.backend)

    def _advance(self, x, draws, kernel):
        """``kernel(x, offset)`` at the counter's position (x itself when p = 0), then the counter
        advanced by ``draws``; a refused call leaves it as it was."""
        if torch.compiler.is_compiling():
            # the counter stays a graph input: the graph does not depend on its value
            y = x if self.p == 0 else kernel(x, self._offset)
            self._offset.add_(draws)
            return y
        # Activation checkpointing (torch.utils.checkpoint, either variant) runs the forward
        # again during the backward pass, after restoring torch's CPU RNG state; the mask must
        # be the first run's. So each training call draws one word from torch's CPU generator
        # (as nn.Dropout draws its mask there) and remembers its offset under that word; a call
        # made inside a backward pass that draws a remembered word is such a recomputation: it
        # takes that offset again, and the counter does not move.
        # An entry is [offset, recomputed, ambiguous]: two calls that start from the same RNG
        # state (torch.manual_seed before each micro-batch) draw the same word; while the first
        # has not been recomputed, the recomputation could not tell them apart, and raises.
        key = int(torch.randint(_I64_MIN, _I64_MAX, (), dtype=torch.int64))
        replays = self.__dict__.get("_replays")
        if replays is None:
            replays = self.__dict__["_replays"] = {}
        entry = replays.get(key)
        if entry is not None and _GRAPH_TASK is not None and _GRAPH_TASK() != -1:
            # inside a backward pass, a remembered word: a recomputation
            if entry[2]:
                raise RuntimeError(
                    f"{type(self).__name__}: two training calls started from the same torch "
                    "RNG state (torch.manual_seed between them?) and one is recomputed by "
                    "activation checkpointing: fastreg cannot tell which mask it used. Seed "
                    "torch once, or give each call its own module")
            entry[1] = True
            return x if self.p == 0 else kernel(x, entry[0])
        counter = self._buffers["_offset"]  # self._offset: nn.Module.__getattr__, 1.7 us
        view = self._counter_view(counter)
        offset = (counter.item() if view is None else int(view)) & (_U64 - 1)  # to_uint64
        if offset + draws >= _U64:  # the counter must not wrap to 0 (a repeated stream)
            raise ValueError(f"offset + number of draws ({offset} + {draws}) reaches 2**64: "
                             "the module's 64-bit stream counter would wrap")
        y = x if self.p == 0 else kernel(x, offset)
        if view is None:
            counter.fill_(ops.to_int64(offset + draws))  # fill_: 3x cheaper than add_ here
        else:
            view[()] = ops.to_int64(offset + draws)
        if entry is not None and not entry[1]:
            entry[2] = True        # a second call from the same RNG state: see above
        else:
            if len(replays) >= _REPLAYS:   # the oldest goes (dicts keep insertion order)
                del replays[next(iter(replays))]
            replays[key] = [offset, False, False]
        return y

    def _counter_view(self, counter):
        """The NumPy view of a CPU counter (None on CUDA): reading and writing it costs 0.3 us
        where ``item()`` and ``fill_`` cost 3 and 2-6. Kept while the buffer is the same tensor
        with the same memory (``.to()`` / ``load`` / ``deepcopy`` give a new one, which gets a
        new view); never pickled or copied (``__getstate__``)."""
        cache = self.__dict__.get("_counter_cache")
        if cache is not None and cache[0] is counter and cache[1] == counter.data_ptr():
            return cache[2]
        view = counter.numpy() if counter.is_cpu else None
        self.__dict__["_counter_cache"] = (counter, counter.data_ptr(), view)
        return view

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_counter_cache", None)
        state.pop("_replays", None)
        return state

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None:
            metadata.setdefault(prefix[:-1], {}).update(
                {_META_SEED: self.seed, _META_OFFSET: self.offset})

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        state = None
        if _META_SEED in local_metadata:
            state = {"seed": local_metadata[_META_SEED],
                     "offset": local_metadata[_META_OFFSET]}
        legacy = prefix + "_extra_state"  # where older checkpoints kept them
        if legacy in state_dict:
            state = state_dict[legacy]
            if legacy in unexpected_keys:
                unexpected_keys.remove(legacy)
        if state is None:  # a torch nn.Dropout's state_dict: keep our own stream
            return
        if not isinstance(state, dict) or set(state) != {"seed", "offset"}:
            error_msgs.append(f"{type(self).__name__}: the stream state must be a dict with "
                              f"'seed' and 'offset', got {state!r}")
            return
        try:
            seed = _arrays.check_uint64(state["seed"], "seed")
            offset = _arrays.check_uint64(state["offset"], "offset")
        except (TypeError, ValueError) as exc:
            error_msgs.append(f"{type(self).__name__}: {exc}")
            return
        self.seed, self.offset = seed, offset


class _ChannelDropout(_CounterDropout):
    """Dropout1d/2d/3d: torch's rank rules (``torch.nn.functional.dropout{n}d``)."""

    _KIND = "channel"
    _N = None  # spatial dimensions

    def _prepare(self, x):
        n, dim = self._N, x.dim()
        if n == 1 and dim not in (2, 3):
            raise RuntimeError(_DROPOUT1D_RANK_ERROR.format(dim))
        if n > 1 and dim not in (n + 1, n + 2):
            warnings.warn(_DROPOUT_ND_RANK_WARNING.format(n=n, dim=dim, lo=n + 1, hi=n + 2),
                          UserWarning, stacklevel=3)
        if n == 2:
            # torch reads 3-D input as batched (N, C, L) (1-D channel dropout), never adds a
            # batch axis, and warns about it
            if dim == 3:
                warnings.warn(_DROPOUT2D_3D_WARNING, UserWarning, stacklevel=3)
            return x, False
        if dim == n + 2:
            return x, False
        return x.unsqueeze(0), True


class Dropout(_CounterDropout):
    """Element-wise dropout (``torch.nn.Dropout``) with a counter-based Philox mask.

    Parameters
    ----------
    p : float
        Drop probability in [0, 1].
    inplace : bool
        As in torch: the result is written into the input, which is returned.
    mode : {"inverted", "classic"}
        Keyword only. As in ``fastreg.dropout``; "inverted" is torch's convention.
    seed : int, optional
        Keyword only. Key of the stream in [0, 2**64); default: drawn from torch's default
        generator.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
        Keyword only.

    Returns
    -------
    Dropout
        Call it on a tensor; in training, call k uses stream words ``offset .. offset + numel``
        and the result equals ``fastreg.dropout(x, p, seed=seed, offset=offset)``.
    """


class Dropout1d(_ChannelDropout):
    """Channel dropout of (N, C, L) input (``torch.nn.Dropout1d``); (C, L) is one sample.

    Parameters
    ----------
    p, inplace, mode, seed, backend
        As in ``Dropout``. Call k uses words ``offset .. offset + N * C``.

    Returns
    -------
    Dropout1d

    Notes
    -----
    Input of another rank raises torch's RuntimeError.
    """

    _N = 1


class Dropout2d(_ChannelDropout):
    """Channel dropout of (N, C, H, W) input (``torch.nn.Dropout2d``), channels-last included.

    Parameters
    ----------
    p, inplace, mode, seed, backend
        As in ``Dropout``. Call k uses words ``offset .. offset + N * C``, channel (n, c) word
        ``offset + n * C + c``, in either memory format.

    Returns
    -------
    Dropout2d

    Notes
    -----
    3-D input is read as torch reads it: batched ``(N, C, L)``, one draw per (n, c) (1-D
    channel dropout, as ``Dropout1d``), not as an unbatched ``(C, H, W)`` sample; torch warns
    about it (its meaning may change in a future torch) and so does this module, with torch's
    message. Use ``Dropout1d`` for (N, C, L) input, or add the batch axis to a (C, H, W) one.
    Other ranks warn as in torch (deprecated) and are processed as torch does: axis 0 samples,
    axis 1 channels (0-D and 1-D input then raise torch's RuntimeError in training).
    """

    _N = 2


class Dropout3d(_ChannelDropout):
    """Channel dropout of (N, C, D, H, W) input (``torch.nn.Dropout3d``).

    Parameters
    ----------
    p, inplace, mode, seed, backend
        As in ``Dropout2d``.

    Returns
    -------
    Dropout3d

    Notes
    -----
    Other ranks than 4 (unbatched) and 5 warn as in torch (deprecated) and are processed as
    torch does: as one unbatched sample whose axis 0 is the channel axis.
    """

    _N = 3


class DropPath(_CounterDropout):
    """Drop path / stochastic depth: each sample of the batch kept or zeroed as a whole.

    Parameters
    ----------
    p, inplace, mode, seed, backend
        As in ``Dropout``. Call k uses words ``offset .. offset + N``.

    Returns
    -------
    DropPath
        Typically applied to a residual branch: ``x + drop_path(block(x))``.
    """

    _KIND = "path"


class _FastregBatchNorm:
    """The fastreg forward shared by the batch-norm modules (mixed into torch's classes)."""

    _RELU = False

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True,
                 backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)
        self.backend = backend

    def forward(self, x):
        """Normalize x (see the class docstring).

        Parameters
        ----------
        x : torch.Tensor of the class's rank (channels at axis 1); float32 or float64 with the
            module's dtype and device, or float16/bfloat16 with float32 parameters (autocast)
            or with parameters and statistics of x's own dtype (``model.bfloat16()``)

        Returns
        -------
        torch.Tensor
        """
        return self._fastreg_forward(x)

    def _tensors(self):
        """(weight, bias, running_mean, running_var, num_batches_tracked), read from the
        parameter and buffer dicts (``self.weight`` goes through nn.Module.__getattr__, 1.7 us a
        read); a name found in neither (set as a plain attribute) is read as an attribute.
        While dynamo traces, the attributes (what it knows how to trace)."""
        if torch.compiler.is_compiling():
            return (self.weight, self.bias, self.running_mean, self.running_var,
                    self.num_batches_tracked)
        params, buffers = self._parameters, self._buffers
        try:
            return (params["weight"], params["bias"], buffers["running_mean"],
                    buffers["running_var"], buffers["num_batches_tracked"])
        except KeyError:
            pass
        out = []
        for d, name in ((params, "weight"), (params, "bias"), (buffers, "running_mean"),
                        (buffers, "running_var"), (buffers, "num_batches_tracked")):
            t = d.get(name, _ABSENT)
            out.append(getattr(self, name, None) if t is _ABSENT else t)
        return tuple(out)

    def _fastreg_forward(self, x, residual=None):
        w, b, running_mean, running_var, num_batches_tracked = self._tensors()
        self._check_args(x, residual, (w, b, running_mean, running_var, num_batches_tracked))
        # torch's rules (nn.modules.batchnorm._BatchNorm.forward): batch statistics in training
        # or without running statistics; the running ones are updated when tracked in training.
        training = self.training
        use_batch = training or (running_mean is None and running_var is None)
        pass_running = not training or self.track_running_stats
        rm = running_mean if pass_running else None
        rv = running_var if pass_running else None
        if x.numel() == 0:
            return self._empty_forward(x, residual, rm, rv, use_batch)
        nbt = None
        if training and self.track_running_stats and rm is not None:
            nbt = num_batches_tracked
        momentum = self.momentum
        if momentum is None and nbt is None:
            momentum = 0.0  # nothing is updated: the value does not matter
        host = None
        if not torch.compiler.is_compiling() and _bridge.host_float(x):
            host = self._host_views((w, b, rm, rv, nbt))
        return functions.batch_norm_call(x, w, b, residual, rm, rv, nbt, use_batch, momentum,
                                         self.eps, self._RELU, getattr(self, "backend", "auto"),
                                         host)

    def _host_views(self, tensors):
        """``_bridge.host_array`` of the per-channel tensors (weight, bias, running_mean,
        running_var, num_batches_tracked; None stays None), kept between calls: 1 us a tensor
        where a new view costs 2.5-3.5. A view is re-made when its tensor is another object, or
        has other memory or another shape (a ``.data`` assignment, ``.to()``, a load); the old
        view keeps the old memory alive, so an equal address is the same memory. Never pickled
        or copied (``__getstate__``)."""
        cache = self.__dict__.get("_host_cache")
        if cache is not None and cache[0] == tuple(map(id, tensors)):
            # the same objects (the cache holds them: their ids are not reused); memory, shape
            for t, key in zip(tensors, cache[1]):
                if t is not None and (key[0] != t.data_ptr() or key[1] != t.shape):
                    break
            else:
                return cache[2]
        keys = tuple(None if t is None else (t.data_ptr(), t.shape) for t in tensors)
        # views of detached tensors: they hold the memory even if t is given other memory
        views = tuple(None if t is None else _bridge.host_array(t.detach()) for t in tensors)
        self.__dict__["_host_cache"] = (tuple(map(id, tensors)), keys, views, tensors)
        return views

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_host_cache", None)
        return state

    def _check_args(self, x, residual, tensors=None):
        """The input's and the module's tensors (``tensors``: ``_tensors()``, read when not
        given): dtype, rank, device and shape."""
        if tensors is None:
            tensors = self._tensors()
        if (type(x) is torch.Tensor and not torch.compiler.is_compiling()
                and x.layout == torch.strided and _bridge.host_float(x)):
            # the common eager case, a dense float32/float64 CPU input: every check below passes
            # when the module's tensors are CPU tensors of x's dtype (the counter: on the CPU)
            self._check_input_dim(x)
            dt = x.dtype
            w, b, rm, rv, nbt = tensors
            if ((w is None or (w.is_cpu and w.dtype is dt))
                    and (b is None or (b.is_cpu and b.dtype is dt))
                    and (rm is None or (rm.is_cpu and rm.dtype is dt))
                    and (rv is None or (rv.is_cpu and rv.dtype is dt))
                    and (nbt is None or nbt.is_cpu)
                    and (residual is None or (isinstance(residual, torch.Tensor)
                                              and residual.is_cpu and residual.dtype is dt
                                              and residual.shape == x.shape))):
                return
        name = type(self).__name__
        _bridge.check_float(x, f"{name} input", half=True)
        self._check_input_dim(x)
        functions.check_bn_tensors(x, (*tensors, residual), f"{name}.", "the input")
        if residual is not None and residual.shape != x.shape:
            raise ValueError(f"{name}: residual has shape {tuple(residual.shape)}, the input "
                             f"has {tuple(x.shape)}")

    def _empty_forward(self, x, residual, rm, rv, use_batch):
        """An empty batch (N == 0, or an empty spatial axis), as torch does it: an empty output
        (in the graph: the parameters get zero gradients), the running statistics untouched,
        ``num_batches_tracked`` incremented in training. torch's own functional batch norm does
        this (there is no work for a kernel); momentum 0 keeps the running statistics as
        they are."""
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        y = nn.functional.batch_norm(x, rm, rv, self.weight, self.bias, use_batch, 0.0,
                                     self.eps)
        if residual is not None:
            y = y + residual
        return torch.relu(y) if self._RELU else y


_BN_DOC = """{what}

    A drop-in ``torch.nn.{base}``: same constructor and the same parameter and buffer names
    (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``), so a
    state_dict loads either way; ``forward`` runs ``fastreg.batch_norm`` (statistics in float64,
    running statistics and ``num_batches_tracked`` updated in place as torch does).
    {layout}

    Parameters
    ----------
    num_features : int
        C, the channel count.
    eps, momentum, affine, track_running_stats, device, dtype, bias
        As in torch (``momentum=None``: cumulative average; ``bias=False``: an affine weight
        without a bias), checked at each call as ``fastreg.batch_norm`` checks
        them, stricter than torch: ``eps`` finite and > 0, ``momentum`` in [0, 1] (ValueError).
        A refused call changes nothing: also one value per channel in training, where torch
        counts the batch in ``num_batches_tracked`` before it raises.
    backend : {{"auto", "numpy", "cpu", "c", "cuda"}}
        Keyword only; "auto" picks "cuda" for CUDA tensors and the fastest host backend that
        implements batch norm otherwise.

    Returns
    -------
    {name}
    """


class BatchNorm1d(_FastregBatchNorm, nn.BatchNorm1d):
    __doc__ = _BN_DOC.format(what="Batch norm of (N, C) or (N, C, L) input.", base="BatchNorm1d",
                             layout="", name="BatchNorm1d")


class BatchNorm2d(_FastregBatchNorm, nn.BatchNorm2d):
    __doc__ = _BN_DOC.format(
        what="Batch norm of (N, C, H, W) input.", base="BatchNorm2d",
        layout="Channels-last input is normalized in its own layout (no layout copy) and the "
               "output is channels-last too.", name="BatchNorm2d")


class BatchNorm3d(_FastregBatchNorm, nn.BatchNorm3d):
    __doc__ = _BN_DOC.format(
        what="Batch norm of (N, C, D, H, W) input.", base="BatchNorm3d",
        layout="Channels-last-3d input is normalized in its own layout (no layout copy) and the "
               "output is channels-last-3d too.", name="BatchNorm3d")


class BatchNormReLU2d(_FastregBatchNorm, _NormBase):
    __doc__ = _BN_DOC.format(
        what="Batch norm fused with a ReLU, ``relu(bn(x) [+ residual])``, in one pass.",
        base="BatchNorm2d",
        layout="``forward(x, residual=None)`` adds the residual before the ReLU (the fused "
               "BN + add + ReLU of ResNet blocks). Backward recomputes the ReLU mask from the "
               "output.\n\n    Not an ``nn.BatchNorm2d`` instance (it is one followed by a ReLU): "
               "tools that replace batch-norm layers found by ``isinstance`` (torch's "
               "``nn.SyncBatchNorm.convert_sync_batchnorm``, ``torch.utils.mkldnn``, timm's "
               "``freeze_batch_norm_2d``) would silently drop the ReLU, so they leave it alone; "
               "``frt.SyncBatchNorm.convert_sync_batchnorm`` synchronizes it with the ReLU kept. "
               "(``torch.optim.swa_utils.update_bn`` skips it too: reset its running statistics "
               "yourself.)", name="BatchNormReLU2d")

    _RELU = True

    def _check_input_dim(self, x):
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")

    def forward(self, x, residual=None):
        """``relu(bn(x) + residual)``.

        Parameters
        ----------
        x : torch.Tensor (N, C, H, W)
        residual : torch.Tensor like x, optional

        Returns
        -------
        torch.Tensor
        """
        return self._fastreg_forward(x, residual)
