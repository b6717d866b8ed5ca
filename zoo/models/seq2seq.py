"""Encoder-decoder with attention (Bahdanau et al. 2015; Luong et al. 2015), greedy decoding
and beam search.

    model = zoo.models.create("seq2seq")                     # the numbers task's vocabularies
    variables = model.init(key, src)                         # src: (B, S) source ids
    logits = model.apply(variables, src, lengths, targets=y) # (B, T, V): teacher forcing
    tokens, attention = greedy_decode(model, variables, src, lengths)  # (B, T), (B, T, S)
    tokens, scores = beam_search(model, variables, src, lengths, width=4)  # (B, k, T), (B, k)

Token ids: `PAD` = 0 pads both sources and targets (and follows EOS in every decoded sequence),
`BOS` = 1 is the decoder's first input, `EOS` = 2 ends a target. `zoo.data.numbers` numbers its
vocabularies so.

Encoder: embedding, then stacked (bidirectional) LSTM/GRU layers with `lengths` masking; its
outputs `h_j` `(B, S, C)` are the attention's memory, zeros at padded steps. The decoder starts
from `s_0 = tanh(W_b h_final + b_b)`, `h_final` the encoder's last valid hidden state (forward
and backward concatenated), and a zero cell state for an LSTM.

Decoder step t, with `y_{t-1}` the previous token (BOS first), `e(.)` its embedding and
`h̃_{t-1}` the previous attentional vector (zeros first):

    bahdanau (additive):       score_j = v^T tanh(W1 h_j + b1 + W2 s_{t-1})
                               α = softmax(score),  c_t = Σ_j α_j h_j
                               s_t = cell(s_{t-1}, [e(y_{t-1}); c_t])
    luong (multiplicative,     s_t = cell(s_{t-1}, [e(y_{t-1}); h̃_{t-1}])   (input feeding)
    "general"):                score_j = s_t^T W h_j
                               α = softmax(score),  c_t = Σ_j α_j h_j
    both:                      h̃_t = tanh(W_c [s_t; c_t]),  logits_t = W_o h̃_t + b_o

Scores of padded source steps are set to -inf before the softmax, so their weights are exactly 0.
Every source needs at least one valid step.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.layers.recurrent import (
    Carry,
    LSTMState,
    Recurrent,
    StackedRNN,
    check_cell,
    check_lengths,
    gru_cell,
    lstm_cell,
    project,
    rnn_cell,
)
from zoo.models.inputs import batch_shape, check_input, dtypes

PAD, BOS, EOS = 0, 1, 2
ATTENTIONS = ("bahdanau", "luong")
_CELLS = {"rnn": rnn_cell, "lstm": lstm_cell, "gru": gru_cell}

DecoderParams = dict[str, Any]


class Memory(NamedTuple):
    """What the decoder attends to: the encoder's outputs `values` `(B, S, C)`, their `keys`
    (`W1 h_j + b1` `(B, S, A)` for Bahdanau, `W h_j` `(B, S, H)` for Luong, computed once), and
    `mask` `(B, S)`, True on valid source steps."""

    values: jax.Array
    keys: jax.Array
    mask: jax.Array


class DecoderState(NamedTuple):
    """The decoder's carry: its cell's (`LSTMState` or `(B, H)`) and the attentional vector
    `feed` `h̃` `(B, H)` of the last step, which the Luong decoder reads (input feeding)."""

    rnn: Carry
    feed: jax.Array


def _hidden(carry: Carry) -> jax.Array:
    return carry.h if isinstance(carry, LSTMState) else carry


def attend(
    params: DecoderParams, memory: Memory, query: jax.Array, attention: str
) -> tuple[jax.Array, jax.Array]:
    """Attention of `query` `(B, H)` over `memory`: returns the context `(B, C)` and the
    weights `(B, S)` (exactly 0 on padded source steps)."""
    if attention == "bahdanau":
        projected = (query @ params["query"]["kernel"])[:, None, :]  # (B, 1, A)
        scores = jnp.tanh(memory.keys + projected) @ params["score"]["kernel"]  # (B, S)
    else:
        scores = jnp.einsum("bsh,bh->bs", memory.keys, query)  # (B, S)
    scores = jnp.where(memory.mask, scores, -jnp.inf)  # padding never attended to
    weights = jax.nn.softmax(scores, axis=-1)
    context = jnp.einsum("bs,bsc->bc", weights, memory.values)  # (B, C)
    return context, weights


def decoder_step(
    params: DecoderParams,
    state: DecoderState,
    token: jax.Array,
    memory: Memory,
    *,
    cell: str,
    attention: str,
) -> tuple[DecoderState, tuple[jax.Array, jax.Array]]:
    """One decoder step (the module docstring's equations): the previous token `(B,)` ->
    `(state, (logits (B, V), attention weights (B, S)))`."""
    embedded = params["embedding"][token]  # (B, E)
    step = _CELLS[cell]
    if attention == "bahdanau":
        context, weights = attend(params, memory, _hidden(state.rnn), attention)
        rnn, s = step(params["cell"], state.rnn, jnp.concatenate([embedded, context], axis=-1))
    else:
        rnn, s = step(params["cell"], state.rnn, jnp.concatenate([embedded, state.feed], axis=-1))
        context, weights = attend(params, memory, s, attention)
    attentional = jnp.tanh(jnp.concatenate([s, context], axis=-1) @ params["combine"]["kernel"])
    logits = project(attentional, params["output"]["kernel"], params["output"]["bias"])
    return DecoderState(rnn, attentional), (logits, weights)


Step = Callable[..., tuple[DecoderState, tuple[jax.Array, jax.Array]]]


# On CPU, teacher forcing unrolls targets up to this long: XLA:CPU's loop costs more than the
# decoder's small steps (the numbers preset's train step, batch 128, 8 steps: 30.2 -> 25.4 ms on
# 2 CPU devices, 28.2 -> 25.2 on one; unrolling 2 steps a loop: 29.2), for 0.7 s more compile.
UNROLL_TARGETS = 16


def teacher_forcing(
    step: Step, params: DecoderParams, state: DecoderState, memory: Memory, targets: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Decodes with the targets `(B, T)` shifted right behind BOS as inputs; returns logits
    `(B, T, V)` and attention weights `(B, T, S)`."""
    bos = jnp.full((targets.shape[0], 1), BOS, targets.dtype)
    inputs = jnp.concatenate([bos, targets[:, :-1]], axis=1)  # (B, T)

    def body(state, token):
        return step(params, state, token, memory)

    unroll = jax.default_backend() == "cpu" and inputs.shape[1] <= UNROLL_TARGETS
    _, (logits, weights) = jax.lax.scan(body, state, inputs.T, unroll=unroll)  # over time
    return jnp.swapaxes(logits, 0, 1), jnp.swapaxes(weights, 0, 1)


def greedy(
    step: Step, params: DecoderParams, state: DecoderState, memory: Memory, max_length: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Feeds back each step's most likely token, `max_length` steps; returns tokens `(B, T)`
    (PAD after the first EOS), the logits `(B, T, V)` and the attention weights `(B, T, S)`
    (zeros after EOS)."""
    batch = memory.mask.shape[0]

    def body(carry, _):
        state, token, done = carry
        state, (logits, weights) = step(params, state, token, memory)
        token = jnp.where(done, PAD, jnp.argmax(logits, axis=-1).astype(jnp.int32))
        weights = jnp.where(done[:, None], jnp.zeros_like(weights), weights)
        return (state, token, done | (token == EOS)), (token, logits, weights)

    start = (state, jnp.full((batch,), BOS, jnp.int32), jnp.zeros((batch,), bool))
    _, outputs = jax.lax.scan(body, start, length=max_length)
    return tuple(jnp.swapaxes(a, 0, 1) for a in outputs)


def beam(
    step: Step,
    params: DecoderParams,
    state: DecoderState,
    memory: Memory,
    *,
    width: int,
    max_length: int,
    length_normalize: bool,
) -> tuple[jax.Array, jax.Array]:
    """Beam search: returns the `width` hypotheses `(B, k, T)` (PAD after EOS) and their
    scores `(B, k)`, best first. See `beam_search`."""
    batch, vocab = memory.mask.shape[0], params["output"]["bias"].shape[0]
    flat = lambda a: a.reshape(batch * width, *a.shape[2:])  # noqa: E731 - (B, k, ...) -> (B*k, ...)
    state, memory = jax.tree.map(lambda a: jnp.repeat(a, width, axis=0), (state, memory))
    # Only the first beam is live at the start, so the first step does not pick k copies of
    # the same token.
    scores = jnp.tile(jnp.where(jnp.arange(width) == 0, 0.0, -jnp.inf), (batch, 1))  # (B, k)
    finished_only_pad = jnp.where(jnp.arange(vocab) == PAD, 0.0, -jnp.inf)  # (V,)

    def body(carry, t):
        state, token, scores, tokens, done, lengths = carry
        state, (logits, _) = step(params, state, token, memory)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, width, vocab)
        # A finished hypothesis continues with PAD only, at no cost: it keeps its score.
        log_probs = jnp.where(done[..., None], finished_only_pad, log_probs)
        candidates = (scores[..., None] + log_probs).reshape(batch, width * vocab)
        scores, index = jax.lax.top_k(candidates, width)  # (B, k)
        origin, token = index // vocab, (index % vocab).astype(jnp.int32)

        def pick(a):  # the chosen hypotheses' rows of a (B, k, ...) array
            index = origin.reshape(origin.shape + (1,) * (a.ndim - 2))
            return jnp.take_along_axis(a, index, axis=1)

        def pick_flat(a):  # the same of a (B*k, ...) array
            return flat(pick(a.reshape(batch, width, *a.shape[1:])))

        state = jax.tree.map(pick_flat, state)
        tokens, was_done, lengths = pick(tokens), pick(done), pick(lengths)
        tokens = tokens.at[:, :, t].set(token)
        lengths = lengths + (~was_done).astype(jnp.int32)
        return (state, flat(token), scores, tokens, was_done | (token == EOS), lengths), None

    start = (
        state,
        jnp.full((batch * width,), BOS, jnp.int32),
        scores,
        jnp.full((batch, width, max_length), PAD, jnp.int32),
        jnp.zeros((batch, width), bool),
        jnp.zeros((batch, width), jnp.int32),
    )
    (_, _, scores, tokens, _, lengths), _ = jax.lax.scan(body, start, jnp.arange(max_length))
    ranking = scores / jnp.maximum(lengths, 1) if length_normalize else scores
    order = jnp.argsort(-ranking, axis=1)  # best first
    return jnp.take_along_axis(tokens, order[..., None], 1), jnp.take_along_axis(ranking, order, 1)


def cut_at_eos(tokens: jax.Array) -> jax.Array:
    """`tokens` `(..., T)` with PAD after the first EOS: the argmax of greedy logits as
    `greedy` returns its tokens."""
    after_eos = jnp.cumsum(tokens == EOS, axis=-1) - (tokens == EOS) > 0
    return jnp.where(after_eos, PAD, tokens)


def _check_ids(ids: jax.Array, vocab_size: int, what: str) -> None:
    """Rejects concrete ids outside `[0, vocab_size)` (an embedding gives NaN for them);
    traced ids are not known until run time, so under `jit` this checks nothing."""
    if isinstance(ids, jax.core.Tracer) or not np.size(ids):
        return
    ids = np.asarray(ids)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(
            f"seq2seq {what} ids must be in [0, {vocab_size}), found {ids.min()}..{ids.max()}"
        )


class Seq2Seq(nn.Module):
    """Encoder-decoder with attention over the encoder's outputs (the module docstring).

    `apply(variables, src (*batch, S) int, lengths (*batch,), targets=(*batch, T) int)` returns
    the teacher-forced logits `(*batch, T, num_classes)`; without `targets` it decodes greedily
    for `max_length` steps (the call's, else the model's) and returns the logits of those steps,
    each computed from the previous steps' argmax (so `model.apply(variables, src)` is what
    `greedy_decode` runs). `return_attention=True` also returns the weights `(*batch, T, S)`.

    Attributes:
      num_classes: the target vocabulary's size (PAD, BOS and EOS included).
      vocab_size: the source vocabulary's size.
      embed_dim: of both embeddings.
      encoder_sizes: one hidden size per stacked encoder layer.
      hidden_size: the decoder's.
      cell: 'lstm', 'gru' or 'rnn', of encoder and decoder.
      bidirectional: encoder layers run both ways (the memory is then twice as wide).
      attention: 'bahdanau' (additive) or 'luong' (multiplicative, "general").
      attention_size: A, the width of Bahdanau's scoring layer (unused by Luong's).
      max_length: decoding steps without targets (the numbers task's 8: 7 words and EOS).
      dtype, param_dtype: of the computation and of the parameters.
    """

    num_classes: int = 33
    vocab_size: int = 13
    embed_dim: int = 32
    encoder_sizes: Sequence[int] = (128,)
    hidden_size: int = 128
    cell: str = "lstm"
    bidirectional: bool = True
    attention: str = "bahdanau"
    attention_size: int = 128
    max_length: int = 8
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_cell(self.cell)
        if self.attention not in ATTENTIONS:
            raise ValueError(
                f"unknown attention {self.attention!r}; choose from: {', '.join(ATTENTIONS)}"
            )
        minimums = {  # a vocabulary holds PAD, BOS, EOS and at least one token
            "num_classes": 4,
            "vocab_size": 4,
            "embed_dim": 1,
            "hidden_size": 1,
            "attention_size": 1,
            "max_length": 1,
        }
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise ValueError(f"seq2seq {name} must be >= {minimum}, got {getattr(self, name)}")
        if not self.encoder_sizes or min(self.encoder_sizes) < 1:
            raise ValueError(f"encoder_sizes must be positive, got {self.encoder_sizes}")
        super().__post_init__()

    @property
    def memory_size(self) -> int:
        """C, the width of the encoder's outputs."""
        return self.encoder_sizes[-1] * (2 if self.bidirectional else 1)

    @property
    def step(self) -> Step:
        """`decoder_step` for this model's cell and attention."""
        return functools.partial(decoder_step, cell=self.cell, attention=self.attention)

    def setup(self):
        bahdanau = self.attention == "bahdanau"
        self.source_embedding = nn.Embed(self.vocab_size, self.embed_dim, **dtypes(self))
        self.encoder = StackedRNN(
            self.cell, self.encoder_sizes, self.bidirectional, return_sequences=True, **dtypes(self)
        )
        self.bridge = nn.Dense(self.hidden_size, **dtypes(self))
        self.memory_layer = nn.Dense(  # W1 h + b1 (Bahdanau) or W h (Luong)
            self.attention_size if bahdanau else self.hidden_size, use_bias=bahdanau, **dtypes(self)
        )
        # Plain arrays, not layers: the decoder runs inside lax loops, where Flax modules
        # cannot be called.
        self.decoder = self.param("decoder", self._init_decoder)

    def _init_decoder(self, key: jax.Array) -> DecoderParams:
        hidden, memory, dtype = self.hidden_size, self.memory_size, self.param_dtype
        feed = memory if self.attention == "bahdanau" else hidden
        keys = jax.random.split(key, 6)
        # The cell's layout and initialisers are `Recurrent`'s (forget-gate bias 1 and all).
        example = jnp.zeros((1, 1, self.embed_dim + feed), dtype)
        cell = Recurrent(self.cell, hidden, param_dtype=dtype).init(keys[0], example)["params"]
        glorot = nn.initializers.glorot_uniform()
        params = {
            "embedding": nn.linear.default_embed_init(
                keys[1], (self.num_classes, self.embed_dim), dtype
            ),
            "cell": cell,
            "combine": {"kernel": glorot(keys[2], (hidden + memory, hidden), dtype)},
            "output": {
                "kernel": nn.initializers.lecun_normal()(
                    keys[3], (hidden, self.num_classes), dtype
                ),
                "bias": jnp.zeros((self.num_classes,), dtype),
            },
        }
        if self.attention == "bahdanau":
            size = self.attention_size
            params["query"] = {"kernel": glorot(keys[4], (hidden, size), dtype)}
            score = jax.random.normal(keys[5], (size,), dtype) / np.sqrt(size)
            params["score"] = {"kernel": score}
        return params

    def prepare(
        self, src: jax.Array, lengths: jax.Array | None = None
    ) -> tuple[DecoderParams, DecoderState, Memory]:
        """Encodes `src` `(B, S)`: the decoder's parameters (in the computation's dtype), its
        initial state and the memory it attends to."""
        src = check_input(src, (None,), "seq2seq", tokens=True)  # (B, S)
        _check_ids(src, self.vocab_size, "source")
        batch, steps = src.shape
        if lengths is not None:
            lengths = check_lengths(lengths, batch, steps)
            if not isinstance(lengths, jax.core.Tracer) and batch and int(lengths.min()) < 1:
                raise ValueError("seq2seq sources need at least one valid step; found length 0")
            mask = jnp.arange(steps)[None, :] < lengths[:, None]  # (B, S)
        else:
            mask = jnp.ones((batch, steps), bool)
        values, states = self.encoder(self.source_embedding(src), lengths)  # (B, S, C)
        last = states[
            -1
        ]  # the top layer's final carry, a (forward, backward) pair if bidirectional
        final = (
            jnp.concatenate([_hidden(last[0]), _hidden(last[1])], axis=-1)
            if self.bidirectional
            else _hidden(last)
        )  # (B, C)
        memory = Memory(values, self.memory_layer(values), mask)
        leaves, tree = jax.tree.flatten(self.decoder)
        *leaves, s0 = nn.dtypes.promote_dtype(
            *leaves, jnp.tanh(self.bridge(final)), dtype=self.dtype
        )
        params = jax.tree.unflatten(tree, leaves)
        rnn = LSTMState(s0, jnp.zeros_like(s0)) if self.cell == "lstm" else s0
        state = DecoderState(rnn, jnp.zeros_like(s0))
        return params, state, memory

    def __call__(
        self,
        src: jax.Array,
        lengths: jax.Array | None = None,
        targets: jax.Array | None = None,
        *,
        max_length: int | None = None,
        return_attention: bool = False,
        train: bool = False,  # no dropout: training and evaluation are the same
    ):
        batch = batch_shape(src, (None,))
        if lengths is not None:
            lengths = jnp.asarray(lengths)
            if lengths.shape != batch:
                raise ValueError(f"lengths must have the batch shape {batch}, got {lengths.shape}")
            lengths = lengths.reshape(-1)
        params, state, memory = self.prepare(src.reshape(-1, src.shape[-1]), lengths)
        if targets is not None:
            targets = check_input(targets, (None,), "seq2seq targets", tokens=True)
            if targets.shape[0] != memory.mask.shape[0]:
                raise ValueError(
                    f"targets must have the batch shape {batch}, got {jnp.shape(targets)[:-1]}"
                )
            _check_ids(targets, self.num_classes, "target")
            logits, weights = teacher_forcing(self.step, params, state, memory, targets)
        else:
            _, logits, weights = greedy(
                self.step, params, state, memory, max_length or self.max_length
            )
        logits = logits.reshape(*batch, *logits.shape[1:])
        if return_attention:
            return logits, weights.reshape(*batch, *weights.shape[1:])
        return logits


@functools.partial(jax.jit, static_argnames=("model", "max_length"))
def _greedy_decode(model: Seq2Seq, variables, src, lengths, *, max_length: int):
    params, state, memory = model.apply(variables, src, lengths, method=Seq2Seq.prepare)
    tokens, _, weights = greedy(model.step, params, state, memory, max_length)
    return tokens, weights


def greedy_decode(
    model: Seq2Seq,
    variables,
    src: jax.Array,
    lengths: jax.Array | None = None,
    *,
    max_length: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Greedy decoding (one jitted `lax.scan` over `max_length` steps, default the model's):
    tokens `(B, T)`, PAD after EOS, and attention weights `(B, T, S)`, zeros after EOS.

    Raises:
      ValueError: for source ids outside the model's vocabulary (when `src` is concrete).
    """
    _check_ids(src, model.vocab_size, "source")  # inside the jitted decoder ids are traced
    return _greedy_decode(model, variables, src, lengths, max_length=max_length or model.max_length)


@functools.partial(jax.jit, static_argnames=("model", "width", "max_length", "length_normalize"))
def _beam_search(model, variables, src, lengths, *, width, max_length, length_normalize):
    params, state, memory = model.apply(variables, src, lengths, method=Seq2Seq.prepare)
    return beam(
        model.step,
        params,
        state,
        memory,
        width=width,
        max_length=max_length,
        length_normalize=length_normalize,
    )


def beam_search(
    model: Seq2Seq,
    variables,
    src: jax.Array,
    lengths: jax.Array | None = None,
    *,
    width: int = 4,
    max_length: int | None = None,
    length_normalize: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Beam search of `width` hypotheses (one jitted `lax.scan` over `max_length` steps):
    returns them `(B, width, T)`, PAD after EOS, best first, and their scores `(B, width)`.

    At each step every live hypothesis is extended by every token and the `width` highest
    total log-probabilities are kept; a hypothesis that emitted EOS stays in the beam with its
    score (it continues with PAD at no cost). The final ranking is by total log-probability,
    divided by the hypothesis' length (its tokens up to and including EOS) when
    `length_normalize` (off by default: a mean per token favours long outputs, and a barely
    trained numbers model then writes 13 as "thirteen hundred three"); the search itself never
    normalises. Width 1 is greedy decoding.

    Raises:
      ValueError: for a width outside `[1, num_classes]` or source ids outside the vocabulary.
    """
    if not 1 <= width <= model.num_classes:
        raise ValueError(f"beam width must be in [1, {model.num_classes}], got {width}")
    _check_ids(src, model.vocab_size, "source")
    return _beam_search(
        model,
        variables,
        src,
        lengths,
        width=width,
        max_length=max_length or model.max_length,
        length_normalize=length_normalize,
    )
