"""Synchronized batch norm over ``torch.distributed`` process groups, exact for uneven batches.

In training, with ``torch.distributed`` initialized and more than one process in the group, each
rank computes its per-channel (count, mean, M2) with fastreg's kernel, one ``all_gather``
exchanges them (2C + 1 float64 per rank) and every rank merges them in rank order with
``fastreg.merge_stats`` (Chan, Golub & LeVeque's update), so every rank gets bit-identical
statistics of the union of the ranks' batches, equal to those of one process on the
concatenated batch up to rounding, whatever the per-rank batch sizes (0 included: such a rank
still takes part). Backward all-reduces the two float64 per-channel sums (sum(g) and
sum(g * xhat)). This is the arithmetic of fastreg's MPI path (``fastreg.batch_norm(comm=...)``),
with torch.distributed moving the numbers (the statistics travel as tensors on the input's
device: gloo for CPU tensors, tested with 2 and 3 processes; for CUDA tensors the same code runs
with nccl, not tested here for want of GPUs).

torch's own ``nn.SyncBatchNorm`` all-gathers (mean, invstd, count) and combines them with the
float count as weights; it runs on GPUs only, and DDP refuses it on CPU modules. These modules
are plain ``_BatchNorm`` modules for DDP, so a CPU model with gloo works.
"""
import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from .. import _arrays, _dispatch
from .. import batchnorm as _bn
from ..batchnorm import _const, _host64, _merge_rows, _on, _stats_row, _writeback
from . import _bridge
from . import modules as M

__all__ = ["SyncBatchNorm", "SyncBatchNormReLU"]


def _dist():
    return torch.distributed if torch.distributed.is_available() else None


def _np_dtype(t):
    return torch.empty(0, dtype=t.dtype).numpy().dtype


def _channel_dims(shape, ax):
    A = int(np.prod(shape[:ax], dtype=np.int64))
    B = int(np.prod(shape[ax + 1:], dtype=np.int64))
    return A, shape[ax], B


def _allgather_stats(count, mean, m2, group, device):
    """(count, mean, M2) of every rank of ``group`` merged in rank order (identical on all)."""
    dist = _dist()
    # the rows of fastreg.distributed.allgather_stats: a rank that receives another channel
    # count refuses it (a backend that checks sizes, gloo, may stop first)
    send = torch.from_numpy(_stats_row(count, mean, m2)).to(device)
    recv = [torch.full_like(send, float("nan")) for _ in range(dist.get_world_size(group))]
    dist.all_gather(recv, send, group=group)
    return _merge_rows(np.stack([r.cpu().numpy() for r in recv]), mean.shape[0])


class _SyncBatchNormFunction(torch.autograd.Function):
    """``apply(x, weight, bias, residual, running_mean, running_var, momentum, eps, relu,
    backend, group)``: training forward and backward synchronized over ``group``."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, momentum, eps, relu,
                backend, group):
        perm = _bridge.channels_last_perm(x)
        xv = _bridge.device_array(_bridge.permuted(x, perm))
        shape = tuple(xv.shape)
        ax = 1 if perm is None else x.dim() - 1
        A, C, B = dims = _channel_dims(shape, ax)
        n = A * B
        be = _bridge.backend_for("bn_stats", backend, x)
        job = _dispatch.job(be, x.device.type == "cpu")
        dtype = _np_dtype(x)
        f64 = np.float64
        work = n * C > 0
        y = _bridge.empty_like(x, perm)
        yv = _bridge.array(_bridge.permuted(y, perm))
        res = job.target(yv, shape, dtype)
        lmean, lm2 = job.zeros((C,), f64), job.zeros((C,), f64)
        rc = None
        if work:
            xc = job.contig(xv).reshape(dims)
            if residual is not None:
                rc = job.contig(_bridge.device_array(_bridge.permuted(residual, perm)))
                rc = rc.reshape(dims)
            job.op("bn_stats")(xc, lmean, lm2)
        count, gmean, gm2 = _allgather_stats(n, _host64(job, lmean), _host64(job, lm2), group,
                                             x.device)
        if count == 1:  # every rank sees the same count, so every rank raises
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"{count} over all ranks of the process group (this rank: input "
                             f"of shape {tuple(x.shape)})")
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.has_residual, ctx.relu = residual is not None, relu
        if count == 0:  # every rank's batch is empty: torch's empty batch (nothing to update)
            ctx.stats = None
            ctx.save_for_backward(x, weight, None)
            return y
        gmean, gm2 = _on(job, gmean), _on(job, gm2)
        mean, invstd = job.empty((C,), f64), job.empty((C,), f64)
        center, scale, shift = (job.empty((C,), dtype) for _ in range(3))
        w = None if weight is None else job.contig(_bridge.array(weight))
        b = None if bias is None else job.contig(_bridge.array(bias))
        if C:
            job.op("bn_forward_coeffs")(gmean, gm2, count, w, b, eps, False, mean, invstd,
                                        center, scale, shift)
        if work:
            job.op("bn_apply")(xc, center, scale, shift, rc, relu, res.reshape(dims))
        job.finish(res, yv)
        if running_mean is not None:
            rm, rv = _bridge.array(running_mean), _bridge.array(running_var)
            rmc, rvc = job.contig(rm), job.contig(rv)
            if C:
                job.op("bn_running_update")(gmean, gm2, count, rmc, rvc, momentum)
            _writeback(job, rmc, rm)
            _writeback(job, rvc, rv)
        ctx.stats = (mean, invstd, count, n, dims, perm, be, group)
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        grads = _SyncBatchNormFunction._backward(ctx, grad_y)
        if torch.is_grad_enabled():  # create_graph: see _NoSecondDerivative
            x = ctx.saved_tensors[0]
            grads = tuple(g if g is None else _NoSecondDerivative.apply(g, grad_y, x)
                          for g in grads)
        return grads

    @staticmethod
    def _backward(ctx, grad_y):
        x, weight, y = ctx.saved_tensors
        if ctx.stats is None:  # an empty global batch: empty and zero gradients
            zero = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
            return (torch.zeros_like(x), zero if ctx.has_weight else None,
                    zero.clone() if ctx.has_bias else None,
                    torch.zeros_like(x) if ctx.has_residual else None,
                    None, None, None, None, None, None, None)
        mean, invstd, count, n, dims, perm, be, group = ctx.stats
        job = _dispatch.job(be, x.device.type == "cpu")
        dtype = _np_dtype(x)
        C = dims[1]
        f64 = np.float64
        view = _bridge.permuted
        gx = _bridge.empty_like(x, perm)
        gxv = _bridge.array(view(gx, perm))
        shape = tuple(gxv.shape)
        target = job.target(gxv, shape, dtype)
        gres = job.empty(shape, dtype) if ctx.has_residual else None
        s_dy, s_dyx = job.zeros((C,), f64), job.zeros((C,), f64)
        work = n * C > 0
        if work:
            gyc = job.contig(_bridge.device_array(view(grad_y, perm))).reshape(dims)
            xc = job.contig(_bridge.device_array(view(x, perm))).reshape(dims)
            yc = None
            if y is not None:
                yc = job.contig(_bridge.device_array(view(y, perm))).reshape(dims)
            job.op("bn_backward_reduce")(gyc, xc, yc, mean, s_dy, s_dyx)
        sums = torch.from_numpy(np.concatenate([_host64(job, s_dy), _host64(job, s_dyx)]))
        sums = sums.to(x.device)
        _dist().all_reduce(sums, group=group)
        sums = sums.cpu().numpy()
        tot_dy, tot_dyx = _on(job, sums[:C].copy()), _on(job, sums[C:].copy())
        wc = _const(job, C, dtype, 1) if weight is None else job.contig(_bridge.array(weight))
        center, a, bc, d, gw, gb = (job.empty((C,), dtype) for _ in range(6))
        if C:
            # grad_x's coefficients from the global sums and count, then this rank's own
            # parameter gradients from its local sums (DDP reduces those, as for torch's
            # SyncBatchNorm); the second call rewrites center and a with the same values
            job.op("bn_backward_coeffs")(tot_dy, tot_dyx, mean, invstd, wc, count, True,
                                         center, a, bc, d, gw, gb)
            job.op("bn_backward_coeffs")(s_dy, s_dyx, mean, invstd, wc, max(n, 1), False,
                                         center, a, None, None, gw, gb)
        if work:
            job.op("bn_backward_apply")(gyc, xc, yc, center, a, bc, d, target.reshape(dims),
                                        None if gres is None else gres.reshape(dims))
        job.finish(target, gxv)
        host = job.mod.copy_to_host if job.device and job.host_input else (lambda v: v)
        gw_t = _bridge.to_tensor(host(gw), x) if ctx.has_weight else None
        gb_t = _bridge.to_tensor(host(gb), x) if ctx.has_bias else None
        gres_t = None
        if gres is not None:
            gres_t = _bridge.to_tensor(host(gres), x)
            if perm is not None:  # computed in the permuted (N, ..., C) order
                gres_t = gres_t.permute(*[perm.index(i) for i in range(len(perm))])
        return gx, gw_t, gb_t, gres_t, None, None, None, None, None, None, None


class _NoSecondDerivative(torch.autograd.Function):
    """``apply(g, grad_y, x)``: g, a gradient the synchronized backward computed with kernels and
    a collective (not a graph autograd could differentiate), tied to grad_y and x so that a
    second derivative through it (``create_graph=True``, then a gradient penalty) raises
    instead of leaving this layer's part out silently."""

    @staticmethod
    def forward(ctx, g, grad_y, x):
        return g.clone()

    @staticmethod
    def backward(ctx, gg):
        raise RuntimeError("fastreg.torch.SyncBatchNorm has no second derivative (double "
                           "backward, gradient penalties): use fastreg.torch.BatchNorm*d, whose "
                           "backward is differentiable, or torch's SyncBatchNorm")


@torch.compiler.disable
def _sync_apply(*args):
    """The synchronized Function, run eagerly under ``torch.compile`` (a graph break: its
    collectives and host-side merge are not traceable; ``fullgraph=True`` refuses it)."""
    return _SyncBatchNormFunction.apply(*args)


class _SyncMixin:
    """The synchronized training forward shared by SyncBatchNorm and SyncBatchNormReLU, and
    their constructor (torch's SyncBatchNorm arguments) and input check."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None, *,
                 bias=True, backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias, backend=backend)
        self.process_group = process_group

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def _group(self):
        """(process group, True) when this call synchronizes (training, torch.distributed
        initialized, more than one process in the group), else (None, False)."""
        dist = _dist()
        if not self.training or dist is None or not dist.is_initialized():
            return None, False
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group, dist.get_world_size(group) > 1

    def _sync_forward(self, x, residual=None):
        group, sync = self._group()
        if not sync:  # torch's rule: no synchronization, the plain (fastreg) batch norm
            return self._fastreg_forward(x, residual)
        self._check_args(x, residual)
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{type(self).__name__}: synchronized batch norm runs float32 and "
                            f"float64 input only, got {x.dtype} (cast the input, e.g. outside "
                            "autocast; unsynchronized calls take 16-bit input)")
        rm = self.running_mean if self.track_running_stats else None
        rv = self.running_var if self.track_running_stats else None
        # the checks the unsynchronized call makes (fastreg.batch_norm's), before the counter
        # or a collective: the kernels read as many per-channel values as x has channels
        _bn._check_eps(self.eps)
        if self.momentum is not None:
            _arrays.check_probability(self.momentum, "momentum")
        C = x.shape[1]
        for name, t in (("weight", self.weight), ("bias", self.bias), ("running_mean", rm),
                        ("running_var", rv)):
            if t is not None and tuple(t.shape) != (C,):
                raise ValueError(f"{name} must have shape ({C},) for an input of {C} channels "
                                 f"(x of shape {tuple(x.shape)}), got {tuple(t.shape)}")
        momentum = 0.0 if self.momentum is None else self.momentum
        if rm is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / int(self.num_batches_tracked.item())
        return _sync_apply(x, self.weight, self.bias, residual, rm, rv, momentum, self.eps,
                           self._RELU, getattr(self, "backend", "auto"), group)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Replace the batch-norm layers of a model by fastreg's synchronized ones, in place
        (as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``), the fused ReLU kept.

        Parameters
        ----------
        module : torch.nn.Module
            ``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm`` and ``frt.BatchNorm1d/2d/3d`` become
            ``frt.SyncBatchNorm``; ``frt.BatchNormReLU2d`` becomes ``frt.SyncBatchNormReLU``.
            Only these exact classes (subclasses may override ``forward``: left alone). The
            new modules share the old ones' parameter and buffer tensors (an optimizer built
            before the conversion keeps working) and their training mode.
        process_group : torch.distributed.ProcessGroup, optional
            Default: the whole world.

        Returns
        -------
        torch.nn.Module
            ``module`` with its layers replaced (a new module when ``module`` itself is one).
        """
        new_cls = _SYNC_TARGETS.get(type(module))
        out = module
        if new_cls is not None:
            out = new_cls(module.num_features, module.eps, module.momentum, module.affine,
                          module.track_running_stats, process_group,
                          bias=module.bias is not None,
                          backend=getattr(module, "backend", "auto"))
            with torch.no_grad():
                if module.affine:
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out


_SYNC_DOC = """{what}

    Same constructor as ``torch.nn.SyncBatchNorm`` (plus keyword ``backend``), parameters and
    buffers, so state_dicts load either way. In training with ``torch.distributed`` initialized
    and more than one process in ``process_group``, the statistics are those of the union of
    every rank's batch (see the module docstring: exact for uneven batches, a rank with an empty
    batch still takes part, and every rank must call forward and backward); the running
    statistics get the global batch's unbiased variance. Otherwise (eval, a single process, no
    process group) it is the plain fastreg batch norm. Parameter gradients are this rank's
    contributions, for DDP to reduce, as with torch's SyncBatchNorm. Input (N, C, ...),
    channels-last kept.{extra}

    Parameters
    ----------
    num_features : int
    eps, momentum, affine, track_running_stats, device, dtype, bias
        As in torch.
    process_group : torch.distributed.ProcessGroup, optional
        Default: the whole world.
    backend : {{"auto", "numpy", "cpu", "c", "cuda"}}
        Keyword only.

    Returns
    -------
    {name}
    """


class SyncBatchNorm(_SyncMixin, M._FastregBatchNorm, _BatchNorm):
    __doc__ = _SYNC_DOC.format(
        what="Batch norm synchronized over a ``torch.distributed`` process group.",
        extra=" Not an ``nn.SyncBatchNorm`` subclass: DDP refuses those on CPU modules.",
        name="SyncBatchNorm")

    def forward(self, x):
        """Normalize x (see the class docstring).

        Parameters
        ----------
        x : torch.Tensor (N, C, ...), float32 or float64, the module's dtype and device

        Returns
        -------
        torch.Tensor
        """
        return self._sync_forward(x)


class SyncBatchNormReLU(_SyncMixin, M._FastregBatchNorm, _NormBase):
    __doc__ = _SYNC_DOC.format(
        what="``relu(sync_bn(x) [+ residual])`` in one pass: ``SyncBatchNorm`` fused with a "
             "ReLU (what ``convert_sync_batchnorm`` makes of ``BatchNormReLU2d``).",
        extra=" Like ``BatchNormReLU2d``, not a ``_BatchNorm`` instance, so that tools which "
              "replace batch-norm layers cannot drop its ReLU.", name="SyncBatchNormReLU")

    _RELU = True

    def forward(self, x, residual=None):
        """``relu(sync_bn(x) + residual)``.

        Parameters
        ----------
        x : torch.Tensor (N, C, ...)
        residual : torch.Tensor like x, optional

        Returns
        -------
        torch.Tensor
        """
        return self._sync_forward(x, residual)


_SYNC_TARGETS = {nn.BatchNorm1d: SyncBatchNorm, nn.BatchNorm2d: SyncBatchNorm,
                 nn.BatchNorm3d: SyncBatchNorm, nn.SyncBatchNorm: SyncBatchNorm,
                 M.BatchNorm1d: SyncBatchNorm, M.BatchNorm2d: SyncBatchNorm,
                 M.BatchNorm3d: SyncBatchNorm, SyncBatchNorm: SyncBatchNorm,
                 M.BatchNormReLU2d: SyncBatchNormReLU, SyncBatchNormReLU: SyncBatchNormReLU}
