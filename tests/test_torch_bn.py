"""fastreg.torch batch norm against torch: BatchNorm3d, empty batches, BatchNormReLU2d's place
among torch's classes; convert() of BatchNorm3d and of timm's DropPath / DropBlock2d (stand-in
classes shaped like timm's: timm itself is never imported)."""
import numpy as np
import pytest

import fastreg

torch = pytest.importorskip("torch",
                            reason="torch is not installed (extra: fastreg-kernels[torch])")
import fastreg.torch as frt  # noqa: E402
from torch import nn  # noqa: E402

F64 = torch.float64


def _x(shape, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * 2 + 1


def _compare(ref, got, x, gy_seed=5):
    xr, xg = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    yr, yg = ref(xr), got(xg)
    torch.testing.assert_close(yg, yr)
    gy = _x(x.shape, gy_seed, x.dtype)
    yr.backward(gy)
    yg.backward(gy)
    torch.testing.assert_close(xg.grad, xr.grad)
    for name in ("weight", "bias"):
        pr, pg = getattr(ref, name), getattr(got, name)
        if pr is not None:
            torch.testing.assert_close(pg.grad, pr.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        br, bg = getattr(ref, name), getattr(got, name)
        if br is not None:
            torch.testing.assert_close(bg, br)
    return yg


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm3d_matches_torch(momentum, affine, track, channels_last):
    ref = nn.BatchNorm3d(3, momentum=momentum, affine=affine,
                         track_running_stats=track).to(F64)
    got = frt.BatchNorm3d(3, momentum=momentum, affine=affine, track_running_stats=track,
                          dtype=F64)
    got.load_state_dict(ref.state_dict())
    assert isinstance(got, nn.BatchNorm3d)
    x = _x((4, 3, 2, 3, 2))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    for _ in range(2):
        y = _compare(ref, got, x)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last_3d)
    ref.eval()
    got.eval()
    _compare(ref, got, x)
    with pytest.raises(ValueError, match="expected 5D input"):
        got(_x((4, 3, 2, 2)))


EMPTY = [(frt.BatchNorm1d, nn.BatchNorm1d, (0, 3)), (frt.BatchNorm1d, nn.BatchNorm1d, (0, 3, 4)),
         (frt.BatchNorm1d, nn.BatchNorm1d, (4, 3, 0)),
         (frt.BatchNorm2d, nn.BatchNorm2d, (0, 3, 2, 2)),
         (frt.BatchNorm3d, nn.BatchNorm3d, (0, 3, 2, 2, 2))]


@pytest.mark.parametrize("cls,tcls,shape", EMPTY)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("training", [True, False])
def test_empty_batch_as_torch(cls, tcls, shape, momentum, training):
    """torch: an empty output, the running statistics untouched, num_batches_tracked + 1 in
    training, zero parameter gradients."""
    ref = tcls(3, momentum=momentum).to(F64)
    with torch.no_grad():
        ref.running_mean.fill_(0.5)
        ref.running_var.fill_(2.0)
    got = cls(3, momentum=momentum, dtype=F64)
    got.load_state_dict(ref.state_dict())
    ref.train(training)
    got.train(training)
    x = torch.empty(*shape, dtype=F64)
    y = _compare(ref, got, x)
    assert y.shape == x.shape
    assert int(got.num_batches_tracked) == (1 if training else 0)
    assert torch.all(got.running_mean == 0.5) and torch.all(got.running_var == 2.0)
    if training:
        assert torch.all(got.weight.grad == 0) and torch.all(got.bias.grad == 0)


def test_empty_batch_bn_relu_with_residual():
    got = frt.BatchNormReLU2d(3, dtype=F64)
    x = torch.empty(0, 3, 2, 2, dtype=F64, requires_grad=True)
    r = torch.empty(0, 3, 2, 2, dtype=F64, requires_grad=True)
    y = got(x, r)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape and r.grad.shape == r.shape
    assert int(got.num_batches_tracked) == 1


def test_one_value_per_channel_still_refused():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        frt.BatchNorm1d(3, dtype=F64)(_x((1, 3)))


def test_bn_relu_is_not_a_batchnorm_for_isinstance_tools():
    """Tools that replace batch-norm layers found by isinstance (torch's convert_sync_batchnorm,
    torch.utils.mkldnn, timm's freeze_batch_norm_2d) would drop the fused ReLU: they must not
    see one. Its parameters, buffers and state_dict are still BatchNorm2d's."""
    fused = frt.BatchNormReLU2d(4)
    assert not isinstance(fused, nn.modules.batchnorm._BatchNorm)
    assert not isinstance(fused, nn.BatchNorm2d)
    bn = nn.BatchNorm2d(4)
    assert fused.state_dict().keys() == bn.state_dict().keys()
    fused.load_state_dict(bn.state_dict(), strict=True)
    bn.load_state_dict(fused.state_dict(), strict=True)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), fused)
    out = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert out[1] is fused  # left alone, ReLU and all
    with pytest.raises(ValueError, match="expected 4D input"):
        fused(torch.randn(2, 4, 3))


def test_convert_batchnorm3d():
    model = nn.Sequential(nn.Conv3d(2, 3, 1), nn.BatchNorm3d(3), nn.ReLU()).to(F64)
    conv = frt.convert(model)
    assert type(conv[1]) is frt.BatchNorm3d  # no 3-D fused module: the ReLU stays
    assert type(conv[2]) is nn.ReLU
    x = _x((2, 2, 3, 3, 3))
    torch.testing.assert_close(conv(x), model(x))
    conv.load_state_dict(model.state_dict(), strict=True)


# --- timm's modules, recognised by name and attributes -------------------------------------------

class DropPath(nn.Module):
    """Shaped like timm.layers.DropPath."""

    def __init__(self, drop_prob=0.0, scale_by_keep=True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0 and self.scale_by_keep:
            mask.div_(keep)
        return x * mask


class DropBlock2d(nn.Module):
    """Shaped like timm.layers.DropBlock2d."""

    def __init__(self, drop_prob=0.1, block_size=7, gamma_scale=1.0, with_noise=False,
                 inplace=False, batchwise=False, fast=True):
        super().__init__()
        self.drop_prob, self.block_size, self.gamma_scale = drop_prob, block_size, gamma_scale
        self.with_noise, self.inplace, self.batchwise, self.fast = (with_noise, inplace,
                                                                    batchwise, fast)

    def forward(self, x):  # pragma: no cover - replaced by convert
        return x


class Block(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.drop_block = DropBlock2d(0.2, 3, **kw)
        self.drop_path = DropPath(0.25)

    def forward(self, x):
        return x + self.drop_path(self.drop_block(self.conv(x)))


def test_convert_timm_drop_path_and_drop_block():
    model = nn.Sequential(Block(batchwise=True, inplace=True), Block(gamma_scale=0.5))
    conv = frt.convert(model, seed=3)
    for blk, old in zip(conv, model):
        assert type(blk.drop_path) is frt.DropPath and blk.drop_path.p == 0.25
        assert blk.drop_path.mode == "inverted"
        assert type(blk.drop_block) is frt.DropBlock2d
        assert blk.drop_block.p == 0.2 and blk.drop_block.block_size == 3
        assert blk.drop_block.gamma_scale == old.drop_block.gamma_scale
    seeds = [m.seed for m in conv.modules() if isinstance(m, (frt.DropPath, frt.DropBlock2d))]
    assert len(set(seeds)) == 4
    # the converted modules are fastreg's: same masks as the functional forms
    x = _x((4, 3, 6, 6), dtype=torch.float32)
    blk = conv[0]
    h = blk.conv(x).detach()
    expected = fastreg.drop_block(h.numpy(), 0.2, 3, seed=blk.drop_block.seed, offset=0)
    torch.testing.assert_close(blk.drop_block(h), torch.from_numpy(expected))
    expected = fastreg.drop_path(h.numpy(), 0.25, seed=blk.drop_path.seed, offset=0)
    torch.testing.assert_close(blk.drop_path(h), torch.from_numpy(expected))
    conv.eval()
    model.eval()
    torch.testing.assert_close(conv(x), model(x))
    # the state_dict keys are the model's (the timm modules have none)
    conv.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("make,match", [
    (lambda: Block(with_noise=True), "with_noise=True"),
    (lambda: Block(fast=False), "fast=False"),
    (lambda: nn.Sequential(nn.Dropout(0.1), DropPath(0.1, scale_by_keep=False)),
     "scale_by_keep=False"),
])
def test_convert_refuses_timm_options_fastreg_lacks(make, match):
    model = make()
    with pytest.raises(ValueError, match=match):
        frt.convert(model)
    with pytest.raises(ValueError, match=match):  # inplace: refused before any change
        frt.convert(model, inplace=True)
    assert not any(type(m).__module__.startswith("fastreg") for m in model.modules())


def test_convert_leaves_lookalikes_without_the_attributes():
    class DropPath(nn.Module):  # a user's own class with timm's name but not its attributes
        def __init__(self):
            super().__init__()
            self.p = 0.5

        def forward(self, x):
            return x
    model = nn.Sequential(DropPath())
    assert type(frt.convert(model)[0]) is DropPath


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_functional_16bit_takes_float32_parameters(dtype):
    """fastreg.torch.batch_norm with a 16-bit x takes float32 weight, bias and statistics (as the
    modules and torch.autocast do), and matches torch's float32 computation rounded to x's
    dtype within its ulp; a float64 weight is still refused."""
    import fastreg.torch as frt
    x = torch.randn(4, 3, 5, 5).to(getattr(torch, dtype))
    args = (torch.zeros(3), torch.ones(3), torch.rand(3) + 0.5, torch.randn(3))
    rm, rv = args[0].clone(), args[1].clone()
    y = frt.batch_norm(x, rm, rv, args[2], args[3], training=True)
    ref = torch.nn.functional.batch_norm(x.float(), args[0].clone(), args[1].clone(), args[2],
                                         args[3], training=True)
    assert y.dtype == x.dtype
    torch.testing.assert_close(y.float(), ref.to(x.dtype).float(), atol=0.02, rtol=0.01)
    assert not torch.equal(rm, args[0])       # the running statistics were updated
    with pytest.raises(TypeError, match="weight has dtype torch.float64"):
        frt.batch_norm(x, None, None, torch.ones(3, dtype=torch.float64), training=True)


def test_non_tensor_arguments_are_named():
    """A NumPy array, list or number where batch norm takes a tensor: a TypeError naming the
    argument (a NumPy array read "residual is on cpu but x is on cpu"; the others raised
    AttributeError)."""
    x = torch.randn(2, 3, 4, 4)
    for name, bad in (("residual", np.ones((2, 3, 4, 4), np.float32)),
                      ("weight", [1.0, 1.0, 1.0]), ("bias", 1.0), ("running_mean", np.zeros(3)),
                      ("num_batches_tracked", 0)):
        kwargs = {name: bad}
        if name == "running_mean":
            kwargs["running_var"] = torch.ones(3)
        with pytest.raises(TypeError, match=f"{name} must be a torch.Tensor"):
            frt.batch_norm(x, training=True, **kwargs)
    with pytest.raises(TypeError, match="residual must be a torch.Tensor"):
        frt.BatchNormReLU2d(3)(x, 1.0)
