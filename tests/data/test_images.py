import os

import numpy as np
import pytest

pytest.importorskip("sklearn")
Image = pytest.importorskip("PIL.Image")

from sklearn.datasets import load_digits  # noqa: E402

from zoo.data import images  # noqa: E402
from zoo.data.images import ImageArray, load_image_folder  # noqa: E402
from zoo.data.splits import DataError, split_sizes  # noqa: E402

DIGITS = load_digits()
# Class folder name -> digit; sorted, the names are not in digit order.
CLASSES = {"zero": 0, "one": 1, "two": 2}


def digit_images(digit: int, count: int) -> list[np.ndarray]:
    """The first `count` 8x8 images of `digit`, scaled from 0..16 to 0..255 uint8."""
    found = DIGITS.images[DIGITS.target == digit][:count]
    return [np.round(image * 255 / 16).astype(np.uint8) for image in found]


def write_image(path, pixels: np.ndarray, **save_options) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, **save_options)
    return str(path)


def write_classes(folder, per_class: int = 4, suffix: str = ".png", **save_options) -> dict:
    """`folder/<class>/<i><suffix>` digits; returns {file: pixels}."""
    written = {}
    for name, digit in CLASSES.items():
        for i, pixels in enumerate(digit_images(digit, per_class)):
            written[write_image(folder / name / f"{i:02d}{suffix}", pixels, **save_options)] = (
                pixels
            )
    return written


def by_file(split) -> dict[str, tuple[np.ndarray, int]]:
    return {
        f: (x, int(y)) for f, x, y in zip(split.x.files, np.asarray(split.x), split.y, strict=True)
    }


def count_calls(monkeypatch, name: str) -> list:
    calls, original = [], getattr(images, name)

    def counted(*args):
        calls.append(args[0])
        return original(*args)

    monkeypatch.setattr(images, name, counted)
    return calls


def test_png_pixels_equal_the_source_and_labels_follow_sorted_class_names(tmp_path):
    written = write_classes(tmp_path)
    dataset = load_image_folder(tmp_path, validation=0.0, test=0.0)
    assert dataset.class_names == ("one", "two", "zero") and dataset.num_classes == 3
    assert dataset.task == "classify" and dataset.input_shape == (8, 8, 1)
    assert len(dataset.validation.x) == 0 and len(dataset.test.x) == 0
    found = by_file(dataset.train)
    assert sorted(found) == sorted(written)
    for file, (x, y) in found.items():
        assert x.dtype == np.float32 and dataset.train.y.dtype == np.int32
        np.testing.assert_array_equal(x[..., 0], written[file].astype(np.float32) / 255)
        assert dataset.class_names[y] == os.path.basename(os.path.dirname(file))


def test_jpeg_pixels_are_close_and_suffixes_are_case_insensitive(tmp_path):
    written = write_classes(tmp_path, suffix=".JPG", quality=95)
    (tmp_path / "one" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "one" / ".hidden.png", digit_images(1, 1)[0])
    dataset = load_image_folder(tmp_path, validation=0.0, test=0.0)
    found = by_file(dataset.train)
    assert sorted(found) == sorted(written)
    for file, (x, _) in found.items():
        np.testing.assert_allclose(x[..., 0], written[file] / 255, atol=0.1)
        assert np.abs(x[..., 0] - written[file] / 255).mean() < 0.02


def test_rgb_images_keep_three_channels_and_gray_ones_join_them(tmp_path):
    gray = digit_images(3, 2)
    rgb = [np.stack([g, 255 - g, g // 2], axis=-1) for g in digit_images(4, 2)]
    files = [write_image(tmp_path / "a" / f"{i}.png", p) for i, p in enumerate(gray)]
    files += [write_image(tmp_path / "b" / f"{i}.png", p) for i, p in enumerate(rgb)]
    dataset = load_image_folder(tmp_path, validation=0.0, test=0.0)
    assert dataset.input_shape == (8, 8, 3)
    found = by_file(dataset.train)
    for file, pixels in zip(
        files, [np.repeat(g[..., None], 3, axis=-1) for g in gray] + rgb, strict=True
    ):
        np.testing.assert_array_equal(found[file][0], pixels.astype(np.float32) / 255)
    as_gray = load_image_folder(tmp_path, channels=1, validation=0.0, test=0.0)
    expected = np.asarray(Image.fromarray(rgb[0]).convert("L"), np.float32) / 255
    np.testing.assert_array_equal(by_file(as_gray.train)[files[2]][0][..., 0], expected)


def test_gif_is_read_from_its_first_frame(tmp_path):
    first, second = digit_images(5, 2)
    frames = [Image.fromarray(first), Image.fromarray(second)]
    os.makedirs(tmp_path / "a")
    frames[0].save(tmp_path / "a" / "0.gif", save_all=True, append_images=frames[1:])
    write_image(tmp_path / "b" / "0.png", second)
    dataset = load_image_folder(tmp_path, validation=0.0, test=0.0)
    gif = by_file(dataset.train)[str(tmp_path / "a" / "0.gif")][0]
    np.testing.assert_array_equal(gif[..., 0], first.astype(np.float32) / 255)


def test_mixed_sizes_need_image_size_and_are_resized_bilinearly(tmp_path):
    small = write_image(tmp_path / "a" / "0.png", digit_images(1, 1)[0])
    large_pixels = np.asarray(Image.fromarray(digit_images(2, 1)[0]).resize((12, 10)))
    large = write_image(tmp_path / "b" / "0.png", large_pixels)
    with pytest.raises(DataError, match=rf"{small} is 8x8, {large} is 10x12 .*--image-size H,W"):
        load_image_folder(tmp_path)
    dataset = load_image_folder(tmp_path, image_size=(6, 5), validation=0.0, test=0.0)
    assert dataset.input_shape == (6, 5, 1)
    expected = Image.fromarray(large_pixels).resize((5, 6), Image.Resampling.BILINEAR)
    resized = by_file(dataset.train)[large][0][..., 0]
    np.testing.assert_array_equal(resized, np.asarray(expected, np.float32) / 255)


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_train_val_test_folders_are_the_splits(tmp_path, val_name):
    train = write_classes(tmp_path / "train", per_class=3)
    val = {write_image(tmp_path / val_name / "two" / "x.png", digit_images(2, 1)[0]): None}
    test = write_classes(tmp_path / "test", per_class=2)
    dataset = load_image_folder(tmp_path, validation=0.5, test=0.5)  # fractions unused
    for split, written in zip(dataset[:3], (train, val, test), strict=True):
        assert sorted(split.x.files) == sorted(written)
    assert dataset.validation.y.tolist() == [dataset.class_names.index("two")]


def test_missing_val_and_test_folders_give_empty_splits(tmp_path):
    write_classes(tmp_path / "train", per_class=2)
    dataset = load_image_folder(tmp_path)
    assert len(dataset.train.x) == 6
    for split in (dataset.validation, dataset.test):
        assert split.x.shape == (0, 8, 8, 1) and split.y.shape == (0,)
        assert split.y.dtype == np.int32 and np.asarray(split.x).shape == (0, 8, 8, 1)


def test_seed_split_is_deterministic_and_disjoint(tmp_path):
    write_classes(tmp_path, per_class=10)
    a, b, c = (load_image_folder(tmp_path, seed=s, validation=0.2, test=0.3) for s in (1, 1, 2))
    parts = [s.x.files for s in a[:3]]
    assert [len(p) for p in parts] == list(split_sizes(30, validation=0.2, test=0.3))
    assert len(set().union(*parts)) == 30
    assert [s.x.files for s in b[:3]] == parts
    assert c.test.x.files != a.test.x.files
    for split_a, split_b in zip(a[:3], b[:3], strict=True):
        np.testing.assert_array_equal(np.asarray(split_a.x), np.asarray(split_b.x))
        np.testing.assert_array_equal(split_a.y, split_b.y)


def test_lazy_indexing_equals_the_eager_array(tmp_path):
    write_classes(tmp_path, per_class=3)
    x = load_image_folder(tmp_path, validation=0.0, test=0.0).train.x
    assert isinstance(x, ImageArray) and x.shape == (9, 8, 8, 1) and len(x) == 9
    assert x.ndim == 4 and x.dtype == np.float32
    eager = np.asarray(x)
    assert eager.dtype == np.float32 and eager.shape == x.shape
    index = np.array([4, 0, 4, 8, 2])
    np.testing.assert_array_equal(x[index], eager[index])
    np.testing.assert_array_equal(x[3], eager[3])
    np.testing.assert_array_equal(x[-1], eager[-1])
    np.testing.assert_array_equal(x[2:7:2], eager[2:7:2])
    np.testing.assert_array_equal(x[[1, 1]], eager[[1, 1]])
    assert x[np.array([], np.int64)].shape == (0, 8, 8, 1)
    with pytest.raises(IndexError):
        x[9]


def test_workers_decode_the_same_pixels(tmp_path):
    write_classes(tmp_path, per_class=3)
    serial = load_image_folder(tmp_path, seed=3).train
    threaded = load_image_folder(tmp_path, seed=3, workers=2).train
    assert threaded.x.files == serial.x.files
    np.testing.assert_array_equal(np.asarray(threaded.x), np.asarray(serial.x))


def test_cache_returns_the_same_pixels_without_decoding_again(tmp_path, monkeypatch):
    write_classes(tmp_path / "data", per_class=3)
    cache_dir = tmp_path / "cache"
    first = load_image_folder(tmp_path / "data", cache_dir=cache_dir, validation=0.0, test=0.0)
    decoded = count_calls(monkeypatch, "_decode")
    np.testing.assert_array_equal(first.train.x[[2, 5]], first.train.x[[2, 5]])
    assert len(decoded) == 2  # the second read of rows 2 and 5 came from the cache
    eager = np.asarray(first.train.x)
    assert len(decoded) == 9
    probed = count_calls(monkeypatch, "_probe")
    again = load_image_folder(tmp_path / "data", cache_dir=cache_dir, validation=0.0, test=0.0)
    np.testing.assert_array_equal(np.asarray(again.train.x), eager)
    assert len(decoded) == 9 and probed == []
    plain = load_image_folder(tmp_path / "data", validation=0.0, test=0.0)
    np.testing.assert_array_equal(np.asarray(plain.train.x), eager)


def test_cache_never_serves_a_row_whose_flag_is_unset(tmp_path):
    write_classes(tmp_path / "data", per_class=2)
    cache_dir = tmp_path / "cache"
    dataset = load_image_folder(tmp_path / "data", cache_dir=cache_dir, validation=0.0, test=0.0)
    dataset.train.x[0]
    (name,) = [n for n in os.listdir(cache_dir) if n.endswith(".u8")]
    # Rows half-written by a process that was killed before setting their flags.
    raw = np.memmap(cache_dir / name, np.uint8, mode="r+")
    done, pixels = raw[:6], raw[6:].reshape(6, -1)
    assert done.sum() == 1
    pixels[done == 0] = 123
    raw.flush()
    again = load_image_folder(tmp_path / "data", cache_dir=cache_dir, validation=0.0, test=0.0)
    plain = load_image_folder(tmp_path / "data", validation=0.0, test=0.0)
    np.testing.assert_array_equal(np.asarray(again.train.x), np.asarray(plain.train.x))


def test_cache_is_keyed_by_the_files(tmp_path, monkeypatch):
    written = write_classes(tmp_path / "data", per_class=2)
    cache_dir = tmp_path / "cache"
    np.asarray(load_image_folder(tmp_path / "data", cache_dir=cache_dir).train.x)
    changed = sorted(written)[0]
    write_image(changed, 255 - written[changed])
    os.utime(changed, ns=(1, 1))
    decoded = count_calls(monkeypatch, "_decode")
    dataset = load_image_folder(tmp_path / "data", cache_dir=cache_dir, validation=0.0, test=0.0)
    found = by_file(dataset.train)[changed][0][..., 0]
    np.testing.assert_array_equal(found, (255 - written[changed]).astype(np.float32) / 255)
    assert len(decoded) == 6


def truncated_png(path) -> str:
    write_image(path, digit_images(7, 1)[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def test_truncated_image_fails_or_is_skipped_and_logged(tmp_path):
    written = write_classes(tmp_path, per_class=2)
    bad = truncated_png(tmp_path / "one" / "99.png")
    with pytest.raises(DataError, match=rf"cannot read image {bad} .*skip_bad_files=True"):
        load_image_folder(tmp_path)
    messages = []
    dataset = load_image_folder(
        tmp_path, skip_bad_files=True, validation=0.0, test=0.0, log=messages.append
    )
    assert sorted(dataset.train.x.files) == sorted(written)
    assert len(messages) == 1 and messages[0].startswith(
        f"skipped 1 unreadable images: first {bad}"
    )
    for name in os.listdir(tmp_path / "one"):
        if name != "99.png":
            truncated_png(tmp_path / "one" / name)
    with pytest.raises(DataError, match=f"class folder {tmp_path / 'one'} holds no readable"):
        load_image_folder(tmp_path, skip_bad_files=True)


def test_unreadable_file_with_an_image_suffix_is_named(tmp_path):
    write_classes(tmp_path, per_class=2)
    (tmp_path / "two" / "fake.webp").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=f"cannot read image {tmp_path / 'two' / 'fake.webp'}"):
        load_image_folder(tmp_path)


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match=f"image folder {tmp_path / 'nope'} does not exist"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match=f"{tmp_path / 'file.png'} is not a directory"):
        load_image_folder(tmp_path / "file.png")
    with pytest.raises(DataError, match=f"no images in {tmp_path}: expected"):
        load_image_folder(tmp_path)
    write_image(tmp_path / "solo" / "0.png", digit_images(1, 1)[0])
    with pytest.raises(
        DataError, match="one class folder \\(solo\\); a classifier needs at least 2"
    ):
        load_image_folder(tmp_path)
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"class folder {tmp_path / 'empty'} holds no .png"):
        load_image_folder(tmp_path)


def test_split_folder_errors(tmp_path):
    write_classes(tmp_path / "train", per_class=1)
    write_image(tmp_path / "test" / "seven" / "0.png", digit_images(7, 1)[0])
    with pytest.raises(DataError, match=f"{tmp_path / 'test' / 'seven'} is not a class of the"):
        load_image_folder(tmp_path)
    os.rename(tmp_path / "test" / "seven", tmp_path / "test" / "one")
    os.makedirs(tmp_path / "val")
    with pytest.raises(DataError, match=f"no images in {tmp_path / 'val'}"):
        load_image_folder(tmp_path)
    os.makedirs(tmp_path / "validation")
    with pytest.raises(DataError, match="both val/ and validation/"):
        load_image_folder(tmp_path)
    os.rmdir(tmp_path / "val")
    os.rmdir(tmp_path / "validation")
    os.makedirs(tmp_path / "cats")
    with pytest.raises(DataError, match="holds train/, so its folders are splits, but also cats"):
        load_image_folder(tmp_path)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"channels": 2}, "channels must be 1 or 3, got 2"),
        ({"image_size": (8,)}, r"image_size must be two positive ints \(H, W\), got \(8,\)"),
        ({"image_size": (0, 8)}, "image_size must be two positive ints"),
        ({"image_size": "8,8"}, "image_size must be two positive ints"),
        ({"image_size": 8}, "image_size must be two positive ints"),
    ],
)
def test_bad_options(tmp_path, options, message):
    write_classes(tmp_path, per_class=1)
    with pytest.raises(DataError, match=message):
        load_image_folder(tmp_path, **options)


def test_each_process_of_a_sharded_run_decodes_only_its_rows(tmp_path, monkeypatch):
    from zoo.data import batches

    write_classes(tmp_path / "folder", per_class=8)
    train = load_image_folder(tmp_path / "folder", validation=0.0, test=0.0).train
    whole = [batch.x for batch in batches(train, 6, seed=1, epoch=3)]
    seen = []
    for process in range(2):  # what process p of 2 reads of epoch 3, batches of 6
        decoded = count_calls(monkeypatch, "_decode")
        rows = [batch.x for batch in batches(train, 6, seed=1, epoch=3, shard=(process, 2))]
        expected = [x[3 * process : 3 * (process + 1)] for x in whole]
        np.testing.assert_array_equal(np.concatenate(rows), np.concatenate(expected))
        assert len(decoded) == 3 * len(rows)  # its three rows of every batch, nothing else
        seen.append(set(decoded))
    assert not seen[0] & seen[1]


def test_processes_share_the_load_time_check_each_decoding_its_share(tmp_path, monkeypatch):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    write_classes(tmp_path / "folder", per_class=6)
    bad = truncated_png(tmp_path / "folder" / "one" / "99.png")
    rows, barrier = {}, threading.Barrier(2)

    def load_as(rank):  # process `rank` of 2; combine sums what both found
        def combine(found):
            rows[rank] = found
            barrier.wait()
            return rows[0] + rows[1]

        return load_image_folder(
            tmp_path / "folder", skip_bad_files=True, shard=(rank, 2), combine=combine
        )

    probed = count_calls(monkeypatch, "_probe")
    with ThreadPoolExecutor(2) as pool:
        loaded = list(pool.map(load_as, range(2)))
    assert len(probed) == len(set(probed)) == 19  # each of the 19 files once, across the two
    alone = load_image_folder(tmp_path / "folder", skip_bad_files=True)
    for dataset in loaded:
        for name in ("train", "validation", "test"):
            ours, theirs = getattr(dataset, name), getattr(alone, name)
            assert ours.x.files == theirs.x.files and bad not in ours.x.files
            np.testing.assert_array_equal(ours.y, theirs.y)
        assert dataset.train.x.shape == alone.train.x.shape
    with pytest.raises(ValueError, match="needs combine"):
        load_image_folder(tmp_path / "folder", shard=(0, 2))
