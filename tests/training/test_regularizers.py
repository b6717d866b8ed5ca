import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import models
from zoo.data.batching import Batch
from zoo.training import TrainConfig, create_train_state, loss_fn
from zoo.training.regularizers import penalty, regularized


def test_kernels_only_by_default():
    model = models.create("charlm", num_classes=7, hidden_sizes=(4,), embed_dim=3)
    params = model.init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32))["params"]
    flags = jax.tree_util.tree_flatten_with_path(regularized(params))[0]
    by_name = {jax.tree_util.keystr(path): on for path, on in flags}
    assert by_name["['Dense_0']['kernel']"] and by_name["['StackedRNN_0']['layer_0']['kernel']"]
    assert by_name["['StackedRNN_0']['layer_0']['recurrent_kernel']"]
    assert not by_name["['Dense_0']['bias']"] and not by_name["['Embed_0']['embedding']"]
    assert all(jax.tree.leaves(regularized(params, "all")))


def test_penalty_matches_numpy():
    params = {"a": {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([5.0])}}
    # kernels: 0.1 * (1 + 2) + 0.01 * (1 + 4); the bias is left out
    assert float(penalty(params, 0.1, 0.01)) == pytest.approx(0.35)
    assert float(penalty(params, 0.1, 0.01, "all")) == pytest.approx(0.35 + 0.5 + 0.25)


@pytest.mark.parametrize("name", ["convnet", "lstm"])
def test_l1_l2_change_the_gradient_by_exactly_the_penalty_derivative(name):
    l1, l2 = 1e-3, 5e-3
    if name == "convnet":
        model = models.create(name, input_shape=(6, 6, 1), features=(3,), batch_norm=True)
        x = jax.random.normal(jax.random.key(1), (4, 6, 6, 1))
    else:
        model = models.create(name, input_shape=(5, 3), hidden_sizes=(4,))
        x = jax.random.normal(jax.random.key(1), (4, 5, 3))
    batch = Batch(x, jnp.array([0, 1, 2, 3]), jnp.ones(4, bool))

    def grads(**penalties):
        state = create_train_state(model, TrainConfig(**penalties), x)
        return jax.grad(lambda p: loss_fn(p, state, batch, jax.random.key(2))[0])(state.params)

    params = create_train_state(model, TrainConfig(), x).params
    plain, penalized = grads(), grads(l1=l1, l2=l2)
    mask = regularized(params)
    for p, g0, g1, on in zip(
        *(jax.tree.leaves(t) for t in (params, plain, penalized, mask)), strict=True
    ):
        p = np.asarray(p, np.float64)
        expected = l1 * np.sign(p) + 2 * l2 * p if on else np.zeros_like(p)
        np.testing.assert_allclose(np.asarray(g1) - np.asarray(g0), expected, atol=1e-6)
