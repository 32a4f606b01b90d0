"""Batched augmentations: shapes and value ranges kept, views differ, exact shifts and erasing, determinism."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tau_lab.data.augment import SIDE, Augment, augment, erase, shift
from tau_lab.data.digits import load_digits

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_digits().train_x[:64]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


strengths = st.builds(
    Augment,
    max_shift=st.integers(0, 3),
    intensity=st.floats(0, 0.9),
    erase_prob=st.floats(0, 1),
    erase_size=st.integers(1, SIDE),
    noise=st.floats(0, 1),
)


@SETTINGS
@given(strength=strengths, seed=st.integers(0, 2**31 - 1), lead=st.sampled_from([(5,), (2, 3), (2, 1, 4)]))
def test_shape_and_range_are_kept(strength, seed, lead):
    x = torch.rand(*lead, 64, generator=_generator(seed))
    out = augment(x, _generator(seed + 1), strength)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1


def test_two_views_of_the_same_images_differ(images):
    views = augment(images.expand(2, -1, -1), _generator(0), Augment())
    assert views.shape == (2, *images.shape)
    differ = (views[0] - views[1]).abs().amax(-1) > 0.05
    assert differ.all()  # every image, not only on average


def test_zero_strength_is_the_identity(images):
    none = Augment(max_shift=0, intensity=0, erase_prob=0, noise=0)
    assert torch.equal(augment(images, _generator(0), none), images)


def test_same_generator_seed_same_views(images):
    first, again = (augment(images, _generator(7), Augment()) for _ in range(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, augment(images, _generator(8), Augment()))


@SETTINGS
@given(row=st.integers(0, 7), col=st.integers(0, 7), dy=st.integers(-2, 2), dx=st.integers(-2, 2))
def test_shift_moves_a_pixel_and_fills_with_zeros(row, col, dy, dx):
    image = torch.zeros(1, SIDE, SIDE)
    image[0, row, col] = 1.0
    out = shift(image, torch.tensor([dy]), torch.tensor([dx]), max_shift=2)
    expected = torch.zeros(1, SIDE, SIDE)
    if 0 <= row + dy < SIDE and 0 <= col + dx < SIDE:
        expected[0, row + dy, col + dx] = 1.0
    assert torch.equal(out, expected)


@SETTINGS
@given(top=st.integers(0, 7), left=st.integers(0, 7), height=st.integers(0, 8), width=st.integers(1, 8))
def test_erase_zeroes_exactly_the_rectangle(top, left, height, width):
    image = torch.ones(1, SIDE, SIDE)
    out = erase(image, *(torch.tensor([v]) for v in (top, left, height, width)))
    expected = torch.ones(1, SIDE, SIDE)
    expected[0, top : top + height, left : left + width] = 0.0
    assert torch.equal(out, expected)


def test_each_image_draws_its_own_shift():
    # a single lit pixel per image: with max_shift = 1 the nine shifts all occur in a large batch
    x = torch.zeros(500, SIDE, SIDE)
    x[:, 4, 4] = 1.0
    plain = Augment(max_shift=1, intensity=0, erase_prob=0, noise=0)
    out = augment(x.reshape(500, 64), _generator(0), plain).reshape(500, SIDE, SIDE)
    where = out.flatten(1).argmax(1).tolist()
    moved = {(i // SIDE - 4, i % SIDE - 4) for i in where}
    assert moved == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
