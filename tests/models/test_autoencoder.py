"""The autoencoder and the VAE: shapes, output range, the KL term against NumPy and Monte Carlo,
the reparameterisation gradient, and sampling from the prior."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import models
from zoo.models.autoencoder import reparameterize, stage_sizes

# Distinct sizes, and odd ones the decoder must crop back to: 7 -> 4 -> 2 -> 4 -> 7.
SMALL = {"input_shape": (7, 10, 3), "features": (4, 5), "latent_dim": 6}


def _init(name, batch=(2,)):
    model = models.create(name, **SMALL)
    x = jax.random.uniform(jax.random.key(1), (*batch, *model.input_shape))
    # One input shape to initialise on: its compiled init is cached for the session.
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *model.input_shape)))
    return model, variables, x


def test_both_models_build_with_no_options_for_the_digits():
    for name in ("autoencoder", "vae"):
        model = models.create(name)
        x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        assert jax.eval_shape(models.reconstruct, model, variables, x).shape == (3, 28, 28, 1)
    assert models.task("autoencoder") == "reconstruct" and models.task("vae") == "vae"


def test_stage_sizes_halve_rounding_up():
    assert stage_sizes((28, 28, 1), 2) == [(28, 28), (14, 14), (7, 7)]
    assert stage_sizes((7, 10, 3), 3) == [(7, 10), (4, 5), (2, 3), (1, 2)]


@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
def test_shapes_for_any_batch_axes(batch):
    autoencoder, variables, x = _init("autoencoder", batch)
    chex.assert_shape(autoencoder.apply(variables, x), (*batch, 7, 10, 3))
    chex.assert_shape(autoencoder.apply(variables, x, method="encode"), (*batch, 6))
    vae, variables, x = _init("vae", batch)
    out = vae.apply(variables, x)
    assert isinstance(out, models.VAEOutput)
    chex.assert_shape(out.reconstruction, (*batch, 7, 10, 3))
    chex.assert_shape([out.mean, out.logvar], (*batch, 6))
    z = jnp.zeros((*batch, 6))
    chex.assert_shape(vae.apply(variables, z, method="decode"), (*batch, 7, 10, 3))


def test_outputs_are_in_0_1_even_for_large_inputs():
    for name in ("autoencoder", "vae"):
        model, variables, _ = _init(name)
        x = 100.0 * jax.random.normal(jax.random.key(3), (4, 7, 10, 3))
        y = np.asarray(models.reconstruct(model, variables, x))
        assert y.min() >= 0.0 and y.max() <= 1.0 and y.std() > 0


def test_bad_inputs_and_options_are_refused():
    model, variables, _ = _init("vae")
    with pytest.raises(ValueError, match=r"vae expects input of shape \(batch, 7, 10, 3\)"):
        model.apply(variables, jnp.zeros((2, 7, 10, 1)))
    with pytest.raises(ValueError, match="floating-point"):
        model.apply(variables, jnp.zeros((2, 7, 10, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"vae decode expects input of shape \(batch, 6\)"):
        model.apply(variables, jnp.zeros((2, 5)), method="decode")
    with pytest.raises(ValueError, match="input_shape must be \\(height, width, channels\\)"):
        models.create("autoencoder", input_shape=(28, 28))
    with pytest.raises(ValueError, match="latent_dim must be >= 1"):
        models.create("vae", latent_dim=0)


def numpy_kl(mean, logvar):
    """KL(N(m, s^2) || N(0, 1)) = log(1 / s) + (s^2 + m^2) / 2 - 1/2 per dimension, summed."""
    std = np.exp(0.5 * np.asarray(logvar, np.float64))
    mean = np.asarray(mean, np.float64)
    return np.sum(-np.log(std) + (std**2 + mean**2) / 2 - 0.5, axis=-1)


def test_kl_divergence_matches_numpy_and_a_monte_carlo_estimate():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 4)).astype(np.float32)
    logvar = rng.normal(scale=0.5, size=(3, 4)).astype(np.float32)
    kl = np.asarray(models.kl_divergence(mean, logvar))
    np.testing.assert_allclose(kl, numpy_kl(mean, logvar), rtol=1e-5)
    assert models.kl_divergence(jnp.zeros(5), jnp.zeros(5)) == 0  # q is the prior

    # E_q[log q(z) - log p(z)] over samples of q, independent of the closed form.
    def log_normal(z, m, log_var):
        return -0.5 * (np.log(2 * np.pi) + log_var + (z - m) ** 2 / np.exp(log_var))

    samples = 200_000
    z = mean + np.exp(0.5 * logvar) * rng.standard_normal((samples, 3, 4))
    ratios = (log_normal(z, mean, logvar) - log_normal(z, 0.0, 0.0)).sum(-1)  # (S, 3)
    estimate, error = ratios.mean(0), ratios.std(0) / np.sqrt(samples)
    assert np.all(np.abs(estimate - kl) < 5 * error), (estimate, kl, error)


def test_reparameterisation_gradient_reaches_mean_and_logvar():
    key = jax.random.key(4)
    mean, logvar = jnp.array([0.5, -1.0, 2.0]), jnp.array([0.1, -0.3, 0.7])
    eps = jax.random.normal(key, (3,))
    np.testing.assert_allclose(
        reparameterize(key, mean, logvar), mean + jnp.exp(logvar / 2) * eps, rtol=1e-6
    )
    d_mean, d_logvar = jax.jacobian(reparameterize, argnums=(1, 2))(key, mean, logvar)
    np.testing.assert_allclose(d_mean, np.eye(3), atol=1e-7)
    np.testing.assert_allclose(d_logvar, np.diag(0.5 * np.exp(logvar / 2) * eps), rtol=1e-5)


def test_training_samples_z_so_the_logvar_head_gets_a_gradient():
    model, variables, x = _init("vae")

    def grads(train):
        def loss(params):
            out = model.apply({"params": params}, x, train=train, rngs={"latent": key})
            return jnp.sum(out.reconstruction)  # logvar only reaches it through z

        return jax.grad(loss)(variables["params"])

    key = jax.random.key(5)
    head = lambda g: g["encoder"]["Dense_0"]["kernel"]  # noqa: E731 - [mean | logvar] columns
    sampled, at_mean = head(grads(True)), head(grads(False))
    # rngs given: z is sampled in evaluation mode too; without them it is the mean.
    assert np.abs(sampled[:, :6]).sum() > 0 and np.abs(sampled[:, 6:]).sum() > 0
    eval_grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x).reconstruction))(
        variables["params"]
    )
    assert np.abs(head(eval_grads)[:, 6:]).sum() == 0
    np.testing.assert_allclose(sampled, at_mean, rtol=1e-6)  # the same key: the same z


def test_z_is_the_mean_unless_sampling():
    model, variables, x = _init("vae")
    out = model.apply(variables, x)
    np.testing.assert_allclose(
        out.reconstruction, model.apply(variables, out.mean, method="decode"), rtol=1e-6
    )
    np.testing.assert_array_equal(models.reconstruct(model, variables, x), out.reconstruction)
    sampled = model.apply(variables, x, train=True, rngs={"latent": jax.random.key(6)})
    assert not np.allclose(sampled.reconstruction, out.reconstruction)
    np.testing.assert_array_equal(sampled.mean, out.mean)
    with pytest.raises(Exception, match="latent"):  # training without the stream's key
        model.apply(variables, x, train=True)


def test_generate_decodes_the_prior_deterministically_per_key():
    model, variables, _ = _init("vae")
    key = jax.random.key(7)
    samples = models.generate(model, variables, key, 5)
    chex.assert_shape(samples, (5, 7, 10, 3))
    assert 0 <= float(samples.min()) and float(samples.max()) <= 1
    np.testing.assert_array_equal(samples, models.generate(model, variables, key, 5))
    assert not np.allclose(samples, models.generate(model, variables, jax.random.key(8), 5))
    z = jax.random.normal(key, (5, 6))  # the prior N(0, I)
    np.testing.assert_allclose(
        samples, model.apply(variables, z, method="decode"), rtol=1e-5, atol=1e-6
    )
    inside = jax.jit(lambda v, k: models.generate(model, v, k, 5).mean())(variables, key)
    np.testing.assert_allclose(inside, samples.mean(), rtol=1e-5)
    autoencoder, ae_variables, _ = _init("autoencoder")
    with pytest.raises(ValueError, match="generate needs a VAE"):
        models.generate(autoencoder, ae_variables, key, 2)
