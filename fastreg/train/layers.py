"""Layers of the minimal trainer: Linear, ReLU, Dropout, BatchNorm, Sequential, and the loss.

Each layer has ``forward(x)`` and ``backward(grad_y) -> grad_x``; a layer keeps what its backward
needs from the last forward (its input or output, never a dropout mask: the mask is regenerated
from ``(seed, offset)``). Gradients of the parameters land in ``layer.grads`` (arrays owned by
the layer, overwritten by each backward), parallel to ``layer.params``.

Outputs are written into buffers the layer owns and reuses while the batch shape stays the same,
so a training step allocates almost nothing: a returned array is valid until the layer's next
call. Copy it to keep it.

Array maths goes through ``xp = array_module(x)`` (NumPy or CuPy); the regularization steps are
fastreg's kernels, called through ``fastreg.train.kernels`` so that they can be timed.
"""
import math

import numpy as np

from .. import _arrays
from ..batchnorm import _check_eps
from . import kernels
from ._xp import array_module

DROPOUT_MODES = ("inverted", "classic")


class Module:
    """Base class: parameters, buffers, train/eval mode, reusable output buffers.

    Subclasses set ``self.params`` / ``self.grads`` (lists of arrays, same order) and
    ``self.param_names``; ``self.buffer_names`` name extra state arrays (attributes) saved in
    checkpoints (batch-norm running statistics).
    """

    def __init__(self):
        self.training = True
        self.params, self.grads, self.param_names = [], [], []
        self.buffer_names = []
        self.backend = "auto"
        self.comm = None
        self._bufs = {}

    # -- modes ----------------------------------------------------------------------------
    def train(self, mode=True):
        """Switch to training mode (``mode=True``) or evaluation mode; returns self.

        Parameters
        ----------
        mode : bool

        Returns
        -------
        Module
        """
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        """Switch to evaluation mode (``train(False)``); returns self.

        Parameters
        ----------
        None

        Returns
        -------
        Module
        """
        return self.train(False)

    def children(self):
        """Sub-modules (none for a plain layer)."""
        return []

    def set_backend(self, backend):
        """Use ``backend`` for every fastreg call of this module and its children."""
        self.backend = backend
        for child in self.children():
            child.set_backend(backend)

    def set_comm(self, comm):
        """Synchronize batch norm over ``comm`` (an mpi4py communicator; None: local batch
        statistics) in this module and its children."""
        self.comm = comm
        for child in self.children():
            child.set_comm(comm)

    def set_row_window(self, first, total):
        """Data-parallel training: the next training forward calls see rows ``first ..
        first + len(x)`` of a global batch of ``total`` rows (random streams are keyed by the
        global row); None (``first=None``) for the whole batch. Applies to the children."""
        for child in self.children():
            child.set_row_window(first, total)

    # -- state ----------------------------------------------------------------------------
    def named_parameters(self, prefix=""):
        """``[(name, array), ...]`` of the trainable parameters."""
        return [(prefix + n, p) for n, p in zip(self.param_names, self.params)]

    def named_gradients(self, prefix=""):
        """``[(name, array), ...]`` of the gradients, parallel to ``named_parameters``."""
        return [(prefix + n, g) for n, g in zip(self.param_names, self.grads)]

    def named_buffers(self, prefix=""):
        """``[(name, array), ...]`` of non-trainable state (running statistics)."""
        return [(prefix + n, getattr(self, n)) for n in self.buffer_names]

    def rng_state(self, prefix=""):
        """``{name: int}`` of random-stream positions (dropout seeds and offsets)."""
        return {}

    def set_rng_state(self, state, prefix=""):
        """Restore what ``rng_state`` returned."""

    def parameters(self):
        """The trainable parameters (the arrays themselves: an optimizer updates them)."""
        return [p for _, p in self.named_parameters()]

    def gradients(self):
        """The gradients, parallel to ``parameters()``."""
        return [g for _, g in self.named_gradients()]

    def _buffer(self, key, shape, dtype, xp):
        """An output buffer reused while (key, shape, dtype) repeats."""
        k = (key, shape, dtype)
        buf = self._bufs.get(k)
        if buf is None:
            if len(self._bufs) > 8:      # e.g. many odd eval batch sizes: keep memory bounded
                self._bufs.clear()
            buf = self._bufs[k] = xp.empty(shape, dtype)
        return buf

    def __call__(self, x):
        return self.forward(x)


class Linear(Module):
    """Fully connected layer ``y = x @ weight + bias`` (NumPy/CuPy matmul).

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    dtype : numpy dtype
        float32 or float64.
    rng : numpy.random.Generator, optional
        For the initialization, PyTorch's default: ``U(-1/sqrt(in), 1/sqrt(in))`` for weight and
        bias.

    Returns
    -------
    Linear

    Notes
    -----
    ``weight`` has shape ``(in_features, out_features)`` (the transpose of torch's), so the
    forward pass is one row-major matmul.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        rng = np.random.default_rng(0) if rng is None else rng
        bound = 1.0 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = rng.uniform(-bound, bound, (in_features, out_features)).astype(dtype)
        self.params, self.param_names = [self.weight], ["weight"]
        if bias:
            self.bias = rng.uniform(-bound, bound, out_features).astype(dtype)
            self.params.append(self.bias)
            self.param_names.append("bias")
        else:
            self.bias = None
        self.grads = [np.zeros_like(p) for p in self.params]
        self.needs_input_grad = True   # False for a first layer: skips one matmul in backward

    def forward(self, x):
        xp = array_module(x)
        self._x = x
        y = self._buffer("y", (x.shape[0], self.out_features), x.dtype, xp)
        xp.matmul(x, self.weight, out=y)
        if self.bias is not None:
            y += self.bias
        return y

    def backward(self, grad_y):
        xp = array_module(grad_y)
        xp.matmul(self._x.T, grad_y, out=self.grads[0])
        if self.bias is not None:
            grad_y.sum(axis=0, out=self.grads[1])
        if not self.needs_input_grad:
            return None
        gx = self._buffer("gx", self._x.shape, grad_y.dtype, xp)
        xp.matmul(grad_y, self.weight.T, out=gx)
        return gx


class ReLU(Module):
    """``max(x, 0)``; the backward pass zeroes the gradient where the output is 0.

    Parameters
    ----------
    None

    Returns
    -------
    ReLU
    """

    def forward(self, x):
        xp = array_module(x)
        y = self._buffer("y", x.shape, x.dtype, xp)
        xp.maximum(x, 0, out=y)
        self._y = y
        return y

    def backward(self, grad_y):
        xp = array_module(grad_y)
        xp.multiply(grad_y, self._y > 0, out=grad_y)   # in place: grad_y is ours to reuse
        return grad_y


class Dropout(Module):
    """Element-wise dropout with fastreg's counter-based mask (no mask is stored).

    Each training forward call uses ``(seed, offset)`` and then advances ``offset`` by the
    number of elements, so no random word is used twice and a run is reproducible from the seed
    alone; backward regenerates the mask from the same ``(seed, offset)``.

    Data parallel (``set_row_window(first, total)``, set by a Trainer with ``comm``): the input
    is rows ``first ..`` of a global batch of ``total`` rows; the call uses ``offset + first *
    row_size`` (row_size = elements per row) and advances ``offset`` by ``total * row_size``.
    Element ``j`` of global row ``i`` therefore always draws stream word ``offset + i * row_size
    + j``, whichever rank holds the row: N ranks draw exactly the masks of one process on the
    same global batch. Without a window (``first=None``) the window is the whole input, which is
    the single-process rule above.

    Parameters
    ----------
    p : float
        Drop probability in [0, 1).
    mode : {"inverted", "classic"}
        "inverted": scale kept units by 1/(1-p) in training, identity at inference.
        "classic": no scaling in training, multiply by (1-p) at inference.
    seed : int, optional
        Key of the random stream; None lets the Trainer derive one from its own seed.

    Returns
    -------
    Dropout
    """

    def __init__(self, p=0.5, mode="inverted", seed=None):
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"Dropout p must be in [0, 1), got {p}")
        if mode not in DROPOUT_MODES:
            raise ValueError(f"Dropout mode must be one of {DROPOUT_MODES}, got {mode!r}")
        self.p, self.mode, self.seed = float(p), mode, seed
        self.offset = 0
        self._window = None

    def set_row_window(self, first, total):
        self._window = None if first is None else (int(first), int(total))

    def rng_state(self, prefix=""):
        out = {prefix + "offset": int(self.offset)}
        if self.seed is not None:
            out[prefix + "seed"] = int(self.seed)
        return out

    def set_rng_state(self, state, prefix=""):
        if prefix + "seed" in state:
            self.seed = int(state[prefix + "seed"])
        self.offset = int(state[prefix + "offset"])

    def forward(self, x):
        if self.p == 0.0 or (not self.training and self.mode == "inverted"):
            return x                                     # the identity: no copy
        xp = array_module(x)
        y = self._buffer("y", x.shape, x.dtype, xp)
        if not self.training:                            # classic at inference: x * (1 - p)
            return kernels.dropout(x, self.p, seed=0, training=False, mode=self.mode, out=y,
                                   backend=self.backend)
        if self.seed is None:
            raise RuntimeError("Dropout has no seed: pass seed= or train it with a Trainer, "
                               "which assigns one")
        first, advance = 0, x.size
        if self._window is not None and x.ndim >= 1:
            row = math.prod(x.shape[1:])
            first, advance = self._window[0] * row, self._window[1] * row
        if self.offset + advance > 1 << 64:  # 2**64 words: never in practice; wrap around
            self.offset = 0
        self._offset_used = self.offset + first
        self.offset += advance
        return kernels.dropout(x, self.p, seed=self.seed, offset=self._offset_used,
                               training=True, mode=self.mode, out=y, backend=self.backend)

    def backward(self, grad_y):
        if self.p == 0.0:
            return grad_y
        return kernels.dropout_backward(grad_y, self.p, seed=self.seed, offset=self._offset_used,
                                        training=True, mode=self.mode, out=grad_y,
                                        backend=self.backend)


class BatchNorm(Module):
    """Batch normalization over axis 1 of ``(N, C)`` input with running statistics
    (``fastreg.batch_norm``), optionally fused with a following ReLU.

    Parameters
    ----------
    num_features : int
        C.
    momentum : float in [0, 1] or None
        Weight of the new batch in the running statistics (PyTorch's convention). None: a
        cumulative moving average (``1 / num_batches_tracked``, as torch), for which the layer
        keeps a ``num_batches_tracked`` buffer (int64, one element; saved in checkpoints).
    eps : float > 0
        Added to the variance.
    activation : {None, "relu"}
        "relu" fuses ``max(y, 0)`` into the kernel (one pass instead of two).
    dtype : numpy dtype

    Returns
    -------
    BatchNorm

    Raises
    ------
    TypeError
        momentum or eps is not a real number (bools included).
    ValueError
        momentum outside [0, 1] or NaN; eps not finite and > 0; a bad activation.

    Notes
    -----
    Training mode normalizes with the batch's mean and (biased) variance and updates
    ``running_mean`` / ``running_var`` (unbiased variance) in place; evaluation mode uses the
    running statistics. Ioffe & Szegedy, "Batch normalization", ICML 2015.

    With ``set_comm(comm)`` (a Trainer with ``comm`` does it as it trains) training mode is synchronized
    batch norm (``fastreg.batch_norm(..., comm=comm)``): the statistics are those of the global
    batch (every rank's rows), the running statistics identical on every rank, and ``grads``
    hold this rank's contribution (summed over ranks by the Trainer's gradient Allreduce). The
    incoming gradient must be that of the global loss (the Trainer divides by the global batch).
    """

    def __init__(self, num_features, momentum=0.1, eps=1e-5, activation=None,
                 dtype=np.float32):
        super().__init__()
        if activation not in (None, "relu"):
            raise ValueError(f"activation must be None or 'relu', got {activation!r}")
        if momentum is not None:
            momentum = _arrays.check_probability(momentum, "BatchNorm momentum")
        eps = _check_eps(eps)
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.activation = activation
        self.weight = np.ones(num_features, dtype)
        self.bias = np.zeros(num_features, dtype)
        self.params, self.param_names = [self.weight, self.bias], ["weight", "bias"]
        self.grads = [np.zeros_like(self.weight), np.zeros_like(self.bias)]
        self.running_mean = np.zeros(num_features, dtype)
        self.running_var = np.ones(num_features, dtype)
        self.buffer_names = ["running_mean", "running_var"]
        self.num_batches_tracked = None
        if momentum is None:   # the cumulative average counts the batches (torch's buffer)
            self.num_batches_tracked = np.zeros(1, np.int64)
            self.buffer_names.append("num_batches_tracked")

    def forward(self, x):
        xp = array_module(x)
        y = self._buffer("y", x.shape, x.dtype, xp)
        y, saved = kernels.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            training=self.training, momentum=self.momentum, eps=self.eps, axis=1,
            activation=self.activation, num_batches_tracked=self.num_batches_tracked, out=y,
            backend=self.backend,
            **({"comm": self.comm} if self.comm is not None else {}))
        self._x, self._y, self._saved = x, y, saved
        return y

    def backward(self, grad_y):
        gx, gw, gb = kernels.batch_norm_backward(
            grad_y, self._x, self._saved, self.weight, axis=1, activation=self.activation,
            y=self._y, out=grad_y, backend=self.backend,
            **({"comm": self.comm} if self.comm is not None else {}))
        self.grads[0][...] = gw
        self.grads[1][...] = gb
        return gx


class Sequential(Module):
    """Layers applied in order; parameter names are ``"<index>.<name>"`` (``"0.weight"``).

    Parameters
    ----------
    *layers : Module

    Returns
    -------
    Sequential
    """

    def __init__(self, *layers):
        super().__init__()
        self.layers = list(layers)
        first = next((l for l in self.layers if isinstance(l, Linear)), None)
        if first is not None and first is self.layers[0]:
            first.needs_input_grad = False
        self.params = self.parameters()
        self.grads = self.gradients()

    def children(self):
        return self.layers

    def named_parameters(self, prefix=""):
        return [item for i, l in enumerate(self.layers)
                for item in l.named_parameters(f"{prefix}{i}.")]

    def named_gradients(self, prefix=""):
        return [item for i, l in enumerate(self.layers)
                for item in l.named_gradients(f"{prefix}{i}.")]

    def named_buffers(self, prefix=""):
        return [item for i, l in enumerate(self.layers)
                for item in l.named_buffers(f"{prefix}{i}.")]

    def rng_state(self, prefix=""):
        out = {}
        for i, l in enumerate(self.layers):
            out.update(l.rng_state(f"{prefix}{i}."))
        return out

    def set_rng_state(self, state, prefix=""):
        for i, l in enumerate(self.layers):
            l.set_rng_state(state, f"{prefix}{i}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def gradients(self):
        return [g for _, g in self.named_gradients()]

    def dropout_layers(self):
        """The Dropout layers, in order."""
        return [l for l in self.layers if isinstance(l, Dropout)]

    @property
    def out_features(self):
        """Width of the last Linear layer (the number of classes for a classifier)."""
        return next(l.out_features for l in reversed(self.layers) if isinstance(l, Linear))

    @property
    def in_features(self):
        """Width of the first Linear layer."""
        return next(l.in_features for l in self.layers if isinstance(l, Linear))

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_y):
        for layer in reversed(self.layers):
            grad_y = layer.backward(grad_y)
        return grad_y


def mlp(sizes, *, dropout=0.0, dropout_mode="inverted", batch_norm=False, input_dropout=0.0,
        dtype=np.float32, seed=0):
    """A multilayer perceptron: ``Linear -> [BatchNorm] -> ReLU -> [Dropout]`` per hidden layer,
    then a final Linear producing logits.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first, classes last: ``(64, 256, 256, 10)``.
    dropout : float
        Drop probability after each hidden activation (0: no Dropout layers).
    dropout_mode : {"inverted", "classic"}
    batch_norm : bool
        Insert BatchNorm (fused with the ReLU) after each hidden Linear; those Linear layers then
        have no bias (batch norm's shift replaces it).
    input_dropout : float
        Drop probability on the input features (0: none).
    dtype : numpy dtype
        float32 or float64.
    seed : int
        Seed of the weight initialization (dropout seeds come from the Trainer's seed).

    Returns
    -------
    Sequential
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output width, got {sizes}")
    rng = np.random.default_rng(seed)
    layers = []
    if input_dropout:
        layers.append(Dropout(input_dropout, dropout_mode))
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(Linear(a, b, bias=last or not batch_norm, dtype=dtype, rng=rng))
        if last:
            break
        if batch_norm:
            layers.append(BatchNorm(b, activation="relu", dtype=dtype))
        else:
            layers.append(ReLU())
        if dropout:
            layers.append(Dropout(dropout, dropout_mode))
    return Sequential(*layers)


def softmax_cross_entropy(logits, labels, grad_out=None, *, total=None):
    """Mean softmax cross-entropy of integer labels, its gradient, and the correct count.

    Parameters
    ----------
    logits : array, shape (N, K)
    labels : integer array, shape (N,)
        In [0, K) (checked by the Trainer, not here).
    grad_out : array, shape (N, K), optional
        Where to write the gradient of the mean loss with respect to logits
        (``(softmax - onehot) / total``); None: no gradient.
    total : int, optional
        The number of samples the loss is averaged over (default N). Data parallel: the global
        batch size, so that the ranks' losses and gradients add up to the global mean's; N = 0
        rows then give loss 0 and an empty gradient.

    Returns
    -------
    loss : float
        Sum over the rows divided by ``total`` (log-sum-exp with the max subtracted, in the
        logits' dtype): the mean over the batch by default.
    correct : int
        How many argmax predictions equal the labels.
    grad : array or None
        ``grad_out``.
    """
    xp = array_module(logits)
    n = logits.shape[0]
    if n == 0:
        return (math.nan if total is None else 0.0), 0, grad_out
    if total is not None:
        n = total
    rows = xp.arange(logits.shape[0])
    z = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(z)
    s = e.sum(axis=1, keepdims=True)
    loss = float(xp.log(s[:, 0]).sum() - z[rows, labels].sum()) / n
    correct = int((logits.argmax(axis=1) == labels).sum())
    if grad_out is not None:
        xp.divide(e, s, out=grad_out)
        grad_out[rows, labels] -= 1
        grad_out *= 1.0 / n
    return loss, correct, grad_out
