"""Image classification data sets as tensors, read from their standard on-disk formats.

Every loader returns a :class:`ClassDataset`: images ``[N, C, H, W]`` float32 in [0, 1] (ink = 1
for the handwriting sets) or, for mini-ImageNet, the files' own 8-bit pixel codes
(:mod:`metaif.data.pixels`), integer labels ``[N]`` and one name per class. A missing, truncated
or corrupt file raises :class:`DataError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..utils.extras import optional_import
from .pixels import PIXEL_CODE, decode_pixels, encode_pixels

__all__ = ["ClassDataset", "DataError", "load_digits", "load_mnist", "load_omniglot", "load_miniimagenet"]


class DataError(RuntimeError):
    """A data file is missing, truncated or not in the expected format."""


@dataclass(frozen=True)
class ClassDataset:
    """``images [N, C, H, W]`` float (values in [0, 1]) or uint8 pixel codes (``k`` stands for ``k / 255``),
    ``labels [N]`` int64 in ``[0, len(class_names))``."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: images must be [N, C, H, W] and labels [N], got "
                             f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}")
        if not (self.images.is_floating_point() or self.images.dtype == PIXEL_CODE):
            raise ValueError(f"{self.name}: images must be float or {PIXEL_CODE} pixel codes, got {self.images.dtype}")
        if len(self.labels) and int(self.labels.max()) >= len(self.class_names):
            raise ValueError(f"{self.name}: label {int(self.labels.max())} has no class name")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices_of(self, label: int) -> torch.Tensor:
        """Indices (into ``images``) of the examples of class ``label``, ascending."""
        return torch.nonzero(self.labels == label).flatten()


def load_digits() -> ClassDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): needs no files."""
    bunch = optional_import("sklearn.datasets", "the digits data set").load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return ClassDataset("digits", images, torch.tensor(bunch.target, dtype=torch.int64),
                        tuple(str(i) for i in range(10)))


# ---- MNIST (IDX) -------------------------------------------------------------------------------

def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot be read ({err}); the file is truncated or not gzip") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    dims = raw[3]
    if dims != expected_dims:
        raise DataError(f"{path}: expected {expected_dims} dimensions, the header says {dims}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise DataError(f"{path}: header promises {count} bytes of data, file has {len(raw) - header}; truncated?")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist(root: str | Path, split: str = "t10k") -> ClassDataset:
    """MNIST from ``<root>/<split>-images-idx3-ubyte[.gz]`` and ``<split>-labels-idx1-ubyte[.gz]``."""
    root = Path(root)

    def find(kind: str) -> Path:
        for name in (f"{split}-{kind}.gz", f"{split}-{kind}"):
            if (root / name).exists():
                return root / name
        raise DataError(f"{root / (split + '-' + kind + '.gz')}: file not found (MNIST IDX expected in {root})")

    images = _read_idx(find("images-idx3-ubyte"), 3)
    labels = _read_idx(find("labels-idx1-ubyte"), 1)
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{root}: label {labels.max()} is not a digit")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return ClassDataset("mnist", x, torch.from_numpy(labels.astype(np.int64)), tuple(str(i) for i in range(10)))


# ---- Omniglot -----------------------------------------------------------------------------------

def _decode_image(data: bytes, source: str, size: int | None, mode: str) -> np.ndarray:
    """The image's 8-bit codes, ``[H, W]`` (mode L) or ``[H, W, 3]`` (RGB), resized to ``size``."""
    pil = optional_import("PIL.Image", "decoding Omniglot and mini-ImageNet images")
    Image, UnidentifiedImageError = pil, pil.UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert(mode)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{source}: not a readable image ({err})") from None


def _omniglot_members(root: Path) -> Iterable[tuple[str, str, str, bytes]]:
    """(alphabet, character, source, png bytes) from every zip in ``root`` and every folder tree."""
    zips = sorted(root.glob("*.zip"))
    for zpath in zips:
        try:
            with zipfile.ZipFile(zpath) as zf:
                for name in sorted(zf.namelist()):
                    parts = name.split("/")
                    if name.endswith(".png") and len(parts) >= 3:
                        yield parts[-3], parts[-2], f"{zpath}:{name}", zf.read(name)
        except zipfile.BadZipFile as err:
            raise DataError(f"{zpath}: not a valid zip file ({err})") from None
    for png in sorted(root.glob("**/*.png")):
        yield png.parent.parent.name, png.parent.name, str(png), png.read_bytes()


def load_omniglot(root: str | Path, size: int = 28) -> ClassDataset:
    """Omniglot from zips or folders of ``<alphabet>/<character>/*.png`` under ``root``.

    One class per alphabet/character, de-duplicated by name across archives (the two small
    background sets share Greek and Latin); images resized to ``size`` and inverted (ink = 1).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: Omniglot folder not found")
    per_class: dict[str, dict[str, np.ndarray]] = {}
    for alphabet, character, source, data in _omniglot_members(root):
        key = f"{alphabet}/{character}"
        drawing = source.rsplit("/", 1)[-1]
        if drawing not in per_class.setdefault(key, {}):
            per_class[key][drawing] = 1.0 - _decode_image(data, source, size, "L").astype(np.float32) / 255.0
    if not per_class:
        raise DataError(f"{root}: no <alphabet>/<character>/*.png images found (in zips or folders)")
    names = tuple(sorted(per_class))
    images, labels = [], []
    for label, key in enumerate(names):
        for drawing in sorted(per_class[key]):
            images.append(per_class[key][drawing])
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).unsqueeze(1)
    return ClassDataset("omniglot", x, torch.tensor(labels, dtype=torch.int64), names)


# ---- mini-ImageNet ------------------------------------------------------------------------------

def load_miniimagenet(root: str | Path, split: str = "train", size: int = 84) -> ClassDataset:
    """mini-ImageNet from ``<root>/<split>/<class>/*.jpg`` or the pickle cache
    ``<root>/mini-imagenet-cache-<split>.pkl`` (``{"image_data": [N, H, W, 3] uint8,
    "class_dict": {class: [indices]}}``), as 8-bit pixel codes (a quarter of float32's memory; images
    resized to ``size`` are rounded to codes, as the folder's are by their decoder)."""
    root = Path(root)
    cache = root / f"mini-imagenet-cache-{split}.pkl"
    if cache.exists():
        try:
            with open(cache, "rb") as f:
                blob = pickle.load(f)
            data, class_dict = np.asarray(blob["image_data"]), blob["class_dict"]
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
            raise DataError(f"{cache}: not a mini-ImageNet cache ({type(err).__name__}: {err})") from None
        if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
            raise DataError(f"{cache}: image_data must be [N, H, W, 3] uint8, got {data.shape} {data.dtype}")
        names = tuple(sorted(class_dict))
        labels = np.full(len(data), -1, dtype=np.int64)
        for label, name in enumerate(names):
            labels[np.asarray(class_dict[name], dtype=np.int64)] = label
        if (labels < 0).any():
            raise DataError(f"{cache}: {int((labels < 0).sum())} images belong to no class")
        x = torch.from_numpy(data).permute(0, 3, 1, 2)
        if size != x.shape[-1]:
            x = encode_pixels(torch.nn.functional.interpolate(decode_pixels(x), size=(size, size), mode="bilinear",
                                                              align_corners=False))
        return ClassDataset("miniimagenet", x.contiguous(), torch.from_numpy(labels), names)
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{root}: neither {cache.name} nor the folder {split}/ exists")
    names = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    if not names:
        raise DataError(f"{folder}: no class folders")
    images, labels = [], []
    for label, name in enumerate(names):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise DataError(f"{folder / name}: no images")
        for path in files:
            images.append(_decode_image(path.read_bytes(), str(path), size, "RGB"))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return ClassDataset("miniimagenet", x, torch.tensor(labels, dtype=torch.int64), names)
