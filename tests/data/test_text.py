import numpy as np
import pytest

from zoo.data import text as text_module
from zoo.data.text import corpus, decode, encode, load_text, windows


def test_corpus_is_cpython_prose_with_the_documented_entropy():
    text = corpus()
    assert len(text) > 400_000 and "the" in text
    _, counts = np.unique(list(text), return_counts=True)
    p = counts / counts.sum()
    assert 4.5 < -(p * np.log2(p)).sum() < 4.9  # the unigram baseline the LM must beat


def test_windows_predict_the_next_token():
    tokens = np.arange(10, dtype=np.int32)
    split = windows(tokens, 4)
    np.testing.assert_array_equal(split.x, [[0, 1, 2, 3], [4, 5, 6, 7]])
    np.testing.assert_array_equal(split.y, [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_splits_are_by_position_and_decode_back():
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(400))
    dataset = load_text(text=text, seq_len=16, validation=0.1, test=0.1)
    assert dataset.task == "language" and dataset.num_classes == len(set(text))
    train, val, test = (decode(s.x, dataset.vocab) for s in dataset[:3])
    # Train comes first, test last, and none of them overlap.
    assert text.find(test) > text.find(val) > text.find(train) == 0
    np.testing.assert_array_equal(encode(train, dataset.vocab), dataset.train.x.ravel())


def test_unknown_characters_and_short_text():
    with pytest.raises(ValueError, match=r"characters \['z'\] are not in the vocabulary"):
        encode("abz", "ab")
    with pytest.raises(ValueError, match="too short for seq_len 64"):
        load_text(text="tiny text", seq_len=64)


def test_token_ids_outside_the_vocabulary_are_refused_at_load(monkeypatch):
    encode_ids = encode
    monkeypatch.setattr(text_module, "encode", lambda text, vocab: encode_ids(text, vocab) + 1)
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(40))
    vocab_size = len(set(text))
    with pytest.raises(
        ValueError,
        match=rf"text tokens must be in \[0, {vocab_size}\) \(the vocabulary size\), "
        rf"found ids 1\.\.{vocab_size}",
    ):
        load_text(text=text, seq_len=16)


def test_decode_refuses_ids_outside_the_vocabulary():
    assert decode([2, 0], "abc") == "ca"
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 3\).*found ids -1\.\.2"):
        decode([2, -1], "abc")
