"""Image augmentations as pure, jittable functions of a PRNG key and a batch.

Each takes `images` `(B, H, W, C)` and returns a batch of the same shape and dtype, drawing a
separate random transform for every example; the same key gives the same result. The train step
runs them on device (`TrainConfig.augment`), so augmentation costs no host work:

    images = augment(key, images, ("shift", "rotate", "noise"))
"""

from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
from jax.scipy import ndimage


def flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    chex.assert_rank(images, 4)
    flipped = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flipped, images[:, :, ::-1], images)


def rotate(key: jax.Array, images: jax.Array, max_degrees: float = 10.0) -> jax.Array:
    """Rotates each image about its centre by an angle uniform in `[-max_degrees, max_degrees]`."""
    chex.assert_rank(images, 4)
    degrees = jax.random.uniform(key, (images.shape[0],), minval=-max_degrees, maxval=max_degrees)
    return rotate_by(images, degrees)


def rotate_by(images: jax.Array, degrees: jax.Array) -> jax.Array:
    """Rotates image `b` counter-clockwise by `degrees[b]` about its centre, with bilinear
    interpolation and zeros shifted in from outside."""
    chex.assert_rank(images, 4)
    _, height, width, _ = images.shape
    rows, cols = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32) - (height - 1) / 2,
        jnp.arange(width, dtype=jnp.float32) - (width - 1) / 2,
        indexing="ij",
    )  # (H, W) each, centred

    def rotate_one(image, angle):  # (H, W, C), ()
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        # The source pixel of each output pixel: the output grid turned back by `angle`.
        source = [
            cos * rows + sin * cols + (height - 1) / 2,
            cos * cols - sin * rows + (width - 1) / 2,
        ]

        def channel(plane):  # (H, W)
            return ndimage.map_coordinates(plane, source, order=1, mode="constant", cval=0.0)

        return jax.vmap(channel, in_axes=-1, out_axes=-1)(image.astype(jnp.float32))

    return jax.vmap(rotate_one)(images, jnp.deg2rad(degrees)).astype(images.dtype)


def shift(key: jax.Array, images: jax.Array, max_pixels: int = 2) -> jax.Array:
    """Moves each image by up to `max_pixels` along each axis: zero-pad, then crop at random."""
    chex.assert_rank(images, 4)
    batch, height, width, channels = images.shape
    pad = ((0, 0), (max_pixels, max_pixels), (max_pixels, max_pixels), (0, 0))
    padded = jnp.pad(images, pad)
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * max_pixels + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def noise(key: jax.Array, images: jax.Array, amount: float = 0.02) -> jax.Array:
    """Salt-and-pepper noise: each pixel becomes the image's minimum (pepper) or maximum (salt)
    with probability `amount / 2` each."""
    chex.assert_rank(images, 4)
    u = jax.random.uniform(key, images.shape)
    low = jnp.min(images, axis=(1, 2, 3), keepdims=True)
    high = jnp.max(images, axis=(1, 2, 3), keepdims=True)
    images = jnp.where(u < amount / 2, jnp.broadcast_to(low, images.shape), images)
    return jnp.where(u > 1 - amount / 2, jnp.broadcast_to(high, images.shape), images)


AUGMENTATIONS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "flip": flip,
    "rotate": rotate,
    "shift": shift,
    "noise": noise,
}


def augment(key: jax.Array, images: jax.Array, names: Sequence[str]) -> jax.Array:
    """Applies the named augmentations in order, each with its own key from `key`."""
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown augmentation {', '.join(unknown)}; choose from: {', '.join(AUGMENTATIONS)}"
        )
    if images.ndim != 4:
        raise ValueError(
            f"augmentations take image batches (batch, height, width, channels), got shape "
            f"{images.shape}"
        )
    for name, name_key in zip(names, jax.random.split(key, len(names)), strict=True):
        images = AUGMENTATIONS[name](name_key, images)
    return images
