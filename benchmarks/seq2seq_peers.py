"""zoo's `seq2seq` (bidirectional LSTM encoder, Bahdanau attention, LSTM decoder) as
`compare.py`'s peers write it: a `torch.nn.Module` and a Keras 3 model computing the equations of
`zoo.models.seq2seq`'s docstring, each with a converter of its weights into zoo's variables, so
`compare.agreement` can check that every implementation computes zoo's function. No Flax peer:
zoo's model is already a Flax module.

The benchmark's batch is the `numbers` task's (`zoo.data.numbers`): random integers below
10**S as source digits `(B, S)` with their `lengths`, and their English words, EOS and PAD as
targets `(B, T)`. Every implementation trains with teacher forcing (the decoder reads BOS, then
the targets shifted right) and the mean cross-entropy over the target tokens that are not PAD
(`zoo.training.steps`' seq2seq loss), and infers with the same teacher-forced forward pass.

What has to match zoo, not each framework's habit:
- The encoder skips each source's padding in both directions: PyTorch packs the batch
  (`pack_padded_sequence`), Keras masks PAD (`Bidirectional` then zeroes padded outputs, as zoo
  does). The decoder starts from `tanh(W_b [h_fwd; h_bwd] + b_b)` of the final valid states and
  a zero cell state.
- Attention scores of padded source steps are -inf before the softmax. The query and combine
  layers have no bias, the score is a vector `v` (PyTorch's and Keras' `Dense(1)` without bias).
- PyTorch's two LSTM biases import as their sum; Keras' LSTM layout is zoo's.

PyTorch and Keras are imported only when their builders run, so a missing peer costs nothing.
"""

import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple

import compiled  # benchmarks/compiled.py, beside this script
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from data_parallel import SplitBatch  # benchmarks/data_parallel.py, beside this script

from zoo.data.numbers import numbers_split
from zoo.layers import importers
from zoo.models.seq2seq import BOS, PAD, Seq2Seq

Variables = dict[str, Any]
Step = Callable[[], None]


class Inputs(NamedTuple):
    """One batch: source ids `src` `(B, S)`, their `lengths` `(B,)` and target ids
    `targets` `(B, T)` (the teacher-forced decoder's inputs, shifted, and the labels)."""

    src: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray


def batch(size: int, source_length: int, target_length: int, seed: int = 0) -> Inputs:
    """`size` random integers below `10**source_length` as the numbers task encodes them."""
    numbers = np.random.default_rng(seed).integers(0, 10**source_length, size)
    split = numbers_split(numbers, source_length, target_length)
    return Inputs(split.x, split.lengths, split.y)


def check_supported(model: Seq2Seq) -> None:
    """The peers implement zoo's default architecture: one bidirectional LSTM encoder layer,
    an LSTM decoder and Bahdanau attention (any sizes)."""
    settings = (model.cell, model.bidirectional, model.attention, len(model.encoder_sizes))
    if settings != ("lstm", True, "bahdanau", 1):
        raise ValueError(
            "the seq2seq peers implement cell='lstm', bidirectional, attention='bahdanau' and one "
            f"encoder layer; got (cell, bidirectional, attention, layers) = {settings}"
        )


def flops(model: Seq2Seq, inputs: Inputs) -> dict[str, float]:
    """Matmul FLOPs of a teacher-forced forward pass, counted by hand (XLA's cost analysis does
    not multiply a scan body by its trip count); training counts 3x inference, as
    `compare.rnn_flops` does."""
    (batch_size, steps), targets = inputs.src.shape, inputs.targets.shape[1]
    embed, hidden, attention = model.embed_dim, model.hidden_size, model.attention_size
    encoder, memory = model.encoder_sizes[0], model.memory_size
    encode = 2 * steps * 2 * (embed + encoder) * 4 * encoder  # both directions
    encode += 2 * steps * memory * attention + 2 * memory * hidden  # keys, bridge
    decode_step = (
        2 * hidden * attention  # query
        + 2 * steps * attention  # v^T tanh(...)
        + 2 * steps * memory  # context
        + 2 * (embed + memory + hidden) * 4 * hidden  # cell
        + 2 * (hidden + memory) * hidden  # combine
        + 2 * hidden * model.num_classes  # output
    )
    infer = batch_size * (encode + targets * decode_step)
    return {"train": 3.0 * infer, "infer": float(infer)}


def masked_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy over the target tokens that are not PAD: `(B, T, V)`, `(B, T)` -> ()."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    weights = (targets != PAD).astype(jnp.float32)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


# --- zoo (JAX) ----------------------------------------------------------------------------------


def jax_steps(
    model: nn.Module,
    inputs: Inputs,
    dtype,
    jit: Callable = jax.jit,
    gradients: Callable = contextlib.nullcontext,
    devices: int = 1,
) -> dict[str, Any]:
    """Train and inference steps of zoo's model compiled by `jit`, the gradient taken inside
    `gradients()` (zoo's row asks for its hand-written CPU gradients there, as zoo's own train
    step does), the batch split over `devices` CPU devices; `compare.jax_steps` for a model with
    lengths and targets."""
    src, lengths, targets = (jnp.asarray(a) for a in inputs)
    initial = jax.jit(model.init)(jax.random.key(0), src, lengths, targets)
    params = compiled.cast(initial["params"], dtype)
    tx = optax.adam(1e-3)
    state = [params, tx.init(params)]

    def loss(params, src, lengths, targets):
        logits = model.apply({"params": params}, src, lengths, targets=targets)  # (B, T, V)
        return masked_cross_entropy(logits, targets)

    def grad(params, src, lengths, targets):
        with gradients():
            return jax.grad(loss)(params, src, lengths, targets)

    def infer(params, src, lengths, targets):  # teacher-forced, as training's forward pass
        return model.apply({"params": params}, src, lengths, targets=targets)

    if devices > 1:  # each device's rows; gradients averaged
        split = SplitBatch(devices, replicated=1)
        grad, infer = split.mean(grad, 4), split.rows(infer, 4)
        state, (src, lengths, targets) = split.whole(state), split.split((src, lengths, targets))

    def train(params, opt_state, src, lengths, targets):
        grads = grad(params, src, lengths, targets)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    batch = (src, lengths, targets)
    return compiled.compile_steps(jit, train, state, batch, infer, lambda s: (s[0], *batch))


def zoo_logits(model: Seq2Seq, variables: Variables, inputs: Inputs) -> np.ndarray:
    """zoo's teacher-forced logits `(B, T, V)`: what every peer's are compared with."""
    apply = jax.jit(lambda v, s, n, t: model.apply(v, s, n, targets=t))
    return np.asarray(apply(variables, *inputs))


# --- PyTorch ------------------------------------------------------------------------------------


def torch_seq2seq(model: Seq2Seq):
    """A `torch.nn.Module` of `model`'s sizes: `forward(src, lengths, targets)` -> logits
    `(B, T, V)`, the decoder stepping in a Python loop."""
    import torch
    from torch import nn as tnn

    check_supported(model)
    embed, hidden, attention = model.embed_dim, model.hidden_size, model.attention_size
    memory = model.memory_size

    class TorchSeq2Seq(tnn.Module):
        def __init__(self):
            super().__init__()
            self.source_embedding = tnn.Embedding(model.vocab_size, embed)
            self.encoder = tnn.LSTM(
                embed, model.encoder_sizes[0], batch_first=True, bidirectional=True
            )
            self.bridge = tnn.Linear(memory, hidden)
            self.memory_layer = tnn.Linear(memory, attention)
            self.target_embedding = tnn.Embedding(model.num_classes, embed)
            self.cell = tnn.LSTMCell(embed + memory, hidden)
            self.query = tnn.Linear(hidden, attention, bias=False)
            self.score = tnn.Linear(attention, 1, bias=False)
            self.combine = tnn.Linear(hidden + memory, hidden, bias=False)
            self.output = tnn.Linear(hidden, model.num_classes)

        def forward(self, src, lengths, targets):
            steps = src.shape[1]
            packed = tnn.utils.rnn.pack_padded_sequence(
                self.source_embedding(src), lengths, batch_first=True, enforce_sorted=False
            )
            packed, (h_n, _) = self.encoder(packed)
            values, _ = tnn.utils.rnn.pad_packed_sequence(  # zeros at padded steps
                packed, batch_first=True, total_length=steps
            )  # (B, S, C)
            keys = self.memory_layer(values)  # (B, S, A)
            mask = torch.arange(steps)[None, :] < lengths[:, None]  # (B, S)
            s = torch.tanh(self.bridge(torch.cat([h_n[0], h_n[1]], dim=-1)))  # (B, H)
            state = (s, torch.zeros_like(s))
            bos = torch.full_like(targets[:, :1], BOS)
            embedded = self.target_embedding(torch.cat([bos, targets[:, :-1]], dim=1))
            logits = []
            for t in range(targets.shape[1]):
                projected = self.query(state[0])[:, None, :]  # (B, 1, A)
                scores = self.score(torch.tanh(keys + projected))[..., 0]  # (B, S)
                scores = scores.masked_fill(~mask, float("-inf"))
                weights = torch.softmax(scores, dim=-1)
                context = torch.einsum("bs,bsc->bc", weights, values)  # (B, C)
                state = self.cell(torch.cat([embedded[:, t], context], dim=-1), state)
                attentional = torch.tanh(self.combine(torch.cat([state[0], context], dim=-1)))
                logits.append(self.output(attentional))
            return torch.stack(logits, dim=1)  # (B, T, V)

    return TorchSeq2Seq()


def torch_to_zoo(state_dict: dict[str, Any]) -> Variables:
    """`TorchSeq2Seq`'s `state_dict()` as zoo's variables."""
    state = {key: np.asarray(value.detach().cpu().float()) for key, value in state_dict.items()}

    def part(prefix: str, suffix: str = "") -> dict[str, np.ndarray]:
        n = len(prefix)
        return {k[n:] + suffix: v for k, v in state.items() if k.startswith(prefix)}

    def dense(prefix: str) -> dict[str, np.ndarray]:
        return importers.dense_from_torch(state[prefix + "weight"], state.get(prefix + "bias"))

    cell = importers.from_torch(part("cell.", "_l0"), "lstm")["layer_0"]  # LSTMCell: one layer
    params = {
        "source_embedding": {"embedding": state["source_embedding.weight"]},
        "encoder": importers.from_torch(part("encoder."), "lstm"),
        "bridge": dense("bridge."),
        "memory_layer": dense("memory_layer."),
        "decoder": {
            "embedding": state["target_embedding.weight"],
            "cell": cell,
            "query": {"kernel": state["query.weight"].T},
            "score": {"kernel": state["score.weight"][0]},
            "combine": {"kernel": state["combine.weight"].T},
            "output": dense("output."),
        },
    }
    return {"params": params}


def torch_steps(model: Seq2Seq, inputs: Inputs, dtype: str) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    net = torch_seq2seq(model)
    src, lengths, targets = (torch.from_numpy(a).long() for a in inputs)
    net.eval()
    with torch.no_grad():
        logits = net(src, lengths, targets).numpy()
    variables = torch_to_zoo(net.state_dict())
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = net.to(device=device, dtype=torch_dtype)
    src, targets = src.to(device), targets.to(device)  # lengths stay on the CPU: packing's
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    vocab = model.num_classes

    def run_train():
        optimizer.zero_grad()
        logits = net(src, lengths, targets).float().reshape(-1, vocab)
        torch.nn.functional.cross_entropy(logits, targets.reshape(-1), ignore_index=PAD).backward()
        optimizer.step()
        sync()

    def run_infer():
        with torch.no_grad():
            net(src, lengths, targets)
        sync()

    return {"train": run_train, "infer": run_infer, "logits": logits, "zoo_variables": variables}


# --- Keras 3 ------------------------------------------------------------------------------------


def keras_seq2seq(model: Seq2Seq):
    """A Keras 3 model of `model`'s sizes: `call((src, targets))` -> logits `(B, T, V)`; the
    source's lengths are its non-PAD ids (the numbers task pads only at the end), the decoder a
    Python loop over the target steps of an `LSTMCell`."""
    import keras
    from keras import layers, ops

    check_supported(model)
    hidden = model.hidden_size

    class KerasSeq2Seq(keras.Model):
        def __init__(self):
            super().__init__()
            self.source_embedding = layers.Embedding(model.vocab_size, model.embed_dim)
            self.encoder = layers.Bidirectional(
                layers.LSTM(model.encoder_sizes[0], return_sequences=True, return_state=True)
            )
            self.bridge = layers.Dense(hidden, activation="tanh")
            self.memory_layer = layers.Dense(model.attention_size)
            self.target_embedding = layers.Embedding(model.num_classes, model.embed_dim)
            self.cell = layers.LSTMCell(hidden)
            self.query = layers.Dense(model.attention_size, use_bias=False)
            self.score = layers.Dense(1, use_bias=False)
            self.combine = layers.Dense(hidden, activation="tanh", use_bias=False)
            self.output_layer = layers.Dense(model.num_classes)

        def call(self, inputs):
            src, targets = inputs
            mask = ops.not_equal(src, PAD)  # (B, S)
            values, h_forward, _, h_backward, _ = self.encoder(
                self.source_embedding(src), mask=mask
            )  # values (B, S, C), zero at padded steps
            keys = self.memory_layer(values)  # (B, S, A)
            s = self.bridge(ops.concatenate([h_forward, h_backward], axis=-1))  # (B, H)
            state = [s, ops.zeros_like(s)]
            bos = ops.full_like(targets[:, :1], BOS)
            embedded = self.target_embedding(ops.concatenate([bos, targets[:, :-1]], axis=1))
            logits = []
            for t in range(targets.shape[1]):
                projected = ops.expand_dims(self.query(state[0]), 1)  # (B, 1, A)
                scores = ops.squeeze(self.score(ops.tanh(keys + projected)), -1)  # (B, S)
                scores = ops.where(mask, scores, float("-inf"))
                weights = ops.softmax(scores, axis=-1)
                context = ops.einsum("bs,bsc->bc", weights, values)  # (B, C)
                h, state = self.cell(ops.concatenate([embedded[:, t], context], axis=-1), state)
                attentional = self.combine(ops.concatenate([h, context], axis=-1))
                logits.append(self.output_layer(attentional))
            return ops.stack(logits, axis=1)  # (B, T, V)

    return KerasSeq2Seq()


def keras_to_zoo(net) -> Variables:
    """A built `KerasSeq2Seq`'s weights as zoo's variables."""

    def weights(layer) -> list[np.ndarray]:
        return [np.asarray(w, np.float32) for w in layer.get_weights()]

    def dense(layer) -> dict[str, np.ndarray]:
        return dict(zip(["kernel", "bias"], weights(layer), strict=False))

    encoder = importers.from_keras([weights(net.encoder)], "lstm", bidirectional=True)
    params = {
        "source_embedding": {"embedding": weights(net.source_embedding)[0]},
        "encoder": encoder,
        "bridge": dense(net.bridge),
        "memory_layer": dense(net.memory_layer),
        "decoder": {
            "embedding": weights(net.target_embedding)[0],
            "cell": importers.from_keras([weights(net.cell)], "lstm")["layer_0"],
            "query": dense(net.query),
            "score": {"kernel": weights(net.score)[0][:, 0]},
            "combine": dense(net.combine),
            "output": dense(net.output_layer),
        },
    }
    return {"params": params}


def keras_masked_cross_entropy(y_true, y_pred):
    """`masked_cross_entropy` in `keras.ops` (Keras hands the labels over as floats)."""
    from keras import losses, ops

    values = losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)  # (B, T)
    weights = ops.cast(ops.not_equal(y_true, PAD), values.dtype)
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1.0)


def keras_steps(model: Seq2Seq, inputs: Inputs, dtype: str) -> dict[str, Any]:
    import keras

    keras.config.set_dtype_policy(dtype)
    keras.utils.set_random_seed(0)
    net = keras_seq2seq(model)
    x = (inputs.src, inputs.targets)
    with jax.numpy_rank_promotion("allow"):  # Keras relies on implicit rank promotion
        logits = np.asarray(net(x), np.float32)  # builds the layers
    net.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=keras_masked_cross_entropy, jit_compile=True
    )
    variables = keras_to_zoo(net)

    def run_train():
        with jax.numpy_rank_promotion("allow"):
            net.train_on_batch(x, inputs.targets)

    def run_infer():
        with jax.numpy_rank_promotion("allow"):
            net.predict_on_batch(x)

    return {"train": run_train, "infer": run_infer, "logits": logits, "zoo_variables": variables}
