"""Loaders read the standard formats; bad files give errors that name the file."""

import gzip
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaif.data import (
    DataError,
    decode_pixels,
    encode_pixels,
    load_dataset,
    load_digits,
    load_miniimagenet,
    load_mnist,
    load_omniglot,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def png_bytes(array: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def test_digits_is_the_embedded_default():
    ds = load_digits()
    assert ds.images.shape == (1797, 1, 8, 8) and ds.num_classes == 10
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
    assert load_dataset("digits").images.shape == ds.images.shape


def test_mnist_idx_roundtrip_and_errors(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28))
    labels = np.array([0, 1, 2, 3, 4, 5, 9])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    ds = load_mnist(tmp_path)
    assert ds.images.shape == (7, 1, 28, 28)
    torch.testing.assert_close(ds.images[3, 0], torch.tensor(images[3] / 255.0, dtype=torch.float32))
    assert ds.labels.tolist() == labels.tolist()

    raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: header promises .* truncated"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: cannot be read"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match="file not found"):
        load_mnist(tmp_path / "missing")


def test_omniglot_zip_and_folders_deduplicate(tmp_path):
    rng = np.random.default_rng(0)
    drawing = lambda: png_bytes(rng.integers(0, 2, size=(105, 105)) * 255)  # noqa: E731
    for zname, alphabets in (("small1.zip", ["Greek", "Balinese"]), ("small2.zip", ["Greek", "Tagalog"])):
        with zipfile.ZipFile(tmp_path / zname, "w") as zf:
            for alphabet in alphabets:
                for ch in ("character01", "character02"):
                    for d in range(3):
                        zf.writestr(f"{zname[:-4]}/{alphabet}/{ch}/01{ch[-2:]}_{d:02d}.png", drawing())
    ds = load_omniglot(tmp_path, size=28)
    assert ds.num_classes == 6  # Greek appears in both archives once
    assert ds.images.shape == (18, 1, 28, 28)
    assert "Greek/character01" in ds.class_names
    (tmp_path / "broken.zip").write_bytes(b"PK garbage")
    with pytest.raises(DataError, match="broken.zip: not a valid zip"):
        load_omniglot(tmp_path)


def test_miniimagenet_folder_and_pickle(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("n01", "n02"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, size=(84, 84, 3)).astype(np.uint8)).save(tmp_path / "train" / c / f"{i}.jpg")
    ds = load_miniimagenet(tmp_path, "train")
    assert ds.images.shape == (6, 3, 84, 84) and ds.class_names == ("n01", "n02")
    with Image.open(tmp_path / "train" / "n02" / "1.jpg") as img:  # the decoder's own codes, kept as they are
        assert torch.equal(ds.images[4], torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1))

    data = rng.integers(0, 256, size=(4, 84, 84, 3)).astype(np.uint8)
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as f:
        pickle.dump({"image_data": data, "class_dict": {"b": [1, 3], "a": [0, 2]}}, f)
    cached = load_miniimagenet(tmp_path, "val")
    assert cached.labels.tolist() == [0, 1, 0, 1] and cached.images.shape == (4, 3, 84, 84)
    assert torch.equal(cached.images, torch.from_numpy(data).permute(0, 3, 1, 2))
    # decoded, the codes are the float32 values the float loaders make: k / 255 in float32
    assert torch.equal(decode_pixels(cached.images), torch.from_numpy(data.astype(np.float32) / 255.0).permute(0, 3, 1, 2))
    resized = load_miniimagenet(tmp_path, "val", size=28)
    assert resized.images.shape == (4, 3, 28, 28) and resized.images.dtype == torch.uint8
    (tmp_path / "mini-imagenet-cache-test.pkl").write_bytes(b"\x80\x04junk")
    with pytest.raises(DataError, match="mini-imagenet-cache-test.pkl: not a mini-ImageNet cache"):
        load_miniimagenet(tmp_path, "test")


def test_load_dataset_requires_root_for_real_sets():
    with pytest.raises(ValueError, match="needs --root"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar")


@pytest.mark.skipif(not (SHARED / "mnist").exists(), reason="shared MNIST not present")
def test_shared_real_data_load():
    mnist = load_mnist(SHARED / "mnist")
    assert mnist.images.shape == (10000, 1, 28, 28)
    omniglot = load_omniglot(SHARED / "omniglot")
    assert 200 <= omniglot.num_classes <= 260 and omniglot.images.shape[1:] == (1, 28, 28)


def test_the_synthetic_mini_imagenet_set_is_seeded_learnable_and_named_synthetic():
    from metaif.data import DATASETS, SYNTHETIC_NAME, make_synthetic_images

    small = make_synthetic_images(classes=5, per_class=12, size=24, seed=3)
    assert small.name == SYNTHETIC_NAME == "synthetic-miniimagenet" and SYNTHETIC_NAME in DATASETS
    assert small.images.shape == (60, 3, 24, 24) and small.images.dtype == torch.uint8  # 8-bit codes, as JPEGs
    assert int(small.images.max()) == 255 and int(small.images.min()) == 0  # clamped to [0, 1] before coding
    assert small.labels.tolist() == [k for k in range(5) for _ in range(12)]
    assert torch.equal(make_synthetic_images(5, 12, 24, seed=3).images, small.images)
    assert not torch.equal(make_synthetic_images(5, 12, 24, seed=4).images, small.images)
    # learnable: class means of half the images classify the other half far above chance (0.2)
    x, y = decode_pixels(small.images).flatten(1), small.labels
    fit = torch.arange(len(y)) % 2 == 0
    means = torch.stack([x[fit & (y == k)].mean(0) for k in range(5)])
    assert float((torch.cdist(x[~fit], means).argmin(1) == y[~fit]).float().mean()) > 0.6
    assert make_synthetic_images(classes=2, per_class=1).images.shape == (2, 3, 84, 84)  # mini-ImageNet's images
    with pytest.raises(ValueError, match="per_class must be an integer >= 1"):
        make_synthetic_images(per_class=0)


def test_pixel_codes_decode_to_the_float32_values_in_every_dtype_and_encode_back():
    codes = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    values = decode_pixels(codes)
    expected = torch.from_numpy(np.arange(256, dtype=np.float32) / 255.0).view(1, 1, 16, 16)
    assert values.dtype == torch.float32 and torch.equal(values, expected)
    # float64 runs see the float32 values widened, as a float32 image set cast to float64 gives them
    assert torch.equal(decode_pixels(codes, torch.float64), values.double())
    assert torch.equal(encode_pixels(values), codes) and torch.equal(encode_pixels(values + 0.4 / 255), codes)
    floats = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    assert decode_pixels(floats) is floats and torch.equal(decode_pixels(floats, torch.float32), floats.float())
    with pytest.raises(TypeError, match="float images"):
        encode_pixels(codes)
    with pytest.raises(ValueError, match="images must be float or torch.uint8"):
        from metaif.data import ClassDataset
        ClassDataset("bad", torch.zeros(2, 1, 4, 4, dtype=torch.int32), torch.zeros(2, dtype=torch.int64), ("a",))
