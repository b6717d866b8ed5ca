import numpy as np
import pytest

from zoo.data import DataError
from zoo.data import text as text_module
from zoo.data.text import (
    UNKNOWN,
    corpus,
    decode,
    encode,
    load_text,
    load_text_file,
    load_word_boundaries,
    load_word_boundaries_file,
    windows,
)


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
    assert dataset.task == "language" and dataset.vocab == "".join(sorted(set(text) | {UNKNOWN}))
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
    monkeypatch.setattr(text_module, "encode", lambda *args, **kw: encode_ids(*args, **kw) + 2)
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(40))
    vocab_size = len(set(text)) + 1  # and the unknown symbol, the last id, which no id is
    with pytest.raises(
        ValueError,
        match=rf"text tokens must be in \[0, {vocab_size}\) \(the vocabulary size\), "
        rf"found ids 2\.\.{vocab_size}",
    ):
        load_text(text=text, seq_len=16)


def test_decode_refuses_ids_outside_the_vocabulary():
    assert decode([2, 0], "abc") == "ca"
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 3\).*found ids -1\.\.2"):
        decode([2, -1], "abc")


def test_the_vocabulary_is_the_training_texts_and_the_rest_is_unknown():
    text = "ab" * 450 + "cab" * 20  # 960 characters: 'c' only after the training part's 864
    dataset = load_text(text=text, seq_len=8, validation=0.05, test=0.05)
    assert dataset.vocab == "ab" + UNKNOWN
    assert dataset.stats == {"unknown_characters": 20}
    later = "".join(decode(s.x, dataset.vocab) for s in (dataset.validation, dataset.test))
    assert later.count(UNKNOWN) > 10 and "c" not in later


def test_a_text_file_is_read_as_utf8(tmp_path):
    text = "".join(f"zeile {i}: grüße, ½ café\n" for i in range(200))
    path = tmp_path / "prose.txt"
    path.write_text(text, encoding="utf-8")
    dataset = load_text_file(path, seq_len=16)
    assert "ü" in dataset.vocab and "½" in dataset.vocab
    assert decode(dataset.train.x, dataset.vocab) == text[: dataset.train.x.size]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"fine line\n" * 3 + b"bad \xff byte", r"not UTF-8 text: byte 34 \(line 4\)"),
        (b"short", "too short for seq_len 64"),
    ],
    ids=["empty", "latin1", "short"],
)
def test_bad_text_files_are_named(tmp_path, content, message):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        load_text_file(path)
    assert str(path) in str(error.value)
    with pytest.raises(DataError, match="does not exist"):
        load_text_file(tmp_path / "missing.txt")


def _segmented(split, vocab):
    """Each example's characters with a space after every character tagged as a word's end."""
    return [
        "".join(c + " " * int(tag) for c, tag in zip(decode(x[:n], vocab), y[:n], strict=True))
        for x, y, n in zip(split.x, split.y, split.lengths, strict=True)
    ]


def test_word_boundaries_put_the_spaces_back():
    lines = [f"line {i} of  the quick\tbrown fox" for i in range(20)] + ["one", "  "]
    dataset = load_word_boundaries(text="\n".join(lines), validation=0.1, test=0.1)
    assert (dataset.task, dataset.num_classes) == ("tag", 2)
    assert dataset.class_names == ("inside", "word end")
    assert dataset.vocab == "".join(sorted(set("".join("".join(lines[:16]).split())) | {UNKNOWN}))
    segmented = [_segmented(split, dataset.vocab) for split in dataset[:3]]
    # Lines in order, one-word and empty lines dropped; the last 2 of 20 are the test split.
    assert sum(segmented, []) == [" ".join(line.split()) + " " for line in lines[:20]]
    assert [len(split.x) for split in dataset[:3]] == [16, 2, 2]
    for split in dataset[:3]:
        past_the_end = np.arange(64)[None, :] >= split.lengths[:, None]
        assert not split.x[past_the_end].any() and not split.y[past_the_end].any()


def test_long_lines_are_cut_between_words_and_longer_words_left_out():
    text = "ab cd efg hi\n" * 9 + "a b toolongword c d"
    dataset = load_word_boundaries(text=text, max_length=5, validation=0.1, test=0.1)
    lines = sum((_segmented(split, dataset.vocab) for split in dataset[:3]), [])
    assert lines == ["ab cd ", "efg hi "] * 9 + ["a b ", "c d "]


def test_word_boundaries_of_the_bundled_text():
    dataset = load_word_boundaries()
    sizes = [len(split.x) for split in dataset[:3]]
    assert sizes[0] > 6000 and sizes[1] == sizes[2] > 300
    assert dataset.train.x.shape[1] == 64 and dataset.train.lengths.max() <= 64
    tags = dataset.test.y[np.arange(64)[None, :] < dataset.test.lengths[:, None]]
    assert 0.15 < tags.mean() < 0.3  # words of about 5 characters


def test_word_boundaries_refuse_text_without_lines_of_words(tmp_path):
    with pytest.raises(DataError, match="0 lines of two or more words"):
        load_word_boundaries(text="one\ntwo\n")
    path = tmp_path / "words.txt"
    path.write_text("single\n" * 5, encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}: text has 0 lines"):
        load_word_boundaries_file(path)
