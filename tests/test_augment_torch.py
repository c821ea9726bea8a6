"""Image augmentation given torch CPU tensors answers with torch tensors (zero-copy in, the same
values as with NumPy arrays), as fastreg's other functions do."""
import numpy as np
import pytest

torch = pytest.importorskip("torch",
                            reason="torch is not installed (extra: fastreg-kernels[torch])")
import fastreg.augment as A  # noqa: E402

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]

CALLS = {
    "adjust_brightness": lambda x: A.adjust_brightness(x, 1.5),
    "posterize": lambda x: A.posterize(x, 3),
    "gaussian_blur": lambda x: A.gaussian_blur(x, 3, 1.0),
    "normalize": lambda x: A.normalize(x, MEAN, STD),
    "random_flip": lambda x: A.random_flip(x, seed=1),
    "random_rot90": lambda x: A.random_rot90(x, seed=2),
    "random_rotate": lambda x: A.random_rotate(x, 20.0, seed=3),
    "random_crop": lambda x: A.random_crop(x, 6, padding=1, seed=4),
    "random_resized_crop": lambda x: A.random_resized_crop(x, 6, seed=5),
    "random_erasing": lambda x: A.random_erasing(x, 1.0, seed=6),
    "RandAugment": lambda x: A.RandAugment()(x, seed=7),
    "ColorJitter": lambda x: A.ColorJitter(0.4, 0.4, 0.4, 0.1)(x, seed=8),
    "Normalize": lambda x: A.Normalize(MEAN, STD)(x),
    "Compose": lambda x: A.Compose([A.RandomFlip(), A.RandomCrop(6, padding=1)])(x, seed=9),
}


def _images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_torch_in_torch_out_same_values(name):
    x = _images()
    want = CALLS[name](x.copy())
    t = torch.from_numpy(x.copy())
    got = CALLS[name](t)
    assert isinstance(got, torch.Tensor) and isinstance(want, np.ndarray)
    np.testing.assert_array_equal(got.numpy(), want)
    assert torch.equal(t, torch.from_numpy(x))   # the input is not modified


def test_mix_ops_answer_with_tensors():
    x = torch.from_numpy(_images().astype(np.float32))
    labels = torch.tensor([0, 1, 2])
    for op in (A.mixup, A.cutmix):
        images, soft = op(x, labels, num_classes=3, seed=1)
        want_images, want_soft = op(x.numpy(), labels.numpy(), num_classes=3, seed=1)
        assert isinstance(images, torch.Tensor) and isinstance(soft, torch.Tensor)
        np.testing.assert_array_equal(images.numpy(), want_images)
        np.testing.assert_array_equal(soft.numpy(), want_soft)


def test_out_tensor_is_the_callers_and_its_version_moves():
    x = torch.from_numpy(_images())
    out = torch.empty_like(x)
    v = out._version
    assert A.adjust_brightness(x, 1.5, out=out) is out
    assert out._version > v
    np.testing.assert_array_equal(out.numpy(), A.adjust_brightness(x.numpy(), 1.5))


def test_numpy_callers_get_numpy_and_errors_stay_clear():
    assert type(A.posterize(_images(), 4)) is np.ndarray
    with pytest.raises(ValueError, match="bits"):
        A.posterize(torch.from_numpy(_images()), 9)
    with pytest.raises(TypeError, match="requires grad"):
        A.normalize(torch.ones(1, 2, 2, 3, requires_grad=True), MEAN, STD)


def test_op_classes_are_callable_as_their_function_form():
    x = _images()
    cases = [(A.RandomCrop(6, padding=1), lambda: A.random_crop(x, 6, padding=1, seed=3)),
             (A.RandomRotate(20.0), lambda: A.random_rotate(x, 20.0, seed=3)),
             (A.RandomFlip(), lambda: A.random_flip(x, seed=3)),
             (A.RandomErasing(1.0), lambda: A.random_erasing(x, 1.0, seed=3))]
    for op, function_form in cases:
        np.testing.assert_array_equal(op(x, seed=3), function_form())
    assert isinstance(A.RandomFlip()(torch.from_numpy(x), seed=3), torch.Tensor)


def test_messages_show_the_value_given():
    with pytest.raises(ValueError, match=r"std must be >= 0.0, got -1.0$"):
        A.gaussian_noise(np.zeros((1, 4, 4, 3), np.float32), -1.0, seed=0)
    with pytest.raises(TypeError, match=r"adjust_brightness\(images\) takes uint8 images"):
        A.adjust_brightness(np.zeros((1, 4, 4, 3), np.float32), 1.5)
