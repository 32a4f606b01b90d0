"""Bring-your-own paired embeddings: the ``.npz`` file of ``task = "pairs"``.

The file format (write it with ``numpy.savez(path, a=..., b=..., labels=...)``):

- ``a``: ``[n, d_a]`` real numbers, one row per item in the first modality (e.g. image features);
- ``b``: ``[n, d_b]`` real numbers, row i paired with row i of ``a`` (e.g. the caption's features);
- ``labels`` (optional): ``[n]`` integers, a class per pair, used only for evaluation (tolerance).

Every value must be finite. A file that breaks a rule is rejected with one line naming the file and what is
wrong (``tau_lab.errors.UserError``, a ``ValueError``), a missing file included.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from tau_lab.errors import UserError

MIN_PAIRS = 4  # enough for a train and a test split with two pairs each


class Pairs(NamedTuple):
    """The arrays of a pairs file as tensors: ``a [n, d_a]``, ``b [n, d_b]``, ``labels [n]`` or ``None``."""

    a: Tensor
    b: Tensor
    labels: Tensor | None


def _matrix(path: Path, name: str, array: np.ndarray) -> np.ndarray:
    if array.ndim != 2 or 0 in array.shape:
        raise UserError(f"{path}: array '{name}' has shape {array.shape}: expected [n, d_{name}] with n, d ≥ 1")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise UserError(f"{path}: array '{name}' has dtype {array.dtype}: expected real numbers")
    finite = np.isfinite(array)
    if not finite.all():
        row = int(np.argwhere(~finite)[0, 0])
        raise UserError(
            f"{path}: array '{name}' has {int((~finite).sum())} NaN or infinite values (the first in row {row}): "
            "every value must be finite"
        )
    return array


def load_pairs(path: str | Path) -> Pairs:
    """Read and check a pairs file; float arrays become float32 tensors, labels int64."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such pairs file (expected an .npz with arrays 'a' and 'b')")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array; save named arrays with numpy.savez(path, a=..., b=...)")
        with loaded as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: not an .npz file of arrays that numpy.load can read: {reason}") from None
    for name in ("a", "b"):
        if name not in arrays:
            found = ", ".join(sorted(arrays)) or "none"
            raise UserError(
                f"{path}: array '{name}' is missing (found: {found}); a pairs file holds 'a' [n, d_a], "
                "'b' [n, d_b] and optionally 'labels' [n]"
            )
    a, b = _matrix(path, "a", arrays["a"]), _matrix(path, "b", arrays["b"])
    if len(a) != len(b):
        raise UserError(f"{path}: 'a' has {len(a)} rows but 'b' has {len(b)}: row i of 'a' pairs with row i of 'b'")
    if len(a) < MIN_PAIRS:
        raise UserError(f"{path}: {len(a)} pairs are too few: at least {MIN_PAIRS} are needed")
    labels = arrays.get("labels")
    if labels is not None:
        if labels.shape != (len(a),):
            raise UserError(f"{path}: 'labels' has shape {labels.shape}: expected ({len(a)},), one per pair")
        if not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"{path}: 'labels' has dtype {labels.dtype}: expected integers")
    return Pairs(
        torch.from_numpy(a.astype(np.float32)),
        torch.from_numpy(b.astype(np.float32)),
        None if labels is None else torch.from_numpy(labels.astype(np.int64)),
    )


def split(n: int, labels: Tensor | None, test_fraction: float, seed: int) -> Tensor:
    """A seeded train/test split of ``n`` items: ``[n]`` bools, true for test.

    With labels the split is stratified: in every class the same fraction goes to the test set (at least
    one item of every class with two or more); without labels it is a random ``round(fraction · n)`` items.
    """
    g = torch.Generator().manual_seed(seed)
    groups = [torch.arange(n)] if labels is None else [(labels == c).nonzero().squeeze(1) for c in labels.unique()]
    test = torch.zeros(n, dtype=torch.bool)
    for idx in groups:
        count = round(test_fraction * len(idx))
        if len(idx) >= 2:
            count = min(max(count, 1), len(idx) - 1)
        test[idx[torch.randperm(len(idx), generator=g)[:count]]] = True
    return test
