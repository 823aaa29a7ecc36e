import gzip
import lzma
import pickle
import struct

import numpy as np
import pytest
import torch

from nas.data import DataError, load_dataset, parse_idx
from nas.pipeline import DeviceData, random_crop
from tests.conftest import assert_one_line_error, run_nas

RNG = np.random.default_rng(0)


def write_idx(path, array, compress):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_loader(tmp_path, compress):
    suffix = ".gz" if compress else ""
    train_x, train_y = RNG.integers(0, 256, (30, 28, 28)), RNG.integers(0, 10, 30)
    test_x, test_y = RNG.integers(0, 256, (12, 28, 28)), RNG.integers(0, 10, 12)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train_x, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", train_y, compress)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test_x, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", test_y, compress)
    ds = load_dataset(str(tmp_path))
    assert ds.train_images.shape == (30, 1, 28, 28) and ds.test_images.shape == (12, 1, 28, 28)
    assert torch.equal(ds.train_images[:, 0], torch.from_numpy(train_x.astype(np.uint8)))
    assert torch.equal(ds.test_labels, torch.from_numpy(test_y.astype(np.int64)))


def test_idx_corrupt_and_mismatch(tmp_path):
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x01\x02\x03\x04", "x")
    write_idx(tmp_path / "train-images-idx3-ubyte", RNG.integers(0, 256, (5, 4, 4)), False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", RNG.integers(0, 10, 4), False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", RNG.integers(0, 256, (5, 4, 4)), False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", RNG.integers(0, 10, 5), False)
    with pytest.raises(DataError, match="5 images but .* 4 labels"):
        load_dataset(str(tmp_path))
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-7])
    with pytest.raises(DataError, match="corrupt"):
        load_dataset(str(tmp_path))


def write_cifar(path, n, compress, key=b"labels"):
    batch = {b"batch_label": b"x", key: list(RNG.integers(0, 10, n)), b"data": RNG.integers(0, 256, (n, 3072)).astype(np.uint8)}
    data = pickle.dumps(batch, protocol=2)
    if compress == "xz":
        (path.parent / (path.name + ".xz")).write_bytes(lzma.compress(data))
    elif compress == "gz":
        (path.parent / (path.name + ".gz")).write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return batch


@pytest.mark.parametrize("compress", ["", "xz", "gz"])
def test_cifar10_loader(tmp_path, compress):
    batches = [write_cifar(tmp_path / f"data_batch_{i}", 6, compress) for i in range(1, 6)]
    write_cifar(tmp_path / "test_batch", 4, compress)
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    ds = load_dataset(str(tmp_path))
    assert ds.train_images.shape == (30, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
    assert ds.class_names[3] == "c3" and ds.num_classes == 10
    first = torch.from_numpy(batches[0][b"data"][0].reshape(3, 32, 32))
    assert torch.equal(ds.train_images[0], first)  # R plane first, row-major


def test_cifar100_loader(tmp_path):
    write_cifar(tmp_path / "train", 8, "", key=b"fine_labels")
    write_cifar(tmp_path / "test", 3, "", key=b"fine_labels")
    ds = load_dataset(str(tmp_path))
    assert len(ds.train_images) == 8 and len(ds.test_images) == 3


def test_cifar_corrupt(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
    (tmp_path / "test_batch").write_bytes(b"nope")
    with pytest.raises(DataError, match="not a readable CIFAR pickle"):
        load_dataset(str(tmp_path))
    (tmp_path / "data_batch_1.xz").write_bytes(b"\xfd7zXZ broken")
    (tmp_path / "data_batch_1").unlink()
    with pytest.raises(DataError, match="corrupt"):
        load_dataset(str(tmp_path))


def test_image_folder_loader(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(RNG.integers(0, 256, (10, 12, 3)).astype(np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    ds = load_dataset(str(tmp_path))
    assert ds.class_names == ["cat", "dog"]
    assert ds.train_images.shape == (6, 3, 10, 12) and ds.test_images.shape == (4, 3, 10, 12)
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(str(tmp_path))


def test_npz_loader(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=RNG.integers(0, 256, (20, 9, 9, 3)).astype(np.uint8), y_train=RNG.integers(0, 3, 20),
             x_test=RNG.integers(0, 256, (5, 9, 9, 3)).astype(np.uint8), y_test=RNG.integers(0, 3, 5))
    ds = load_dataset(str(path))
    assert ds.train_images.shape == (20, 3, 9, 9) and ds.test_images.shape == (5, 3, 9, 9)
    single = tmp_path / "s.npz"
    np.savez(single, images=RNG.random((25, 8, 8)), labels=RNG.integers(0, 4, 25))
    ds = load_dataset(str(single))
    assert len(ds.train_images) + len(ds.test_images) == 25 and ds.train_images.dtype == torch.uint8
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=RNG.random((5, 8, 8)), labels=RNG.integers(0, 4, 4))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        load_dataset(str(bad))
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(str(tmp_path / "junk.npz"))


def test_missing_path():
    with pytest.raises(DataError, match="neither a built-in"):
        load_dataset("/no/such/place")


def test_validation_split_is_deterministic_and_disjoint():
    ds = load_dataset("digits")
    a, b = ds.split_validation(0.2, seed=3), ds.split_validation(0.2, seed=3)
    assert torch.equal(a[3], b[3]) and len(a[2]) == round(len(ds.train_images) * 0.2)
    assert len(a[0]) + len(a[2]) == len(ds.train_images)


def test_batches_are_slices_of_device_tensors():
    ds = load_dataset("digits")
    dd = DeviceData(*ds.split_validation(0.2, 0))
    batches = list(dd.train_batches(64, 24, torch.Generator().manual_seed(0)))
    assert len(batches) == len(dd.train_labels) // 64
    x, y = batches[0]
    assert x.shape == (64, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    again = next(dd.train_batches(64, 24, torch.Generator().manual_seed(0)))
    assert torch.equal(again[0], x)


def test_random_crop_shifts():
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    same = random_crop(img, 1, torch.tensor([[1, 1]]))
    assert torch.equal(same, img)
    shifted = random_crop(img, 1, torch.tensor([[2, 1]]))
    assert torch.equal(shifted[0, 0, 0], img[0, 0, 1])


def test_evaluate_cli_missing_data():
    assert_one_line_error(run_nas("evaluate", "efficientnetv2-b0", "--data", "/no/such/dir"), "/no/such/dir")
