"""Recurrent models: sequence classifiers, a per-step tagger, a character language model,
CNN+LSTM, a forecaster.

All take batch-first input and optional `lengths` `(B,)` for right-padded sequences:

    model = zoo.models.create("lstm", input_shape=(28, 28))     # (steps, features)
    variables = model.init(key, x)                              # x: (B, 28, 28) floats
    logits = model.apply(variables, x, lengths)                 # (B, classes)
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.layers.conv import Conv, max_pool
from zoo.layers.recurrent import StackedRNN, check_cell, check_implementation
from zoo.models.inputs import batch_shape, check_input, dtypes, flatten


def _check_options(
    cell: str, dropout: float, hidden_sizes: Sequence[int], recurrent_dropout: float
) -> None:
    check_cell(cell)
    for name, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {rate}")
    if not hidden_sizes or min(hidden_sizes) < 1:
        raise ValueError(f"hidden_sizes must be positive, got {hidden_sizes}")


def _check_token_ids(tokens: jax.Array, vocab_size: int, model: str = "charlm") -> None:
    """Rejects concrete ids outside `[0, vocab_size)`: `nn.Embed` would give NaN for them.

    Traced ids are not known until run time, so under `jit` this checks nothing.
    """
    if isinstance(tokens, jax.core.Tracer):
        return
    tokens = np.asarray(tokens)  # a host copy, outside jit only; numpy, so no op is traced
    if not tokens.size:
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"{model} tokens must be in [0, {vocab_size}) (the vocabulary size), "
            f"found ids {low}..{high}"
        )


def _check_token_rank(tokens: jax.Array, model: str = "charlm") -> None:
    """Rejects ids not `(batch, steps)` or one sequence's `(steps,)`: a trailing axis of 1 (ids
    shaped as features) would otherwise read as more batch axes, each id a sequence of its own."""
    if jnp.ndim(tokens) not in (1, 2):
        raise ValueError(
            f"{model} expects integer token ids of shape (batch, steps), or (steps,) for one "
            f"sequence; got shape {tuple(jnp.shape(tokens))}"
        )


def _flat_lengths(lengths: jax.Array | None, batch: tuple[int, ...]) -> jax.Array | None:
    if lengths is None:
        return None
    lengths = jnp.asarray(lengths)
    if lengths.shape != batch:
        raise ValueError(f"lengths must have the batch shape {batch}, got {lengths.shape}")
    return lengths.reshape(-1)


def _stacked_rnn(model: nn.Module, *, return_sequences: bool) -> StackedRNN:
    """The `StackedRNN` a classifier or tagger describes with its recurrent options."""
    return StackedRNN(
        model.cell,
        model.hidden_sizes,
        model.bidirectional,
        return_sequences=return_sequences,
        reset_after=model.reset_after,
        dropout=model.dropout,
        recurrent_dropout=model.recurrent_dropout,
        unroll=model.unroll,
        activation=model.activation,
        implementation=model.implementation,
        **dtypes(model),
    )


class RNNClassifier(nn.Module):
    """Stacked simple RNN/LSTM/GRU over `(B, T, F)`, then a dense layer on the last valid hidden
    state.

    The defaults are the source documents' model: LSTM(128, return_sequences) - LSTM(128) -
    Dense(classes). Registered as `rnn`, `lstm`, `gru`, `birnn`, `bilstm` and `bigru`.

    Attributes:
      input_shape: `(steps, features)`; steps may be None for any length.
      num_classes: number of logits.
      cell: 'rnn' (Elman's simple RNN), 'lstm' or 'gru'.
      hidden_sizes: one hidden size per stacked layer.
      activation: the simple RNN's, 'tanh' or 'relu'.
      bidirectional: run each layer both ways and concatenate.
      dropout: between stacked layers and before the classifier, in training only.
      recurrent_dropout: on the hidden state entering each recurrent matmul, one mask per
        sequence, in training only.
      reset_after: GRU variant (True: PyTorch / Keras default; False: Cho et al.).
      unroll: timesteps per scan iteration (speed only).
      dtype: of the computation and the recurrent state, e.g. `jnp.bfloat16`; None: promoted
        from inputs and params. Every model here has it and `param_dtype` (Flax's convention).
      param_dtype: of the parameters.
      implementation: 'scan' (zoo's, the default) or 'cudnn': an LSTM stack as cuDNN's fused
        kernel, CUDA and float32 only, the same params (experimental: `zoo.layers.cudnn`).
    """

    input_shape: Sequence[int | None]
    num_classes: int = 10
    cell: str = "lstm"
    hidden_sizes: Sequence[int] = (128, 128)
    activation: str = "tanh"
    bidirectional: bool = False
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    reset_after: bool = True
    unroll: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32
    implementation: str = "scan"

    def __post_init__(self):
        _check_options(self.cell, self.dropout, self.hidden_sizes, self.recurrent_dropout)
        check_cell(self.cell, self.activation)
        check_implementation(
            self.implementation, self.cell, self.hidden_sizes, self.recurrent_dropout
        )
        super().__post_init__()

    @nn.compact
    def __call__(
        self, x: jax.Array, lengths: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        h = check_input(x, self.input_shape, self.cell)  # (B, T, F)
        batch = batch_shape(x, self.input_shape)
        rnn = _stacked_rnn(self, return_sequences=False)
        h, _ = rnn(h, _flat_lengths(lengths, batch), train=train)  # (B, H or 2H)
        if self.dropout:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        logits = nn.Dense(self.num_classes, **dtypes(self))(h)
        return logits.reshape(*batch, self.num_classes)


class CharLM(nn.Module):
    """Character language model: embedding - stacked LSTM/GRU - logits at every step.

    `tokens` `(B, T)` int (or one sequence's `(T,)`, as under `vmap`) -> logits `(B, T, vocab)`;
    with `return_states=True` also the final states, which `initial_states` takes back (see
    `sample`). More leading axes are refused: ids `(B, T, 1)` would read as a `(B, T)` batch of
    one-step sequences. `lengths` of right-padded sequences is checked and otherwise unused: the
    model is causal, so its outputs at valid steps never see the padding (the loss masks the
    padded steps).
    """

    num_classes: int  # vocabulary size
    embed_dim: int = 64
    cell: str = "lstm"
    hidden_sizes: Sequence[int] = (512,)
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    unroll: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _check_options(self.cell, self.dropout, self.hidden_sizes, self.recurrent_dropout)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        lengths: jax.Array | None = None,
        *,
        initial_states=None,
        return_states: bool = False,
        train: bool = False,
    ):
        _check_token_rank(tokens)
        batch = batch_shape(tokens, (None,))
        _flat_lengths(lengths, batch)
        tokens = check_input(tokens, (None,), "charlm", tokens=True)  # (B, T), any T
        _check_token_ids(tokens, self.num_classes)
        h = nn.Embed(self.num_classes, self.embed_dim, **dtypes(self))(tokens)  # (B, T, E)
        rnn = StackedRNN(
            self.cell,
            self.hidden_sizes,
            return_sequences=True,
            dropout=self.dropout,
            recurrent_dropout=self.recurrent_dropout,
            unroll=self.unroll,
            **dtypes(self),
        )
        h, states = rnn(h, initial_states=initial_states, train=train)  # (B, T, H)
        if self.dropout:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        logits = nn.Dense(self.num_classes, **dtypes(self))(h)  # (B, T, V)
        logits = logits.reshape(*batch, *logits.shape[1:])
        return (logits, states) if return_states else logits


class Tagger(nn.Module):
    """Per-step classifier: the source documents' first LSTM model, LSTM(128,
    return_sequences=True) - LSTM(128, return_sequences=True) - Dense(classes) at every step.

    Takes token ids `(*batch, T)` when it has a `vocab_size` (embedded first), or features
    `(*batch, T, F)` without one; `lengths` `(B,)`
    mark right-padded sequences (a valid step never sees the padding, in either direction, and
    the loss masks the padded steps). Returns logits `(*batch, T, num_classes)`.

    Registered as `tagger`, bidirectional, on its bundled task (`--dataset words`: where each
    word of a line without spaces ends, which depends on the characters after it).

    Attributes:
      num_classes: tags per step.
      vocab_size: token ids' range, for token input; None for feature input.
      input_shape: `(steps,)` of token ids or `(steps, features)`, steps None for any; None
        (the default): any steps, and any features.
      embed_dim: of the token embedding.
      cell: 'rnn', 'lstm' or 'gru'; the other recurrent options (`implementation` too) are
        `RNNClassifier`'s.
    """

    num_classes: int = 2
    vocab_size: int | None = None
    input_shape: Sequence[int | None] | None = None
    embed_dim: int = 32
    cell: str = "lstm"
    hidden_sizes: Sequence[int] = (128, 128)
    activation: str = "tanh"
    bidirectional: bool = False
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    reset_after: bool = True
    unroll: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32
    implementation: str = "scan"

    def __post_init__(self):
        _check_options(self.cell, self.dropout, self.hidden_sizes, self.recurrent_dropout)
        check_cell(self.cell, self.activation)
        check_implementation(
            self.implementation, self.cell, self.hidden_sizes, self.recurrent_dropout
        )
        tokens = self.vocab_size is not None
        if self.input_shape is not None and len(self.input_shape) != (1 if tokens else 2):
            raise ValueError(
                f"tagger input_shape must be (steps,) of token ids with a vocab_size, or "
                f"(steps, features) without one; got {tuple(self.input_shape)} with "
                f"vocab_size={self.vocab_size}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self, x: jax.Array, lengths: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        input_shape = self.input_shape or ((None,) if self.vocab_size else (None, x.shape[-1]))
        batch = batch_shape(x, input_shape)
        if self.vocab_size is None:
            h = check_input(x, input_shape, "tagger")  # (B, T, F)
        else:
            tokens = check_input(x, input_shape, "tagger", tokens=True)  # (B, T)
            _check_token_ids(tokens, self.vocab_size, "tagger")
            h = nn.Embed(self.vocab_size, self.embed_dim, **dtypes(self))(tokens)  # (B, T, E)
        rnn = _stacked_rnn(self, return_sequences=True)
        h, _ = rnn(h, _flat_lengths(lengths, batch), train=train)  # (B, T, H or 2H)
        if self.dropout:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        logits = nn.Dense(self.num_classes, **dtypes(self))(h)  # (B, T, K)
        return logits.reshape(*batch, *logits.shape[1:])


def sample(
    model: CharLM,
    variables,
    prompt: jax.Array,
    key: jax.Array,
    *,
    length: int,
    temperature: float = 1.0,
) -> jax.Array:
    """Continues each prompt `(B, P)` by `length` sampled tokens; returns `(B, length)`.

    The prompt is read in one pass; then each new token is fed back with the carried states, one
    step per `lax.scan` iteration.

    Raises:
      ValueError: for prompt ids outside the model's vocabulary (when the prompt is concrete).
    """
    _check_token_ids(prompt, model.num_classes)  # inside the jitted sampler ids are traced
    return _sample(model, variables, prompt, key, length=length, temperature=temperature)


@functools.partial(jax.jit, static_argnames=("model", "length"))
def _sample(
    model: CharLM,
    variables,
    prompt: jax.Array,
    key: jax.Array,
    *,
    length: int,
    temperature: float = 1.0,
) -> jax.Array:
    logits, states = model.apply(variables, prompt, return_states=True)
    first = jax.random.categorical(key, logits[:, -1] / temperature)

    def step(carry, step_key):
        token, states = carry
        logits, states = model.apply(
            variables, token[:, None], initial_states=states, return_states=True
        )
        next_token = jax.random.categorical(step_key, logits[:, -1] / temperature)
        return (next_token, states), token

    keys = jax.random.split(jax.random.fold_in(key, 1), length)
    _, tokens = jax.lax.scan(step, (first, states), keys)
    return tokens.T  # (B, length)


class CNNLSTM(nn.Module):
    """A CNN encoder applied to every frame, then an LSTM over the frame codes.

    `(B, T, H, W, C)` frames (or image patches) -> per frame Conv-relu-MaxPool stages, flatten and
    Dense(embed_dim) -> stacked LSTM/GRU -> Dense(classes) on the last valid step.
    """

    input_shape: Sequence[int | None]  # (steps, height, width, channels)
    num_classes: int = 10
    features: Sequence[int] = (16, 32)
    embed_dim: int = 64
    cell: str = "lstm"
    hidden_sizes: Sequence[int] = (64,)
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.input_shape) != 4:
            raise ValueError(
                f"cnn_lstm input_shape must be (steps, height, width, channels), "
                f"got {tuple(self.input_shape)}"
            )
        _check_options(self.cell, self.dropout, self.hidden_sizes, self.recurrent_dropout)
        super().__post_init__()

    @nn.compact
    def __call__(
        self, x: jax.Array, lengths: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        frames = check_input(x, self.input_shape, "cnn_lstm")  # (B, T, H, W, C)
        batch = batch_shape(x, self.input_shape)
        n, steps = frames.shape[:2]
        h = frames.reshape(n * steps, *frames.shape[2:])  # (B*T, H, W, C): one CNN pass
        for features in self.features:
            h = nn.relu(Conv(features, (3, 3), padding="SAME", **dtypes(self))(h))
            h = max_pool(h, 2) if min(h.shape[1:3]) >= 2 else h
        h = flatten(h)  # (B*T, F)
        h = nn.relu(nn.Dense(self.embed_dim, **dtypes(self))(h.reshape(n, steps, h.shape[-1])))
        rnn = StackedRNN(
            self.cell,
            self.hidden_sizes,
            dropout=self.dropout,
            recurrent_dropout=self.recurrent_dropout,
            **dtypes(self),
        )
        h, _ = rnn(h, _flat_lengths(lengths, batch), train=train)  # (B, H)
        if self.dropout:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        logits = nn.Dense(self.num_classes, **dtypes(self))(h)
        return logits.reshape(*batch, self.num_classes)


class Forecaster(nn.Module):
    """Stacked LSTM/GRU regressor: a window `(B, T, F)` -> the next `horizon` values `(B, horizon)`.

    Predicts the change from the window's last value of feature 0 (a residual on the naive
    forecast), so an untrained model starts at the naive forecast instead of at zero.
    """

    input_shape: Sequence[int | None]  # (steps, features)
    horizon: int = 1
    cell: str = "lstm"
    hidden_sizes: Sequence[int] = (64,)
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _check_options(self.cell, self.dropout, self.hidden_sizes, self.recurrent_dropout)
        super().__post_init__()

    @nn.compact
    def __call__(
        self, x: jax.Array, lengths: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        window = check_input(x, self.input_shape, "forecast")  # (B, T, F)
        batch = batch_shape(x, self.input_shape)
        h, _ = StackedRNN(
            self.cell,
            self.hidden_sizes,
            dropout=self.dropout,
            recurrent_dropout=self.recurrent_dropout,
            **dtypes(self),
        )(window, _flat_lengths(lengths, batch), train=train)
        delta = nn.Dense(self.horizon, kernel_init=nn.initializers.zeros, **dtypes(self))(
            h
        )  # (B, horizon)
        last = window[:, -1, :1] if lengths is None else _last_valid(window, lengths)
        return (delta + last).reshape(*batch, self.horizon)


def _last_valid(window: jax.Array, lengths: jax.Array) -> jax.Array:
    index = jnp.maximum(jnp.asarray(lengths).reshape(-1) - 1, 0)  # (B,)
    return jnp.take_along_axis(window[..., 0], index[:, None], axis=1)  # (B, 1)
