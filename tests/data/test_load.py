import pytest

from zoo.data import DATASETS, SOURCES, DataError, check_source, load


def test_every_dataset_says_what_its_path_is():
    assert set(DATASETS) == set(SOURCES)
    for name, source in SOURCES.items():
        assert (source.path is None) == (
            name in ("digits", "digits-seq", "digits-strips", "digits-moving", "series", "numbers")
        )
        assert not source.needs_path or source.path


@pytest.mark.parametrize(
    "name, path, options, message",
    [
        ("cifar", None, {}, "unknown dataset 'cifar'; choose from: digits, digits-seq"),
        ("mnist", None, {}, "dataset 'mnist' needs data_path: mnist.npz or IDX files"),
        ("csv", None, {}, "dataset 'csv' needs data_path: a CSV file"),
        ("digits", "x.png", {}, "data_path is not read by dataset 'digits', which is bundled"),
        (
            "series",
            "s.csv",
            {},
            "datasets that read a path: text, words, mnist, images, csv, arrays",
        ),
        ("digits", None, {"channels": 3}, "channels is not read by dataset 'digits'; .*images"),
        ("images", "d", {"column": "v"}, "column is not read by dataset 'images'; .*csv"),
    ],
)
def test_a_path_or_option_a_dataset_would_not_read_is_refused(name, path, options, message):
    with pytest.raises(DataError, match=message):
        check_source(name, path, **options)
    with pytest.raises(DataError, match=message):
        load(name, path=path, **options)


def test_options_given_as_none_are_not_given():
    check_source("digits", None, channels=None, column=None)
    check_source("text", None)  # the bundled text, or a file
    check_source("text", "notes.txt")
