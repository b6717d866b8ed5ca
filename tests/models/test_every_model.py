"""Every registered model under JAX's transformations, forward mode and second order included,
and in mixed precision.

References: finite differences (`check_grads`), and the reverse-mode Jacobian and Hessian that
zoo's hand-written CPU gradients give (`runtime.hand_written_gradients`, as in zoo's train
steps), against forward mode through the plain layers.
"""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from zoo import models, runtime

# Small sizes of every model, and one input batch each (float inputs unless tokens).
SMALL = {
    "cnn": ({}, (2, 28, 28, 1)),
    "convnet": ({"input_shape": (8, 6, 2), "features": (3, 4), "dense": (5,)}, (2, 8, 6, 2)),
    "rnn": ({"input_shape": (4, 3), "hidden_sizes": (3, 2), "num_classes": 5}, (2, 4, 3)),
    "birnn": ({"input_shape": (4, 3), "hidden_sizes": (3,), "num_classes": 5}, (2, 4, 3)),
    "lstm": ({"input_shape": (4, 3), "hidden_sizes": (3, 2), "num_classes": 5}, (2, 4, 3)),
    "gru": ({"input_shape": (4, 3), "hidden_sizes": (3, 2), "num_classes": 5}, (2, 4, 3)),
    "bilstm": ({"input_shape": (4, 3), "hidden_sizes": (3,), "num_classes": 5}, (2, 4, 3)),
    "bigru": ({"input_shape": (4, 3), "hidden_sizes": (3,), "num_classes": 5}, (2, 4, 3)),
    "tagger": (
        {"vocab_size": None, "input_shape": (4, 3), "hidden_sizes": (3,), "num_classes": 5},
        (2, 4, 3),
    ),
    "charlm": ({"num_classes": 7, "embed_dim": 3, "hidden_sizes": (4,)}, (2, 5)),
    "cnn_lstm": (
        {"input_shape": (3, 6, 6, 1), "features": (2,), "embed_dim": 3, "hidden_sizes": (3,)},
        (2, 3, 6, 6, 1),
    ),
    "convlstm": ({"input_shape": (3, 5, 6, 2), "filters": (2,), "num_classes": 3}, (2, 3, 5, 6, 2)),
    "forecast": ({"input_shape": (5, 2), "hidden_sizes": (3,), "horizon": 2}, (2, 5, 2)),
    "tcn": (
        {"input_shape": (5, 3), "channels": (3, 2), "kernel_size": 2, "num_classes": 4},
        (2, 5, 3),
    ),
    "tcn_forecast": ({"input_shape": (6, 2), "channels": (3,), "horizon": 2}, (2, 6, 2)),
    "autoencoder": ({"input_shape": (5, 6, 2), "features": (3, 4), "latent_dim": 2}, (2, 5, 6, 2)),
    "vae": ({"input_shape": (6, 5, 2), "features": (3, 4), "latent_dim": 3}, (2, 6, 5, 2)),
    "lenet5": ({"input_shape": (28, 28, 1), "num_classes": 3}, (2, 28, 28, 1)),
    "lenet5_relu": ({"input_shape": (32, 32, 1), "num_classes": 3}, (2, 32, 32, 1)),
    "vgg11": (
        {"input_shape": (8, 8, 1), "width": 2, "dense": (3,), "num_classes": 3},
        (2, 8, 8, 1),
    ),
    "vgg11_bn": (
        {"input_shape": (7, 9, 2), "width": 2, "dense": (), "num_classes": 3},
        (2, 7, 9, 2),
    ),
    "vgg16": (
        {"input_shape": (4, 4, 1), "width": 1, "dense": (3,), "num_classes": 3},
        (2, 4, 4, 1),
    ),
    "vgg16_bn": (
        {"input_shape": (4, 4, 1), "width": 1, "dense": (), "num_classes": 3},
        (2, 4, 4, 1),
    ),
    "resnet18": ({"input_shape": (16, 16, 1), "width": 2, "num_classes": 3}, (2, 16, 16, 1)),
    "resnet34": ({"input_shape": (8, 8, 2), "width": 1, "num_classes": 3}, (2, 8, 8, 2)),
    "resnet50": ({"input_shape": (12, 12, 1), "width": 2, "num_classes": 3}, (2, 12, 12, 1)),
    "resnet20": ({"input_shape": (8, 8, 1), "width": 2, "num_classes": 3}, (2, 8, 8, 1)),
    "mobilenet_v2": ({"input_shape": (16, 16, 1), "alpha": 0.1, "num_classes": 3}, (2, 16, 16, 1)),
    # Without targets it decodes greedily: the logits of max_length steps, each step fed the
    # previous argmax (locally constant, so derivatives pass through the logits only).
    "seq2seq": (
        {
            "num_classes": 6,
            "vocab_size": 5,
            "embed_dim": 3,
            "encoder_sizes": (3,),
            "hidden_size": 4,
            "attention_size": 3,
            "max_length": 3,
        },
        (2, 4),
    ),
}
# Residual blocks and batch norm (evaluation mode) in the configurable stack as well.
VARIANTS = {
    "rnn-relu": (
        "rnn",
        {"input_shape": (4, 3), "hidden_sizes": (3,), "num_classes": 5, "activation": "relu"},
        (2, 4, 3),
    ),
    "convnet-residual-bn": (
        "convnet",
        {"input_shape": (6, 6, 1), "features": (3,), "residual": True, "batch_norm": True},
        (2, 6, 6, 1),
    ),
    "convnet-tanh-avg": (
        "convnet",
        {"input_shape": (8, 6, 2), "features": (3, 4), "activation": "tanh", "pool": "avg"},
        (2, 8, 6, 2),
    ),
    "seq2seq-gru-luong": (
        "seq2seq",
        {
            "num_classes": 5,
            "vocab_size": 6,
            "embed_dim": 2,
            "encoder_sizes": (3, 2),
            "hidden_size": 3,
            "cell": "gru",
            "bidirectional": False,
            "attention": "luong",
            "max_length": 4,
        },
        (2, 3),
    ),
}
# The option bounding the token ids of models that take them.
TOKEN_RANGE = {"language": "num_classes", "seq2seq": "vocab_size"}
CASES = {name: (name, *SMALL[name]) for name in SMALL} | VARIANTS
# Rows whose layers other cases run as well: the bottleneck ResNet with the ImageNet stem and
# projections stands for resnet18/34, the CIFAR one for option A shortcuts, lenet5 for its relu
# twin; the VGGs are convnet's conv - batch norm - relu - max pool with 'SAME' pools (checked in
# tests/layers), and at small widths their pools see tied zeros, where derivatives are one-sided.
SAME_LAYERS = {"resnet18", "resnet34", "lenet5_relu", *models.names("vgg*")}
PIECEWISE_LINEAR = {  # relu, max pooling
    "autoencoder",
    "vae",
    "cnn",
    "convnet",
    "convnet-residual-bn",
    "cnn_lstm",
    "convlstm",  # global max pooling
    "rnn-relu",
    *models.names("tcn*"),
    *models.names("lenet5_relu"),
    *models.names("vgg*"),
    *models.names("resnet*"),
    "mobilenet_v2",
}


def test_every_registered_model_is_covered():
    assert sorted(SMALL) == models.names()


def _model_and_inputs(case):
    name, options, shape = CASES[case]
    model = models.create(name, **options)
    if models.task(name) in TOKEN_RANGE:
        high = options[TOKEN_RANGE[models.task(name)]]
        x = jax.random.randint(jax.random.key(1), shape, 0, high)
    else:
        x = jax.random.normal(jax.random.key(1), shape)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    as64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)  # noqa: E731
    x = x if models.task(name) in TOKEN_RANGE else as64(x)
    return model, _offset_biases(as64(variables)), x


def _offset_biases(variables):
    """Biases (batch norm's included) moved off their zero init: a bias-free convolution of an
    all-zero patch (relu's output) is exactly 0, a kink of the next relu that finite differences
    straddle."""
    rng = np.random.default_rng(0)

    def offset(path, leaf):
        is_bias = path[0].key == "params" and path[-1].key == "bias"
        return leaf + 0.1 * rng.normal(size=leaf.shape) if is_bias else leaf

    return jax.tree_util.tree_map_with_path(offset, variables)


def _as_array(outputs):
    """A model's outputs as one array: a VAE's (reconstruction, mean, logvar) raveled and joined."""
    leaves = jax.tree.leaves(outputs)
    return leaves[0] if len(leaves) == 1 else jnp.concatenate([jnp.ravel(a) for a in leaves])


def _output(model, variables):
    @jax.jit  # one compile per transformation instead of op-by-op dispatch through the scans
    def apply(params, x):
        return _as_array(model.apply({**variables, "params": params}, x))

    return apply


# birnn, bilstm and bigru are rnn, lstm and gru run both ways, which tests/layers checks the
# same way.
@pytest.mark.parametrize("case", sorted(set(CASES) - {"birnn", "bilstm", "bigru"} - SAME_LAYERS))
def test_forward_and_reverse_derivatives_match_finite_differences(case):
    # First order: second derivatives are checked against the hand-written reverse mode below
    # (and against finite differences in tests/layers). A smaller step keeps the differences
    # off relu kinks and max-pool switches.
    eps = 1e-6 if case in PIECEWISE_LINEAR else 1e-4
    with jax.enable_x64(True):
        model, variables, x = _model_and_inputs(case)
        apply = _output(model, variables)
        modes = ["fwd", "rev"]
        if x.dtype.kind == "i":  # token ids: derivatives with respect to the parameters only
            check_grads(lambda p: apply(p, x), (variables["params"],), 1, modes, eps=eps)
        else:
            check_grads(apply, (variables["params"], x), 1, modes, eps=eps)


# resnet50 is strided 1x1 and 3x3 ConvNorms, residual adds and max pooling, which resnet20 and
# cnn run at second order; mobilenet_v2 adds depthwise convolutions, plain JAX in both directions
# (no hand-written gradient), checked at second order in tests/layers/test_conv.py. Forward mode
# is checked on both above (60 s and 45 s saved here).
@pytest.mark.parametrize("case", sorted(set(CASES) - SAME_LAYERS - {"resnet50", "mobilenet_v2"}))
def test_jvp_and_hessian_vector_products_match_the_hand_written_gradients(case):
    with jax.enable_x64(True):
        model, variables, x = _model_and_inputs(case)
        apply = _output(model, variables)
        params = variables["params"]
        rng = np.random.default_rng(2)  # NumPy: eager jax.random compiles once per leaf shape
        tangent = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), params)

        def loss(p):
            return jnp.sum(jnp.sin(apply(p, x)))

        def flat(tree):
            return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(tree)])

        def np_flat(tree):
            return np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])

        # Forward mode through the plain layers.
        _, jvp = jax.jit(lambda p, t: jax.jvp(lambda p: apply(p, x), (p,), (t,)))(params, tangent)
        _, hvp = jax.jit(lambda p, t: jax.jvp(jax.grad(loss), (p,), (t,)))(params, tangent)

        # Reverse mode through the hand-written gradients, with the same tangent.
        @jax.jit
        def reverse(params, tangent):
            with runtime.hand_written_gradients():
                jacobian = jax.jacrev(
                    lambda p: _as_array(model.apply({**variables, "params": p}, x))
                )
                return jacobian(params), jax.grad(
                    lambda p: jnp.vdot(flat(jax.grad(loss_hw)(p)), flat(tangent))
                )(params)

        def loss_hw(p):  # traced inside `reverse`, so under hand_written_gradients
            return jnp.sum(jnp.sin(_as_array(model.apply({**variables, "params": p}, x))))

        jacobian, reverse_hvp = jax.device_get(reverse(params, tangent))
        leaves, tangents = jax.tree.leaves(jacobian), jax.tree.leaves(tangent)
        expected = sum(np.tensordot(j, t, t.ndim) for j, t in zip(leaves, tangents, strict=True))
        np.testing.assert_allclose(jvp, expected, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(np_flat(hvp), np_flat(reverse_hvp), rtol=1e-6, atol=1e-9)
        if case in ("charlm", "cnn_lstm", "gru"):  # the whole Hessian: jacfwd of jacrev
            unravel = jax.flatten_util.ravel_pytree(params)[1]
            hessian = jax.jit(jax.hessian(lambda v: loss(unravel(v))))(np_flat(params))
            np.testing.assert_allclose(
                hessian @ np_flat(tangent), np_flat(hvp), rtol=1e-6, atol=1e-9
            )


def test_runtime_jit_takes_forward_mode_of_a_model():
    model, variables, x = _model_and_inputs("cnn")
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)
    x = jnp.asarray(x, jnp.float32)

    @runtime.jit
    def directional(x, v):
        return jax.jvp(lambda x: model.apply(variables, x), (x,), (v,))[1]

    v = jnp.ones_like(x)
    expected = jax.jit(directional.__wrapped__)(x, v)
    np.testing.assert_allclose(directional(x, v), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "case, dtype",
    [(case, jnp.bfloat16) for case in sorted(set(CASES) - SAME_LAYERS)]
    + [("cnn", jnp.float16), ("convnet-residual-bn", jnp.float16), ("gru", jnp.float16)],
)
def test_mixed_precision_keeps_params_in_param_dtype_and_computes_in_dtype(case, dtype):
    name, options, shape = CASES[case]
    model, full = models.create(name, **options, dtype=dtype), models.create(name, **options)
    rng = np.random.default_rng(1)
    if models.task(name) in TOKEN_RANGE:
        x = rng.integers(0, options[TOKEN_RANGE[models.task(name)]], shape).astype(np.int32)
    else:
        x = rng.normal(size=shape).astype(np.float32)  # float32 input, as from a data loader
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    assert {a.dtype for a in jax.tree.leaves(shapes["params"])} == {jnp.dtype(jnp.float32)}
    variables = jax.jit(full.init)(jax.random.key(0), x)  # one init compiled, not two
    chex.assert_trees_all_equal_shapes_and_dtypes(variables, shapes)
    y = _as_array(jax.jit(model.apply)(variables, x))
    if models.task(name) != "regress":  # the forecasters add their float32 input's last value
        assert y.dtype == dtype
    reference = _as_array(jax.jit(full.apply)(variables, x))
    tolerance = 0.05 if dtype == jnp.bfloat16 else 0.01
    scale = float(jnp.max(jnp.abs(reference))) + 1e-3
    assert float(jnp.max(jnp.abs(y.astype(jnp.float32) - reference))) <= tolerance * scale
    grads = jax.jit(
        jax.grad(lambda p: jnp.sum(_as_array(model.apply({**variables, "params": p}, x))))
    )(variables["params"])
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
