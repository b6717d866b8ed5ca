"""The encoder-decoder: attention by hand, greedy decoding against a Python loop of the same
decoder steps, beam search, source masking, and the loss' target masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import models
from zoo.data.batching import Batch
from zoo.data.splits import Split
from zoo.models import seq2seq
from zoo.models.seq2seq import (
    BOS,
    EOS,
    PAD,
    Memory,
    Seq2Seq,
    attend,
    beam_search,
    cut_at_eos,
    decoder_step,
    greedy_decode,
)
from zoo.training.config import TrainConfig
from zoo.training.metrics import evaluate, exact_match
from zoo.training.state import create_train_state
from zoo.training.steps import compute_metrics

# Distinct sizes, so a transposed axis cannot pass: target vocabulary 7, source vocabulary 6.
SMALL = {
    "num_classes": 7,
    "vocab_size": 6,
    "embed_dim": 3,
    "encoder_sizes": (4,),
    "hidden_size": 5,
    "attention_size": 2,
    "max_length": 6,
}
# (cell, attention, bidirectional, seed): seeds whose untrained decoders end some sequences
# (EOS) before the last step and not others.
KINDS = [("lstm", "bahdanau", True, 2), ("gru", "luong", False, 3)]


def _model(cell="lstm", attention="bahdanau", bidirectional=True, seed=0, **options):
    model = models.create(
        "seq2seq",
        **{**SMALL, **options},
        cell=cell,
        attention=attention,
        bidirectional=bidirectional,
    )
    src = np.array([[3, 4, 5, 3, 4], [5, 5, 4, 0, 0], [4, 3, 0, 0, 0]], np.int32)  # (B, S)
    lengths = np.array([5, 3, 2], np.int32)
    variables = jax.jit(model.init)(jax.random.key(seed), src, lengths)
    return model, _spread(variables), src, lengths


def _spread(variables, scale=3.0):
    """Weights scaled up, so an untrained decoder's argmax changes from step to step and some
    sequences end (EOS) before the last step."""
    return jax.tree.map(lambda a: a * scale, variables)


def _numpy_attention(query, values, keys, mask, params, attention):
    """The module docstring's scores, masked softmax and context, in NumPy."""
    if attention == "bahdanau":
        hidden = np.tanh(keys + (query @ params["query"]["kernel"])[:, None, :])
        scores = hidden @ params["score"]["kernel"]
    else:
        scores = np.einsum("bsh,bh->bs", keys, query)
    scores = np.where(mask, scores - scores.max(axis=1, keepdims=True), -np.inf)
    weights = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    return np.einsum("bs,bsc->bc", weights, values), weights


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_attention_is_the_masked_softmax_of_the_documented_scores(attention):
    rng = np.random.default_rng(0)
    batch, steps, width, hidden, size = 2, 4, 3, 5, 6
    keys_width = size if attention == "bahdanau" else hidden
    params = {
        "query": {"kernel": rng.normal(size=(hidden, size))},
        "score": {"kernel": rng.normal(size=size)},
    }
    values = rng.normal(size=(batch, steps, width))
    keys = rng.normal(size=(batch, steps, keys_width))
    mask = np.array([[True, True, True, True], [True, True, False, False]])
    query = rng.normal(size=(batch, hidden))
    context, weights = attend(params, Memory(values, keys, mask), query, attention)
    expected_context, expected_weights = _numpy_attention(
        query, values, keys, mask, params, attention
    )
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(context, expected_context, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(weights)[1, 2:] == 0.0)  # exactly: padding is never attended to


def _python_greedy(model, variables, src, lengths, max_length):
    """Greedy decoding as a plain loop over `decoder_step`, one sequence at a time, stopping at
    its EOS."""
    tokens = np.full((len(src), max_length), PAD)
    attention = np.zeros((len(src), max_length, src.shape[1]))
    for row in range(len(src)):
        params, state, memory = model.apply(
            variables, src[row : row + 1], lengths[row : row + 1], method=Seq2Seq.prepare
        )
        token = jnp.array([BOS])
        for t in range(max_length):
            state, (logits, weights) = decoder_step(
                params, state, token, memory, cell=model.cell, attention=model.attention
            )
            token = jnp.argmax(logits, axis=-1)
            tokens[row, t], attention[row, t] = int(token[0]), np.asarray(weights[0])
            if int(token[0]) == EOS:
                break
    return tokens, attention


@pytest.mark.parametrize("cell, attention, bidirectional, seed", KINDS)
def test_greedy_decoding_matches_a_python_loop_of_decoder_steps(
    cell, attention, bidirectional, seed
):
    model, variables, src, lengths = _model(cell, attention, bidirectional, seed)
    tokens, weights = greedy_decode(model, variables, src, lengths)
    expected_tokens, expected_weights = _python_greedy(model, variables, src, lengths, 6)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
    ended = (np.asarray(tokens) == EOS).any(axis=1)
    assert ended.any() and not ended.all(), "the case must end some rows early, not all"
    # apply without targets is the same decoding: the argmax of its logits, cut at EOS.
    logits = model.apply(variables, src, lengths)
    np.testing.assert_array_equal(cut_at_eos(jnp.argmax(logits, axis=-1)), tokens)


@pytest.mark.parametrize("cell, attention, bidirectional, seed", KINDS)
def test_beam_search_of_width_one_is_greedy(cell, attention, bidirectional, seed):
    model, variables, src, lengths = _model(cell, attention, bidirectional, seed)
    tokens, _ = greedy_decode(model, variables, src, lengths)
    beams, scores = beam_search(model, variables, src, lengths, width=1)
    assert beams.shape == (3, 1, 6) and scores.shape == (3, 1)
    np.testing.assert_array_equal(beams[:, 0], tokens)


def _until_eos(tokens: np.ndarray) -> np.ndarray:
    """True at the steps up to and including the first EOS (every step without one)."""
    eos = tokens == EOS
    return np.cumsum(eos, axis=1) - eos == 0


def _log_probability(model, variables, src, lengths, hypotheses):
    """Total log-probability of each hypothesis `(B, T)` by teacher forcing, up to its EOS."""
    logits = model.apply(variables, src, lengths, targets=hypotheses)
    log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    picked = np.take_along_axis(log_probs, hypotheses[..., None], -1)[..., 0]  # (B, T)
    return (picked * _until_eos(hypotheses)).sum(axis=1)


@pytest.mark.parametrize("length_normalize", [False, True])
def test_beam_scores_are_the_hypotheses_log_probabilities(length_normalize):
    model, variables, src, lengths = _model()
    width = 3
    beams, scores = beam_search(
        model, variables, src, lengths, width=width, length_normalize=length_normalize
    )
    beams, scores = np.asarray(beams), np.asarray(scores)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    for k in range(width):
        hypotheses = beams[:, k]
        np.testing.assert_array_equal(cut_at_eos(hypotheses), hypotheses)  # PAD after EOS
        total = _log_probability(model, variables, src, lengths, hypotheses)
        ended = (hypotheses == EOS).any(axis=1)
        length = np.where(ended, np.argmax(hypotheses == EOS, axis=1) + 1, hypotheses.shape[1])
        expected = total / length if length_normalize else total
        np.testing.assert_allclose(scores[:, k], expected, rtol=1e-4, atol=1e-5)
    for row in beams:  # distinct hypotheses
        assert len({tuple(h) for h in row}) == width


@pytest.mark.parametrize("cell, attention, bidirectional, seed", KINDS)
def test_a_padded_batch_decodes_each_source_as_if_alone(cell, attention, bidirectional, seed):
    model, variables, src, lengths = _model(cell, attention, bidirectional, seed)
    src = src.copy()
    src[1, 3:], src[2, 2:] = 4, 5  # junk in the padding: the lengths must hide it
    targets = np.array([[3, 4, 2, 0, 0, 0], [5, 6, 6, 2, 0, 0], [3, 2, 0, 0, 0, 0]], np.int32)
    logits, weights = model.apply(variables, src, lengths, targets=targets, return_attention=True)
    tokens, greedy_weights = greedy_decode(model, variables, src, lengths)
    for row, length in enumerate(lengths):
        alone = src[row : row + 1, :length]
        own_logits, own_weights = model.apply(
            variables, alone, targets=targets[row : row + 1], return_attention=True
        )
        np.testing.assert_allclose(logits[row], own_logits[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(weights[row, :, :length], own_weights[0], rtol=1e-5, atol=1e-6)
        assert np.all(np.asarray(weights)[row, :, length:] == 0.0)
        own_tokens, own_greedy = greedy_decode(model, variables, alone)
        np.testing.assert_array_equal(tokens[row], own_tokens[0])
        np.testing.assert_allclose(greedy_weights[row, :, :length], own_greedy[0], atol=1e-6)
        assert np.all(np.asarray(greedy_weights)[row, :, length:] == 0.0)


def test_the_loss_counts_real_target_tokens_only():
    model, variables, src, lengths = _model()
    targets = np.array([[3, 4, 2, 0, 0, 0], [5, 6, 6, 2, 0, 0], [2, 0, 0, 0, 0, 0]], np.int32)
    batch = Batch(src, targets, np.ones(3, bool), lengths)
    logits = model.apply(variables, src, lengths, targets=targets)
    sums = compute_metrics("seq2seq", logits, batch)
    assert float(sums["count"]) == 3 + 4 + 1  # the words and EOS, not the PAD after it
    # The logits at PAD steps count for nothing...
    noise = np.random.default_rng(0).normal(size=logits.shape) * (targets == PAD)[..., None]
    changed = compute_metrics("seq2seq", logits + 10 * noise, batch)
    np.testing.assert_allclose(changed["loss_sum"], sums["loss_sum"], rtol=1e-6)
    # ...and the decoder inputs after EOS (other tokens there) change no counted step's logits.
    junk = np.where(targets == PAD, 5, targets)
    junk_logits = model.apply(variables, src, lengths, targets=junk)
    counted = _until_eos(targets)
    np.testing.assert_allclose(
        np.asarray(junk_logits)[counted], np.asarray(logits)[counted], rtol=1e-6
    )
    # The loss by hand: mean cross-entropy over the 8 real tokens.
    log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(sums["loss_sum"], -picked[targets != PAD].sum(), rtol=1e-5)


def test_teacher_forcing_feeds_the_targets_shifted_right_behind_bos():
    model, variables, src, lengths = _model()
    targets = np.array([[3, 4, 2, 0, 0, 0]] * 3, np.int32)
    logits = model.apply(variables, src, lengths, targets=targets)
    params, state, memory = model.apply(variables, src, lengths, method=Seq2Seq.prepare)
    for t, token in enumerate([BOS, 3, 4, 2, 0, 0]):
        state, (step_logits, _) = model.step(params, state, jnp.full((3,), token), memory)
        np.testing.assert_allclose(logits[:, t], step_logits, rtol=1e-5, atol=1e-6)


def test_unrolled_and_looped_teacher_forcing_agree_with_gradients(monkeypatch):
    """On CPU targets up to `UNROLL_TARGETS` long decode unrolled, longer ones in a loop."""
    model, variables, src, lengths = _model()
    targets = np.array([[3, 4, 2, 5, 0, 0], [4, 4, 3, 2, 6, 0], [6, 3, 2, 0, 0, 0]], np.int32)

    def run():  # a new function, traced anew: the option is read while tracing
        def loss(params):
            logits = model.apply({"params": params}, src, lengths, targets=targets)
            return jnp.sum(jnp.sin(logits)), logits

        grad = jax.value_and_grad(loss, has_aux=True)
        return str(jax.make_jaxpr(grad)(variables["params"])), jax.jit(grad)(variables["params"])

    jaxpr, ((_, unrolled), d_unrolled) = run()
    assert "unroll=6" in jaxpr  # the decoder's 6 steps
    monkeypatch.setattr(seq2seq, "UNROLL_TARGETS", 5)
    jaxpr, ((_, looped), d_looped) = run()
    assert "unroll=6" not in jaxpr
    np.testing.assert_allclose(unrolled, looped, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(d_unrolled), jax.tree.leaves(d_looped), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_cut_at_eos_pads_everything_after_the_first_eos():
    tokens = jnp.array([[3, 2, 4, 2], [3, 4, 5, 6], [2, 3, 3, 3]])
    expected = [[3, 2, 0, 0], [3, 4, 5, 6], [2, 0, 0, 0]]
    np.testing.assert_array_equal(cut_at_eos(tokens), expected)


def test_bad_options_and_inputs_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown attention 'dot'; choose from: bahdanau, luong"):
        models.create("seq2seq", attention="dot")
    with pytest.raises(ValueError, match="num_classes must be >= 4"):
        models.create("seq2seq", num_classes=3)
    model, variables, src, lengths = _model()
    with pytest.raises(ValueError, match=r"source ids must be in \[0, 6\), found 0..9"):
        model.apply(variables, np.array([[9, 0]], np.int32))
    with pytest.raises(ValueError, match=r"target ids must be in \[0, 7\)"):
        model.apply(variables, src, lengths, targets=np.full((3, 2), 7, np.int32))
    with pytest.raises(ValueError, match="at least one valid step"):
        model.apply(variables, src, np.array([5, 0, 2], np.int32))
    with pytest.raises(ValueError, match="integer token ids"):
        model.apply(variables, src.astype(np.float32))
    with pytest.raises(ValueError, match=r"beam width must be in \[1, 7\], got 8"):
        beam_search(model, variables, src, lengths, width=8)


def test_mixed_precision_decodes_in_bfloat16_with_float32_params():
    model, variables, src, lengths = _model()
    half = models.create("seq2seq", **SMALL, dtype=jnp.bfloat16)
    targets = np.array([[3, 4, 2, 0, 0, 0]] * 3, np.int32)
    logits = half.apply(variables, src, lengths, targets=targets)
    assert logits.dtype == jnp.bfloat16
    reference = model.apply(variables, src, lengths, targets=targets)
    np.testing.assert_allclose(
        np.asarray(logits, np.float32), reference, atol=0.1 * np.abs(reference).max()
    )
    tokens, weights = greedy_decode(half, variables, src, lengths)
    assert tokens.shape == (3, 6) and weights.dtype == jnp.bfloat16


def test_evaluate_reports_exact_match_of_greedy_decoding():
    model, variables, src, lengths = _model(seed=2)
    tokens = np.asarray(greedy_decode(model, variables, src, lengths)[0])
    targets = tokens.copy()
    targets[2] = [3, 2, 0, 0, 0, 0] if tokens[2, 0] != 3 else [4, 2, 0, 0, 0, 0]  # a miss
    config = TrainConfig(model="seq2seq", dataset="numbers")
    state = create_train_state(model, config, src, "seq2seq").replace(params=variables["params"])
    metrics = evaluate(state, Split(src, targets, lengths), batch_size=2, num_classes=7)
    assert metrics["exact_match"] == pytest.approx(2 / 3)  # batches of 2: one padded row
    assert set(metrics) == {"loss", "accuracy", "exact_match"}
    assert exact_match(targets, tokens) == pytest.approx(2 / 3)


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_one_attention_step_matches_pytorch(attention):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    batch, steps, width, hidden, size = 2, 5, 4, 3, 6
    params = {
        "query": {"kernel": rng.normal(size=(hidden, size))},
        "score": {"kernel": rng.normal(size=size)},
    }
    values = rng.normal(size=(batch, steps, width))
    lengths = np.array([5, 2])
    mask = np.arange(steps)[None, :] < lengths[:, None]
    query = rng.normal(size=(batch, hidden))
    # PyTorch's layers compute x W^T: a Linear's weight is the transposed kernel.
    if attention == "bahdanau":
        memory_layer = torch.nn.Linear(width, size).double()
        query_layer = torch.nn.Linear(hidden, size, bias=False).double()
        score_layer = torch.nn.Linear(size, 1, bias=False).double()
        with torch.no_grad():
            query_layer.weight.copy_(torch.from_numpy(params["query"]["kernel"].T))
            score_layer.weight.copy_(torch.from_numpy(params["score"]["kernel"][None, :]))
        keys = memory_layer(torch.from_numpy(values))  # (B, S, A)
        q = query_layer(torch.from_numpy(query))[:, None, :]
        scores = score_layer(torch.tanh(keys + q))[..., 0]  # (B, S)
    else:
        memory_layer = torch.nn.Linear(width, hidden, bias=False).double()  # h W^T: W (H, C)
        keys = memory_layer(torch.from_numpy(values))  # (B, S, H)
        scores = torch.bmm(keys, torch.from_numpy(query)[:, :, None])[..., 0]
    scores = scores.masked_fill(~torch.from_numpy(mask), float("-inf"))
    expected_weights = torch.softmax(scores, dim=-1)
    expected_context = torch.bmm(expected_weights[:, None, :], torch.from_numpy(values))[:, 0]
    memory = Memory(values, keys.detach().numpy(), mask)
    with jax.enable_x64(True):
        context, weights = attend(params, memory, query, attention)
        np.testing.assert_allclose(weights, expected_weights.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(context, expected_context.detach().numpy(), rtol=1e-12)
