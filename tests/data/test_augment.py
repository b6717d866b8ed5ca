import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.data import augment as aug

B, H, W, C = 5, 9, 7, 2  # distinct sizes so a transposed axis cannot pass


@pytest.fixture
def images():
    return jax.random.uniform(jax.random.key(0), (B, H, W, C))


@pytest.mark.parametrize("name", list(aug.AUGMENTATIONS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_keeps_shape_and_dtype_is_deterministic_per_key_and_changes_the_image(name, dtype, images):
    images = images.astype(dtype)
    fn = jax.jit(aug.AUGMENTATIONS[name])
    out = fn(jax.random.key(1), images)
    chex.assert_shape(out, images.shape)
    assert out.dtype == dtype
    chex.assert_trees_all_equal(out, fn(jax.random.key(1), images))
    assert not np.array_equal(np.asarray(out), np.asarray(images))
    assert not np.array_equal(np.asarray(out), np.asarray(fn(jax.random.key(2), images)))


def test_flip_mirrors_some_examples_and_keeps_the_others(images):
    out = np.asarray(aug.flip(jax.random.key(3), images))
    mirrored = [np.array_equal(o, np.asarray(x)[:, ::-1]) for o, x in zip(out, images, strict=True)]
    kept = [np.array_equal(o, np.asarray(x)) for o, x in zip(out, images, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True)) and any(mirrored) and any(kept)


def _numpy_shift(image, dy, dx):
    """`image` moved by (dy, dx), zeros shifted in."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_shift_is_a_zero_filled_translation_of_at_most_max_pixels(images):
    out = np.asarray(aug.shift(jax.random.key(4), images, max_pixels=2))
    offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    found = []
    for o, x in zip(out, np.asarray(images), strict=True):
        matches = [d for d in offsets if np.array_equal(o, _numpy_shift(x, *d))]
        assert matches, "not a translation within 2 pixels"
        found.append(matches[0])
    assert len(set(found)) > 1  # each example its own offset


def test_rotation_by_a_quarter_turn_matches_numpy_rot90():
    square = jax.random.uniform(jax.random.key(5), (2, 6, 6, C))
    turned = aug.rotate_by(square, jnp.array([90.0, -90.0]))
    np.testing.assert_allclose(turned[0], np.rot90(square[0], k=1), atol=1e-5)
    np.testing.assert_allclose(turned[1], np.rot90(square[1], k=-1), atol=1e-5)
    np.testing.assert_allclose(aug.rotate_by(square, jnp.zeros(2)), square, atol=1e-6)


def test_rotate_draws_angles_within_the_limit(images):
    small = aug.rotate(jax.random.key(6), images, max_degrees=1e-4)
    np.testing.assert_allclose(small, images, atol=1e-4)


def test_noise_sets_about_amount_of_pixels_to_each_images_extremes():
    images = jax.random.uniform(jax.random.key(7), (4, 64, 64, 1), minval=0.2, maxval=0.8)
    out = np.asarray(aug.noise(jax.random.key(8), images, amount=0.1))
    changed = out != np.asarray(images)
    assert 0.08 < changed.mean() < 0.12
    low = np.asarray(images).min(axis=(1, 2, 3), keepdims=True)
    high = np.asarray(images).max(axis=(1, 2, 3), keepdims=True)
    is_extreme = (out == low) | (out == high)
    assert is_extreme[changed].all()


def test_augment_composes_with_separate_keys_and_rejects_bad_input(images):
    out = aug.augment(jax.random.key(9), images, ("shift", "noise"))
    chex.assert_shape(out, images.shape)
    assert np.array_equal(aug.augment(jax.random.key(9), images, ()), images)
    with pytest.raises(ValueError, match="unknown augmentation blur"):
        aug.augment(jax.random.key(9), images, ("blur",))
    with pytest.raises(ValueError, match=r"image batches .* got shape \(5, 9, 7\)"):
        aug.augment(jax.random.key(9), images[..., 0], ("shift",))
