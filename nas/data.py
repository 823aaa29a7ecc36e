"""Data sets as uint8 tensors: loaders for digits, IDX, CIFAR, image folders and npz.

Loaders return a :class:`Dataset` of ``(N, C, H, W)`` uint8 images and int64 labels; the
on-device batch pipeline that trains from them is :mod:`nas.pipeline`.

    >>> ds = load_dataset("digits")
    >>> ds.train_images.shape[1:], ds.num_classes
    (torch.Size([1, 8, 8]), 10)
"""

from __future__ import annotations

import gzip
import io
import lzma
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nas.errors import InputError

BUILTIN = ("digits",)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".webp", ".tif", ".tiff"}


class DataError(InputError):
    """A data set cannot be read: missing path, corrupt file, mismatched counts, no images."""


@dataclass
class Dataset:
    """Images as uint8 ``(N, C, H, W)`` tensors with int64 labels; ``test_*`` is never used for selection."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.ndim != 4:
                raise DataError(f"{self.name}: {split} images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
            if len(images) != len(labels):
                raise DataError(f"{self.name}: {split} has {len(images)} images but {len(labels)} labels")
            if len(images) == 0:
                raise DataError(f"{self.name}: the {split} split is empty")
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise DataError(f"{self.name}: {split} labels must lie in [0, {self.num_classes - 1}]")

    def split_validation(self, fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A deterministic held-out split of the *training* data (the paper's minival).

        Returns ``(train_images, train_labels, val_images, val_labels)``; the test split is untouched.
        """
        if not 0 < fraction < 1:
            raise InputError(f"validation_fraction: {fraction} is not allowed, allowed (0, 1)")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.train_images), generator=generator)
        n_val = max(1, int(round(len(order) * fraction)))
        val, train = order[:n_val], order[n_val:]
        return self.train_images[train], self.train_labels[train], self.train_images[val], self.train_labels[val]


# ---- loaders ---------------------------------------------------------------------------------
def load_dataset(name_or_path: str, seed: int = 0) -> Dataset:
    """Load ``digits`` (built in) or a path: IDX directory (MNIST / Fashion-MNIST), CIFAR-10/100
    python batches (plain, ``.xz`` or ``.gz`` per file), an image-folder tree, or an ``.npz`` file.
    """
    if name_or_path == "digits":
        return _digits(seed)
    path = Path(name_or_path)
    if not path.exists():
        raise DataError(f"data: {name_or_path!r} is neither a built-in data set ({', '.join(BUILTIN)}) nor an existing path, allowed {', '.join(BUILTIN)} or a data path")
    if path.is_file():
        if path.suffix == ".npz":
            return _npz(path, seed)
        raise DataError(f"data: {path.name} is not a supported file, allowed .npz or a directory (IDX, CIFAR, image folder)")
    if _find(path, "train-images-idx3-ubyte"):
        return _idx_dir(path)
    if _find(path, "data_batch_1") or _find(path, "train"):  # CIFAR-10 / CIFAR-100 batch files (a train/ folder is not one)
        return _cifar(path)
    try:
        return _image_folder(path, seed)
    except DataError as error:
        inner = _data_inside(path)
        if inner is None:
            raise
        raise DataError(f"{error}; the data seems to be in {inner}: use --data {inner}") from None


DATA_MARKERS = ("data_batch_1", "train-images-idx3-ubyte", "train")  # CIFAR-10, IDX, CIFAR-100 files


def _data_inside(root: Path, depth: int = 2) -> Path | None:
    """A folder below ``root`` (up to ``depth`` levels) that holds CIFAR or IDX files, or an ``.npz`` file there; None if none.

    ``--data .../cifar10`` then suggests the ``cifar-10-batches-py`` folder inside it.
    """
    folders = [root]
    for _ in range(depth):
        folders = sorted(p for folder in folders for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        for folder in folders:
            if any(_find(folder, marker) for marker in DATA_MARKERS):
                return folder
            npz = sorted(folder.glob("*.npz"))
            if npz:
                return npz[0]
    return None


def _find(root: Path, stem: str) -> Path | None:
    # the same file may come plain, gzipped or xz-compressed
    for suffix in ("", ".gz", ".xz"):
        candidate = root / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            return gzip.decompress(path.read_bytes())
        if path.suffix == ".xz":
            return lzma.decompress(path.read_bytes())
        return path.read_bytes()
    except (OSError, EOFError, lzma.LZMAError) as error:
        raise DataError(f"data: {path} is corrupt or truncated ({error})") from None


def hold_out_test(name: str, images: torch.Tensor, labels: torch.Tensor, *, seed: int, classes: int, names: list[str]) -> Dataset:
    """A :class:`Dataset` of data with no test split: a fixed 20% held out as the test split, drawn from a fixed seed."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(10_000 + seed))
    n_test = max(1, len(images) // 5)
    test, train = order[:n_test], order[n_test:]
    return Dataset(name, images[train], labels[train], images[test], labels[test], classes, names)


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 8x8 grey levels 0..16 -> uint8 0..255
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return hold_out_test("digits", images, labels, seed=0, classes=10, names=[str(i) for i in range(10)])


def parse_idx(data: bytes, source: str) -> np.ndarray:
    """Decode an IDX (MNIST-format) byte string into an array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"data: {source} is not an IDX uint8 file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"data: {source} is truncated (incomplete header)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - header != expected:
        raise DataError(f"data: {source} is corrupt: header says {expected} values, file holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_dir(root: Path) -> Dataset:
    def pair(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        image_file, label_file = _find(root, f"{prefix}-images-idx3-ubyte"), _find(root, f"{prefix}-labels-idx1-ubyte")
        if image_file is None or label_file is None:
            raise DataError(f"data: {root} lacks {prefix}-images-idx3-ubyte or {prefix}-labels-idx1-ubyte (.gz)")
        images = parse_idx(_read_bytes(image_file), image_file.name)
        labels = parse_idx(_read_bytes(label_file), label_file.name)
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"data: {image_file.name} must be (N, H, W) and {label_file.name} (N,)")
        if len(images) != len(labels):
            raise DataError(f"data: {image_file.name} has {len(images)} images but {label_file.name} has {len(labels)} labels")
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    train, test = pair("train"), pair("t10k")
    classes = int(max(train[1].max(), test[1].max())) + 1
    return Dataset(root.name, *train, *test, classes, [str(i) for i in range(classes)])


def _unpickle(path: Path) -> dict:
    try:
        return pickle.load(io.BytesIO(_read_bytes(path)), encoding="bytes")
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"data: {path} is not a readable CIFAR pickle ({type(error).__name__})") from None


def _cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _unpickle(path)
    label_key = next((k for k in (b"labels", b"fine_labels") if k in batch), None)
    if b"data" not in batch or label_key is None:
        raise DataError(f"data: {path} lacks 'data' or 'labels'")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"data: {path} holds data of shape {data.shape}, expected (N, 3072)")
    if len(data) != len(labels):
        raise DataError(f"data: {path} has {len(data)} images but {len(labels)} labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _cifar(root: Path) -> Dataset:
    if _find(root, "data_batch_1"):  # CIFAR-10
        files = [_find(root, f"data_batch_{i}") for i in range(1, 6)]
        train_files = [f for f in files if f is not None]
        test_file, meta_file, meta_key = _find(root, "test_batch"), _find(root, "batches.meta"), b"label_names"
    else:  # CIFAR-100
        train_files, test_file, meta_file, meta_key = [_find(root, "train")], _find(root, "test"), _find(root, "meta"), b"fine_label_names"
    if test_file is None:
        raise DataError(f"data: {root} has training batches but no test batch")
    parts = [_cifar_batch(f) for f in train_files if f is not None]
    train_images, train_labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test_images, test_labels = _cifar_batch(test_file)
    names: list[str] = []
    if meta_file is not None:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(meta_file).get(meta_key, [])]
    classes = max(len(names), int(max(train_labels.max(), test_labels.max())) + 1)
    return Dataset(root.name, train_images, train_labels, test_images, test_labels, classes, names)


def _npz_images(array: np.ndarray, source: str) -> torch.Tensor:
    if array.ndim == 3:  # (N, H, W) grey
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise DataError(f"data: {source} images have shape {array.shape}, expected (N, H, W), (N, H, W, C) or (N, C, H, W)")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(array, 0, 255).round().astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(array))


def _npz(path: Path, seed: int) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as error:
        raise DataError(f"data: {path} is not a readable .npz file ({type(error).__name__})") from None
    if {"x_train", "y_train"} <= arrays.keys():
        train = _npz_images(arrays["x_train"], path.name), torch.from_numpy(arrays["y_train"].astype(np.int64).ravel())
        test = None
        if {"x_test", "y_test"} <= arrays.keys():
            test = _npz_images(arrays["x_test"], path.name), torch.from_numpy(arrays["y_test"].astype(np.int64).ravel())
    elif {"images", "labels"} <= arrays.keys():
        train, test = (_npz_images(arrays["images"], path.name), torch.from_numpy(arrays["labels"].astype(np.int64).ravel())), None
    else:
        raise DataError(f"data: {path.name} must hold x_train/y_train[/x_test/y_test] or images/labels, found {', '.join(arrays) or 'nothing'}")
    for images, labels in [train] + ([test] if test else []):
        if len(images) != len(labels):
            raise DataError(f"data: {path.name} has {len(images)} images but {len(labels)} labels")
    labels_all = torch.cat([train[1]] + ([test[1]] if test else []))
    if labels_all.min() < 0:
        raise DataError(f"data: {path.name} has negative labels")
    classes = int(labels_all.max()) + 1
    if test is None:
        return hold_out_test(path.stem, train[0], train[1], seed=seed, classes=classes,
                             names=[str(i) for i in range(classes)])
    return Dataset(path.stem, *train, *test, classes, [str(i) for i in range(classes)])


def _read_folder(root: Path, classes: list[str] | None = None) -> tuple[list[np.ndarray], list[int], list[str]]:
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = classes or [d.name for d in class_dirs]
    images, labels = [], []
    size = None
    for directory in class_dirs:
        if directory.name not in names:
            raise DataError(f"data: class folder {directory} is not among the training classes")
        for file in sorted(directory.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    image = image.convert("RGB")
                    size = size or image.size  # every image is resized to the first one's size
                    images.append(np.asarray(image.resize(size) if image.size != size else image, dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as error:
                raise DataError(f"data: {file} is not a readable image ({type(error).__name__})") from None
            labels.append(names.index(directory.name))
    return images, labels, names


def _image_folder(root: Path, seed: int) -> Dataset:
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    train_images, train_labels, names = _read_folder(root / "train" if has_splits else root)
    if not train_images:
        raise DataError(f"data: {root} holds no images (expected one subfolder per class with image files, or IDX/CIFAR/.npz data)")
    if len(names) < 2:
        raise DataError(f"data: {root} has {len(names)} class folder(s), need at least 2")

    def stack(images: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()

    images, labels = stack(train_images), torch.tensor(train_labels, dtype=torch.int64)
    if not has_splits:
        return hold_out_test(root.name, images, labels, seed=seed, classes=len(names), names=names)
    test_images, test_labels, _ = _read_folder(root / "test", names)
    if not test_images:
        raise DataError(f"data: {root / 'test'} holds no images")
    test = stack(test_images)
    if test.shape[2:] != images.shape[2:]:
        test = F.interpolate(test.float(), size=images.shape[2:], mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)
    return Dataset(root.name, images, labels, test, torch.tensor(test_labels, dtype=torch.int64), len(names), names)


# ---- the on-device pipeline ------------------------------------------------------------------
