"""Data for the trainer and the demo: the embedded digits set and a stratified split.

``digits.npz`` (in ``fastreg/data/``) holds scikit-learn's copy of the UCI ML hand-written
digits (Alpaydin & Kaynak, 1998; CC BY 4.0): 1797 images of 8x8 pixels, values 0..16, 10
classes. It ships with fastreg, so nothing is downloaded and scikit-learn is not needed.
"""
import os

import numpy as np

DIGITS_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                           "digits.npz")


def load_digits():
    """The embedded digits data set.

    Parameters
    ----------
    None

    Returns
    -------
    images : numpy.ndarray, uint8, shape (1797, 8, 8)
        Pixel values 0..16.
    labels : numpy.ndarray, int64, shape (1797,)
        Digits 0..9.

    Notes
    -----
    UCI ML "Optical Recognition of Handwritten Digits", E. Alpaydin & C. Kaynak (1998),
    https://doi.org/10.24432/C50P49, CC BY 4.0; the copy shipped with scikit-learn.
    """
    with np.load(DIGITS_PATH, allow_pickle=False) as data:
        return data["images"], data["labels"]


def stratified_split(labels, sizes, seed=0):
    """Split sample indices into parts with (nearly) the class proportions of ``labels``.

    Parameters
    ----------
    labels : integer array (N,)
    sizes : sequence of int
        Size of each part but the last; the last part takes the remaining samples.
    seed : int
        Seed of the shuffle (``numpy.random.default_rng(seed)``).

    Returns
    -------
    list of numpy.ndarray
        ``len(sizes) + 1`` sorted index arrays that partition ``range(N)``.

    Raises
    ------
    ValueError
        The sizes add up to more than N.
    """
    labels = np.asarray(labels)
    n = len(labels)
    sizes = [int(s) for s in sizes]
    if sum(sizes) > n or any(s < 0 for s in sizes):
        raise ValueError(f"sizes {sizes} do not fit in {n} samples")
    rng = np.random.default_rng(seed)
    # interleave the classes: a shuffled list per class, then take their elements round-robin
    # by rank / class size, so every prefix of `order` has the class proportions of the whole
    order_parts, keys = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        order_parts.append(idx)
        keys.append((np.arange(len(idx)) + rng.random()) / len(idx))
    order = np.concatenate(order_parts)[np.argsort(np.concatenate(keys), kind="stable")]
    parts, start = [], 0
    for s in sizes:
        parts.append(np.sort(order[start:start + s]))
        start += s
    parts.append(np.sort(order[start:]))
    return parts
