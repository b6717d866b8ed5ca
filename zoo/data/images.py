"""Images in class folders, decoded with Pillow as they are read, optionally cached on disk.

Two layouts: `DIR/<class>/<image>`, split into train/validation/test by `seed`; or
`DIR/train/<class>/<image>` with optional `DIR/val/` (or `DIR/validation/`) and `DIR/test/`
holding the same kind of class folders, used as the splits. Class names are the sorted class
folders of the training folder. Only files ending in `IMAGE_SUFFIXES` (any case) are read;
hidden files and folders (starting with '.') and files of other kinds are ignored. Pixels are
converted to 'L' or 'RGB' (a GIF's first frame; 16-bit grayscale scaled to 8 bits), bilinearly
resized where `image_size` asks, and scaled to [0, 1].

Every image is decoded once, to its end, when the folder is loaded, so a truncated file fails
(or is skipped) at load time rather than in the middle of an epoch; `Image.verify()` would be
cheaper but lets truncated JPEG, GIF and BMP files through. Pixels are decoded again only when
read, so a split's `x` is an `ImageArray` that holds file names, not pixels.

With `cache_dir`, a load leaves two files there, both keyed by a hash of the sorted file list
with each file's size and mtime (and the Pillow version):
  - `images-<key>.json`: what the load-time check found (mode and size, or the error, per
    file), so a second load of the same files decodes nothing up front.
  - `images-<key>-<H>x<W>x<C>.u8`: a uint8 file of `N` "done" flags followed by the `(N, H, W,
    C)` decoded pixels, one row per file, read through `np.memmap`. A row is written and flushed
    to the file before its flag is set, so a process killed mid-write leaves a row that is
    decoded again, never one that is read half-written. Processes sharing the cache may decode a
    row twice (they write the same bytes) but only read rows whose flag is set. The file is
    created under a temporary name and linked into place, so it is never replaced while in use.
"""

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from zoo.data.splits import DataError, Dataset, Split, split_by_seed

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
VALIDATION_FOLDERS = ("val", "validation")
_GRAY_MODES = ("1", "L", "LA", "F")
_CACHE_VERSION = 1

# What one image looks like after the load-time check: (mode, height, width), or why it failed.
_Probe = tuple[str, int, int] | str


class PixelCache(NamedTuple):
    """`done` `(N,)` uint8 flags and `pixels` `(N, H, W, C)` uint8, both views of one memmap."""

    done: np.ndarray
    pixels: np.ndarray


class ImageArray:
    """`(N, H, W, C)` float32 images in [0, 1], decoded from their files when indexed.

    `images[i]`, `images[a:b]` and `images[index_array]` return NumPy arrays as a NumPy array
    would (rows in the order of the indices); `np.asarray(images)` decodes them all. Only the
    rows asked for are decoded, so a process of a multi-process run decodes only its own. With
    a `cache`, decoded rows are stored there and later reads never decode them again. With a
    `pool`, a read's missing rows are decoded in its threads (Pillow releases the GIL while it
    decodes, which pays off for images larger than about 100x100).
    """

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(
        self,
        files: Sequence[str],
        image_shape: tuple[int, int, int],
        *,
        rows: np.ndarray | None = None,
        cache: PixelCache | None = None,
        pool: Executor | None = None,
    ):
        self._files = tuple(files)
        self._rows = np.arange(len(self._files)) if rows is None else np.asarray(rows, np.int64)
        self._image_shape = tuple(image_shape)
        self._cache = cache
        self._pool = pool
        self.shape = (len(self._rows), *self._image_shape)

    @property
    def files(self) -> tuple[str, ...]:
        """The file of each row."""
        return tuple(self._files[row] for row in self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index) -> np.ndarray:
        rows = self._rows[index]
        images = self._read(rows.reshape(-1)).astype(np.float32) / 255.0
        return images.reshape(*rows.shape, *self._image_shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False:
            raise ValueError("decoding images always makes a copy")
        images = self[:]
        return images if dtype is None else images.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"ImageArray(shape={self.shape}, dtype=float32)"

    def __getstate__(self) -> dict:
        """What a worker process needs: file names, rows and the cache's file, not its pixels
        (pickling a memmap would copy them) nor the thread pool."""
        state = self.__dict__ | {"_pool": None}
        if self._cache is not None:
            state["_cache"] = (self._cache.done.filename, self._cache.pixels.shape)
        return state

    def __setstate__(self, state: dict) -> None:
        if state["_cache"] is not None:
            state["_cache"] = _map_pixel_cache(*state["_cache"])
        self.__dict__.update(state)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """uint8 `(len(rows), H, W, C)` pixels of the given rows of `self._files`."""
        if self._cache is None:
            unique, inverse = np.unique(rows, return_inverse=True)
            return self._decode_rows(unique)[inverse]
        done, pixels = self._cache
        missing = rows[done[rows] == 0]
        if len(missing):
            missing = np.unique(missing)
            pixels[missing] = self._decode_rows(missing)
            pixels.flush()  # the rows reach the file before the flags that vouch for them
            done[missing] = 1
        return pixels[rows]

    def _decode_rows(self, rows: np.ndarray) -> np.ndarray:
        height, width, channels = self._image_shape
        names = [self._files[row] for row in rows]
        decoded = _map(self._pool, lambda name: _decode(name, channels, (height, width)), names)
        if not decoded:
            return np.zeros((0, *self._image_shape), np.uint8)
        return np.stack(decoded)


def load_image_folder(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    skip_bad_files: bool = False,
    validation: float = 0.1,
    test: float = 0.2,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 0,
    log: Callable[[str], None] | None = None,
    shard: tuple[int, int] = (0, 1),
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Dataset:
    """Loads a folder of class folders as `(N, H, W, C)` float32 images in [0, 1].

    Args:
      path: `DIR` of either layout (see the module docstring).
      seed: fixes the train/validation/test split of the class-folder layout.
      image_size: `(H, W)` to resize every image to (bilinear); None keeps their own size,
        which must then be the same for all.
      channels: 1 (grayscale) or 3 (RGB); None: 1 if every image is grayscale, else 3.
      skip_bad_files: skip files that do not decode (and report them to `log`) instead of
        failing on the first.
      validation: the fraction held out for validation in the class-folder layout; ignored
        when the folder holds `train/` (a missing `val/` folder gives an empty split).
      test: the same for testing (`test/`).
      cache_dir: directory for the decoded images and the load-time check; None: no cache.
      workers: threads that decode images; 0 decodes in the calling thread.
      log: called with a one-line message when bad files were skipped.
      shard: `(index, count)`: in process `index` of `count` loading the folder together (a
        multi-process run), the load-time check decodes only every `count`-th file from the
        `index`-th, and `combine` (which sums an int array over the processes, such as
        `multihost_utils.process_allgather(a).sum(0)`) shares what each found.

    Returns:
      A 'classify' `Dataset` whose splits' `x` are `ImageArray`s and `y` int32 labels, the
      indices of `class_names`.

    Raises:
      DataError: naming the file, folder or option that cannot be used.
    """
    _check_options(image_size, channels, workers)
    _require_pillow()
    root = os.fspath(path)
    if not os.path.exists(root):
        raise DataError(f"image folder {root} does not exist")
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} is not a directory")
    split_folders = _split_folders(root)
    folders = split_folders or {"train": root}
    files, labels, class_names = _class_files(folders["train"])
    if len(class_names) < 2:
        raise DataError(
            f"{folders['train']} has one class folder ({class_names[0]}); "
            "a classifier needs at least 2"
        )
    parts = [0] * len(files)  # 0, 1, 2: from the train, validation, test folder
    for part, name in ((1, "validation"), (2, "test")):
        if name in folders:
            part_files, part_labels, _ = _class_files(folders[name], class_names)
            files, labels = files + part_files, labels + part_labels
            parts += [part] * len(part_files)

    pool = ThreadPoolExecutor(workers) if workers else None
    cache_key = None
    if cache_dir is not None:
        cache_dir, cache_key = _make_cache_dir(cache_dir), _cache_key(root, files)
    probes = _probe_all(files, pool, cache_dir, cache_key, shard, combine)
    good = np.array([i for i, probe in enumerate(probes) if not isinstance(probe, str)], np.int64)
    _check_bad_files(files, probes, good, skip_bad_files, log)
    image_shape = _image_shape(files, probes, good, image_size, channels)
    cache = None
    if cache_dir is not None:
        cache = _open_pixel_cache(cache_dir, cache_key, (len(files), *image_shape))

    labels, parts = np.asarray(labels, np.int32)[good], np.asarray(parts)[good]
    if split_folders:
        splits = [Split(good[parts == part], labels[parts == part]) for part in (0, 1, 2)]
    else:
        splits = split_by_seed(good, labels, seed=seed, validation=validation, test=test)
    train, val, test_split = (
        Split(ImageArray(files, image_shape, rows=s.x, cache=cache, pool=pool), s.y) for s in splits
    )
    return Dataset(
        train, val, test_split, num_classes=len(class_names), class_names=tuple(class_names)
    )


def save_image_folder(
    root: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    suffix: str = ".png",
) -> list[str]:
    """Writes `(N, H, W, C)` images in [0, 1] (C 1 or 3) as `root/<class name>/<i>.<suffix>`
    files, the layout `load_image_folder` reads; returns the file names in the order of `images`.
    """
    _require_pillow()
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) != len(labels):
        raise ValueError(
            f"images must be (N, H, W, 1 or 3) with one label each, got {images.shape} and "
            f"{np.shape(labels)}"
        )
    pixels = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
    width = len(str(len(images)))
    names = []
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        folder = os.path.join(root, class_names[int(label)])
        os.makedirs(folder, exist_ok=True)
        names.append(os.path.join(folder, f"{i:0{width}d}{suffix}"))
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(names[-1])
    return names


def read_image(filename: str | os.PathLike, shape: tuple[int, int, int]) -> np.ndarray:
    """One image file as a `(H, W, C)` float32 array in [0, 1]: converted to `C` channels (1 or
    3) and bilinearly resized to `(H, W)`, as `load_image_folder` reads its files."""
    _require_pillow()
    height, width, channels = shape
    if channels not in (1, 3):
        raise DataError(f"images have 1 or 3 channels, not {channels}")
    return _decode(os.fspath(filename), channels, (height, width)).astype(np.float32) / 255


def image_channels(filename: str | os.PathLike) -> tuple[int, str]:
    """`(channels, mode)` of one image file: 1 for grayscale modes, 3 for color ones (as an image
    folder's channel count is picked); an unreadable file is a `DataError` naming it."""
    _require_pillow()
    probe = _probe(os.fspath(filename))
    if isinstance(probe, str):
        raise DataError(f"cannot read image {filename}: {probe}")
    mode = probe[0]
    return (1 if mode in _GRAY_MODES or mode.startswith("I") else 3), mode


def _require_pillow() -> None:
    try:
        import PIL  # noqa: F401
    except ImportError as error:
        raise ImportError("image folders are decoded with Pillow: pip install pillow") from error


def _check_options(image_size, channels, workers) -> None:
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if image_size is not None and not (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in image_size)
        and min(image_size) > 0
    ):
        raise DataError(f"image_size must be two positive ints (H, W), got {image_size!r}")
    if workers < 0:
        raise DataError(f"workers must be >= 0, got {workers}")


def _split_folders(root: str) -> dict[str, str]:
    """`{'train': ..., 'validation': ..., 'test': ...}` folders when `root` holds `train/`,
    (the last two only where they exist), else `{}`."""
    names = _subfolders(root)
    if "train" not in names:
        return {}
    val_names = [name for name in VALIDATION_FOLDERS if name in names]
    if len(val_names) > 1:
        raise DataError(f"{root} holds both val/ and validation/; keep one")
    others = [name for name in names if name not in ("train", "test", *VALIDATION_FOLDERS)]
    if others:
        raise DataError(
            f"{root} holds train/, so its folders are splits, but also {', '.join(others)}: "
            "put class folders under train/ (and val/, test/)"
        )
    folders = {"train": os.path.join(root, "train")}
    if val_names:
        folders["validation"] = os.path.join(root, val_names[0])
    if "test" in names:
        folders["test"] = os.path.join(root, "test")
    return folders


def _class_files(
    folder: str, class_names: list[str] | None = None
) -> tuple[list[str], list[int], list[str]]:
    """`(files, labels, class folder names)` of a folder of class folders, sorted by name.

    Labels index `class_names` (default: this folder's own class folders).
    """
    names = _subfolders(folder)
    if not names:
        raise DataError(
            f"no images in {folder}: expected {os.path.join(folder, '<class>', '<image>')}"
        )
    class_names = names if class_names is None else class_names
    files, labels = [], []
    for name in names:
        class_folder = os.path.join(folder, name)
        if name not in class_names:
            raise DataError(
                f"{class_folder} is not a class of the training folder "
                f"(classes: {', '.join(class_names)})"
            )
        found = _image_files(class_folder)
        if not found:
            raise DataError(
                f"class folder {class_folder} holds no {'/'.join(IMAGE_SUFFIXES)} images"
            )
        files += found
        labels += [class_names.index(name)] * len(found)
    return files, labels, names


def _subfolders(folder: str) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: str) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(
            e.path
            for e in entries
            if e.is_file()
            and not e.name.startswith(".")
            and e.name.lower().endswith(IMAGE_SUFFIXES)
        )


def _check_bad_files(files, probes, good, skip_bad_files, log) -> None:
    bad = [i for i, probe in enumerate(probes) if isinstance(probe, str)]
    if not bad:
        return
    first = f"{files[bad[0]]} ({probes[bad[0]]})"
    if not skip_bad_files:
        raise DataError(f"cannot read image {first}; skip_bad_files=True skips unreadable images")
    emptied = sorted(
        {os.path.dirname(files[i]) for i in bad} - {os.path.dirname(files[i]) for i in good}
    )
    if emptied:
        raise DataError(f"class folder {emptied[0]} holds no readable images")
    if log is not None:
        log(f"skipped {len(bad)} unreadable images: first {first}")


def _image_shape(files, probes, good, image_size, channels) -> tuple[int, int, int]:
    modes = [probes[i][0] for i in good]
    if channels is None:
        channels = 1 if all(m in _GRAY_MODES or m.startswith("I") for m in modes) else 3
    if image_size is None:
        first = good[0]
        size = tuple(probes[first][1:])
        for i in good:
            if tuple(probes[i][1:]) != size:
                raise DataError(
                    f"images differ in size: {files[first]} is {size[0]}x{size[1]}, {files[i]} is "
                    f"{probes[i][1]}x{probes[i][2]} (HxW); resize them with image_size=(H, W) "
                    "(--image-size H,W)"
                )
        image_size = size
    return int(image_size[0]), int(image_size[1]), int(channels)


def _probe(filename: str) -> _Probe:
    """`(mode, height, width)` of an image that decodes to its end, or why it does not."""
    from PIL import Image

    try:
        with Image.open(filename) as image:
            image.load()
            return image.mode, image.height, image.width
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        return str(error) or type(error).__name__


def _decode(filename: str, channels: int, size: tuple[int, int]) -> np.ndarray:
    """The (first frame of the) image as `(H, W, channels)` uint8, bilinearly resized to `size`."""
    from PIL import Image

    height, width = size
    try:
        with Image.open(filename) as image:
            if image.mode.startswith("I;16"):
                # Pillow's own conversion to 'L' clips 16-bit values at 255 instead of scaling.
                image = Image.fromarray(np.round(np.asarray(image) / 257).astype(np.uint8))
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(image, np.uint8).reshape(height, width, channels)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read image {filename} ({error})") from error


def _map(pool: Executor | None, fn, items: list) -> list:
    return list(pool.map(fn, items) if pool is not None else map(fn, items))


def _probe_all(files, pool, cache_dir, cache_key, shard=(0, 1), combine=None) -> list[_Probe]:
    """The load-time check of every file (this process's share of them, the rest from the
    others through `combine`), read from `cache_dir` when it was done before."""
    filename = None if cache_dir is None else os.path.join(cache_dir, f"images-{cache_key}.json")
    if filename is not None:
        try:
            with open(filename) as f:
                return [p if isinstance(p, str) else tuple(p) for p in json.load(f)]
        except (OSError, ValueError):
            pass
    index, count = shard
    if count > 1 and combine is None:
        raise ValueError(f"shard {shard} needs combine to share the load-time check")
    mine = range(index, len(files), count)
    found = dict(zip(mine, _map(pool, _probe, [files[i] for i in mine]), strict=True))
    if count > 1:
        rows = np.zeros((len(files), 4), np.int32)  # (found, gray, height, width) per file
        for i, probe in found.items():
            rows[i] = _probe_row(probe)
        rows = np.asarray(combine(rows))
        found |= {i: _row_probe(row, files[i]) for i, row in enumerate(rows) if i not in found}
    probes = [found[i] for i in range(len(files))]
    if filename is not None:
        _write_atomically(filename, json.dumps(probes).encode())
    return probes


def _probe_row(probe: _Probe) -> list[int]:
    """A probe as what processes share: only what `_image_shape` reads of the mode (gray or not)."""
    if isinstance(probe, str):
        return [2, 0, 0, 0]
    mode, height, width = probe
    return [1, int(mode in _GRAY_MODES or mode.startswith("I")), height, width]


def _row_probe(row: np.ndarray, filename: str) -> _Probe:
    found, gray, height, width = (int(v) for v in row)
    if found == 1:
        return ("L" if gray else "RGB"), height, width
    if found == 2:
        return "it did not decode in the process that checked it"
    raise ValueError(f"no process checked {filename}: the shards must cover every file")


def _cache_key(root: str, files: list[str]) -> str:
    from PIL import __version__ as pillow_version

    digest = hashlib.sha256(f"zoo images v{_CACHE_VERSION}, Pillow {pillow_version}\n".encode())
    for name in files:
        stat = os.stat(name)
        digest.update(
            f"{os.path.relpath(name, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()[:24]


def _make_cache_dir(cache_dir: str | os.PathLike) -> str:
    cache_dir = os.fspath(cache_dir)
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise DataError(f"cache_dir {cache_dir} is not a directory") from error
    return cache_dir


def _write_atomically(filename: str, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(filename), suffix=".tmp")
    with os.fdopen(handle, "wb") as f:
        f.write(data)
    os.replace(temporary, filename)  # every writer writes the same bytes, so the last one may win


def _open_pixel_cache(cache_dir: str, key: str, shape: tuple[int, ...]) -> PixelCache:
    num_rows = shape[0]
    nbytes = num_rows + int(np.prod(shape))
    filename = os.path.join(cache_dir, f"images-{key}-{'x'.join(map(str, shape[1:]))}.u8")
    if not os.path.exists(filename):
        handle, temporary = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        with os.fdopen(handle, "wb") as f:
            f.truncate(nbytes)  # all flags 0; sparse where the file system allows
        try:
            os.link(temporary, filename)  # unlike a rename, never replaces a file in use
        except FileExistsError:
            pass
        finally:
            os.remove(temporary)
    if os.path.getsize(filename) != nbytes:
        raise DataError(
            f"image cache {filename} has {os.path.getsize(filename)} bytes, expected {nbytes}; "
            "delete it"
        )
    return _map_pixel_cache(filename, shape)


def _map_pixel_cache(filename: str, shape: tuple[int, ...]) -> PixelCache:
    num_rows = shape[0]
    data = np.memmap(filename, np.uint8, mode="r+", shape=(num_rows + int(np.prod(shape)),))
    return PixelCache(data[:num_rows], data[num_rows:].reshape(shape))
