"""Convolutional autoencoders: a deterministic one (`autoencoder`) and a variational one (`vae`).

Both read channels-last images `(*batch, H, W, C)` with pixels in [0, 1] through the same trunk:
an encoder of stride-2 'SAME' convolutions (each halves the height and width, rounding up) and a
dense layer to the latent code; a decoder of a dense layer back to the smallest feature map, then
per stage a nearest-neighbour 2x upsampling cropped to the encoder's size at that stage and a
'SAME' convolution (upsampling then convolving avoids the checkerboard of strided transposed
convolutions, Odena et al. 2016), and a sigmoid: reconstructions in [0, 1] of any input size.

    model = zoo.models.create("vae")
    variables = model.init(key, x)                  # x: (B, 28, 28, 1) in [0, 1]
    out = model.apply(variables, x)                 # VAEOutput: reconstruction, mean, logvar
    out = model.apply(variables, x, train=True, rngs={"latent": key})    # z ~ q(z|x)
    samples = zoo.models.generate(model, variables, key, 16)            # (16, 28, 28, 1)

The VAE (Kingma & Welling 2014) encodes a diagonal Gaussian `q(z|x) = N(mean, exp(logvar))`
over `latent_dim` values, decodes `z = mean + exp(logvar / 2) * eps`, `eps ~ N(0, I)`, and its
prior is `p(z) = N(0, I)`. Its decoder's outputs are the means of independent Bernoulli pixels;
zoo's 'vae' task trains it on the negative ELBO, `-log p(x|z) + KL(q(z|x) || p(z))`, with the
KL term in closed form (`kl_divergence`).
"""

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers.conv import Conv
from zoo.models.inputs import batch_shape, check_input, dtypes, flatten


class VAEOutput(NamedTuple):
    """What a `VAE` returns: `reconstruction` `(*batch, H, W, C)` in [0, 1], decoded from `z`,
    and the posterior's `mean` and `logvar` (log-variance) `(*batch, latent_dim)`."""

    reconstruction: jax.Array
    mean: jax.Array
    logvar: jax.Array


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """`KL(N(mean, diag(exp(logvar))) || N(0, I))` in nats, summed over the last axis:

        KL = 1/2 * sum_j (exp(logvar_j) + mean_j^2 - 1 - logvar_j)

    Args:
      mean: `(..., latent_dim)`.
      logvar: `(..., latent_dim)`, the log variances.

    Returns:
      `(...)`.
    """
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """A sample `z = mean + exp(logvar / 2) * eps`, `eps ~ N(0, I)`, differentiable in `mean`
    and `logvar` (the reparameterisation trick); same shape and dtype as `mean`."""
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


def _check_options(model: str, input_shape, features, kernel_size, latent_dim) -> None:
    if len(input_shape) != 3:
        raise ValueError(
            f"{model} input_shape must be (height, width, channels), got {tuple(input_shape)}"
        )
    if not features or min(features) < 1:
        raise ValueError(f"{model} features must be positive channel counts, got {features}")
    if kernel_size < 1 or latent_dim < 1:
        raise ValueError(
            f"{model} kernel_size and latent_dim must be >= 1, got {kernel_size} and {latent_dim}"
        )


def stage_sizes(input_shape: Sequence[int], stages: int) -> list[tuple[int, int]]:
    """`(height, width)` of the input and after each of `stages` stride-2 'SAME' convolutions:
    `[(28, 28), (14, 14), (7, 7)]` for two stages on 28x28."""
    sizes = [tuple(input_shape[:2])]
    for _ in range(stages):
        height, width = sizes[-1]
        sizes.append((-(-height // 2), -(-width // 2)))
    return sizes


def _upsample(h: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour 2x upsampling of `(B, h, w, C)`, cropped to `(B, *size, C)`: a
    broadcast and a reshape, whose gradient is a reshape and a sum."""
    b, height, width, c = h.shape
    h = jnp.broadcast_to(h[:, :, None, :, None, :], (b, height, 2, width, 2, c))
    return h.reshape(b, 2 * height, 2 * width, c)[:, : size[0], : size[1]]


class Encoder(nn.Module):
    """`(B, H, W, C)` -> per feature count a stride-2 'SAME' conv and relu -> flatten ->
    Dense(`outputs`): `(B, outputs)`."""

    features: Sequence[int]
    kernel_size: int
    outputs: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = (self.kernel_size, self.kernel_size)
        h = x  # (B, H, W, C)
        for features in self.features:
            h = nn.relu(Conv(features, kernel, strides=2, padding="SAME", **dtypes(self))(h))
        h = flatten(h)  # (B, h * w * features[-1])
        return nn.Dense(self.outputs, **dtypes(self))(h)  # (B, outputs)


class Decoder(nn.Module):
    """`(B, latent)` -> Dense and relu to the encoder's last map `(B, h, w, features[-1])` ->
    per stage, in reverse, upsample and a 'SAME' conv (relu between stages) -> sigmoid:
    `(B, *input_shape)` in [0, 1]."""

    input_shape: Sequence[int]
    features: Sequence[int]
    kernel_size: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        kernel = (self.kernel_size, self.kernel_size)
        sizes = stage_sizes(self.input_shape, len(self.features))
        (height, width), deepest = sizes[-1], self.features[-1]
        h = nn.relu(nn.Dense(height * width * deepest, **dtypes(self))(z))
        h = h.reshape(h.shape[0], height, width, deepest)  # (B, h, w, features[-1])
        widths = (*self.features[-2::-1], self.input_shape[-1])
        for stage, (size, features) in enumerate(zip(sizes[-2::-1], widths, strict=True)):
            h = _upsample(h, size)  # (B, *size, channels)
            h = Conv(features, kernel, padding="SAME", **dtypes(self))(h)  # (B, *size, features)
            if stage < len(widths) - 1:
                h = nn.relu(h)
        return nn.sigmoid(h)  # (B, H, W, C)


class ConvAutoencoder(nn.Module):
    """A convolutional autoencoder: `x -> code (latent_dim) -> reconstruction in [0, 1]`, trained
    on the mean squared error of its reconstructions ('reconstruct' task).

    Attributes:
      input_shape: `(height, width, channels)`; any size (the decoder crops to it).
      features: output channels of the encoder's stride-2 convolutions (the decoder mirrors
        them).
      kernel_size: convolution width and height.
      latent_dim: size of the code.
      dtype: of the computation, e.g. `jnp.bfloat16`; None: promoted from inputs and params.
      param_dtype: of the parameters.
    """

    input_shape: Sequence[int] = (28, 28, 1)
    features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    latent_dim: int = 16
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _check_options(
            "autoencoder", self.input_shape, self.features, self.kernel_size, self.latent_dim
        )
        super().__post_init__()

    def setup(self):
        self.encoder = Encoder(self.features, self.kernel_size, self.latent_dim, **dtypes(self))
        self.decoder = Decoder(self.input_shape, self.features, self.kernel_size, **dtypes(self))

    def encode(self, x: jax.Array) -> jax.Array:
        """Images `(*batch, H, W, C)` -> codes `(*batch, latent_dim)`."""
        h = check_input(x, self.input_shape, "autoencoder")  # (N, H, W, C)
        return self.encoder(h).reshape(*batch_shape(x, self.input_shape), self.latent_dim)

    def decode(self, z: jax.Array) -> jax.Array:
        """Codes `(*batch, latent_dim)` -> images `(*batch, H, W, C)` in [0, 1]."""
        return _decoded(self.decoder, z, self.latent_dim, self.input_shape, "autoencoder")

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Reconstructions `(*batch, H, W, C)` of `x` `(*batch, H, W, C)`."""
        del train  # no dropout or batch norm; kept so every model has one call signature
        return self.decode(self.encode(x))


class VAE(nn.Module):
    """A convolutional variational autoencoder with a Gaussian latent and Bernoulli pixels
    (Kingma & Welling 2014), trained on the negative ELBO ('vae' task).

    `z` is drawn from `q(z|x)` with the "latent" rng stream when training, or whenever that
    stream is given (`rngs={"latent": key}`, as zoo's evaluation does to estimate the ELBO);
    otherwise `z = mean`, so a plain `apply(variables, x)` reconstructs deterministically.

    Attributes:
      input_shape: `(height, width, channels)`; any size (the decoder crops to it).
      features: output channels of the encoder's stride-2 convolutions (the decoder mirrors
        them).
      kernel_size: convolution width and height.
      latent_dim: size of `z`.
      dtype: of the computation, e.g. `jnp.bfloat16`; None: promoted from inputs and params.
      param_dtype: of the parameters.
    """

    input_shape: Sequence[int] = (28, 28, 1)
    features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    latent_dim: int = 16
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _check_options("vae", self.input_shape, self.features, self.kernel_size, self.latent_dim)
        super().__post_init__()

    def setup(self):
        # One dense head gives both halves: [mean, logvar].
        self.encoder = Encoder(self.features, self.kernel_size, 2 * self.latent_dim, **dtypes(self))
        self.decoder = Decoder(self.input_shape, self.features, self.kernel_size, **dtypes(self))

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Images `(*batch, H, W, C)` -> the posterior's `mean` and `logvar`, `(*batch, latent)`
        each."""
        h = check_input(x, self.input_shape, "vae")  # (N, H, W, C)
        stats = self.encoder(h).reshape(*batch_shape(x, self.input_shape), 2 * self.latent_dim)
        mean, logvar = jnp.split(stats, 2, axis=-1)
        return mean, logvar

    def decode(self, z: jax.Array) -> jax.Array:
        """Latents `(*batch, latent_dim)` -> Bernoulli means `(*batch, H, W, C)` in [0, 1]."""
        return _decoded(self.decoder, z, self.latent_dim, self.input_shape, "vae")

    def __call__(self, x: jax.Array, *, train: bool = False) -> VAEOutput:
        mean, logvar = self.encode(x)
        if train or self.has_rng("latent"):
            z = reparameterize(self.make_rng("latent"), mean, logvar)
        else:
            z = mean
        return VAEOutput(self.decode(z), mean, logvar)


def _decoded(decoder, z, latent_dim, input_shape, model: str) -> jax.Array:
    h = check_input(z, (latent_dim,), f"{model} decode")  # (N, latent_dim)
    return decoder(h).reshape(*batch_shape(z, (latent_dim,)), *input_shape)


@functools.partial(jax.jit, static_argnames=("model", "num"))
def generate(model: VAE, variables, key: jax.Array, num: int) -> jax.Array:
    """`num` images `(num, H, W, C)` decoded from latents drawn from the prior `N(0, I)`; the
    same key gives the same images. Jitted, with `model` and `num` static.

    Raises:
      ValueError: for a model without a prior (anything but a `VAE`).
    """
    if not isinstance(model, VAE):
        raise ValueError(f"generate needs a VAE, which has a prior to sample; got {type(model)}")
    z = jax.random.normal(key, (num, model.latent_dim))  # (num, latent_dim)
    return model.apply(variables, z, method=VAE.decode)


@functools.partial(jax.jit, static_argnames="model")
def reconstruct(model: ConvAutoencoder | VAE, variables, x: jax.Array) -> jax.Array:
    """Deterministic reconstructions of `x` `(*batch, H, W, C)` (a VAE decodes its posterior
    mean); jitted, with `model` static."""
    outputs = model.apply(variables, x)
    return outputs.reconstruction if isinstance(outputs, VAEOutput) else outputs
