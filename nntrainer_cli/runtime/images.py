"""A folder of a person's images, one subfolder per class (NNTrainer's `dir` data):
PNG, JPEG and BMP, decoded a batch at a time into the input view, converted to its
shape (grayscale or RGB by the channel count, resized to H×W, scaled to [0, 1]). The
class index is the subfolder's place in sorted order. Every image is decoded once when
the folder is opened, so a bad file stops the run before training, not in epoch 3."""

from __future__ import annotations

import os
import sys

import numpy as np

from .dataset import Dataset

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def _pillow(where):
    try:
        from PIL import Image
    except ImportError:
        raise where("reading image folders needs Pillow, the 'images' extra: pip install "
                    "'nntrainer_cli[images]'") from None
    return Image


class ImageFolderDataset(Dataset):
    def __init__(self, path: str, input_shapes: list[tuple], label_sizes: list[int], where,
                 need_labels: bool = True):
        self.Image = _pillow(where)
        if len(input_shapes) != 1 or len(label_sizes) != 1:
            raise where(f"{path}: an image folder serves models with one input and one loss")
        if not os.path.isdir(path):
            raise where(f"image folder not found: {path}")
        self.shape = input_shapes[0]   # (C, H, W)
        if len(self.shape) != 3 or self.shape[0] not in (1, 3):
            raise where(f"{path}: images need an input of 1 (grayscale) or 3 (RGB) channels, "
                        f"the model's input is {':'.join(map(str, self.shape))}")
        self.classes = sorted(d for d in os.listdir(path)
                              if not d.startswith(".") and os.path.isdir(os.path.join(path, d)))
        if not self.classes:
            raise where(f"{path} has no class subfolders (one folder of images per class)")
        if need_labels and len(self.classes) != label_sizes[0]:
            raise where(f"{path} has {len(self.classes)} class folders "
                        f"({', '.join(self.classes[:5])}{', ...' if len(self.classes) > 5 else ''})"
                        f" but the model tells {label_sizes[0]} classes apart")
        self.files: list[str] = []
        labels: list[int] = []
        self.notes = []
        skipped = 0
        for k, name in enumerate(self.classes):
            folder = os.path.join(path, name)
            entries = sorted(f for f in os.listdir(folder) if not f.startswith("."))
            images = [f for f in entries if f.lower().endswith(EXTENSIONS)]
            skipped += len(entries) - len(images)
            if not images:
                raise where(f"class folder {folder} holds no PNG, JPEG or BMP image")
            self.files += [os.path.join(folder, f) for f in images]
            labels += [k] * len(images)
        if skipped:
            self.notes.append(f"{path}: {skipped} files that are not PNG, JPEG or BMP were "
                              "left out")
        self.labels = np.array(labels, dtype=np.int32)
        self.count = len(self.files)
        self.order = np.arange(self.count, dtype=np.int64)
        for f in self.files:   # decode each once now: a bad image is found before training
            self._decode(f, where)
        self.where = where

    def _decode(self, file: str, where) -> np.ndarray:
        c, h, w = self.shape
        try:
            with self.Image.open(file) as img:
                img = img.convert("L" if c == 1 else "RGB")
                if img.size != (w, h):
                    img = img.resize((w, h), self.Image.BILINEAR)
                return np.asarray(img)
        except (OSError, ValueError, SyntaxError) as e:  # what Pillow raises on bad files
            raise where(f"{file}: not a readable image ({e or type(e).__name__})") from None

    @property
    def held_bytes(self) -> int:
        return self.labels.nbytes + sys.getsizeof(self.files) + sum(map(sys.getsizeof, self.files))

    def read(self, start: int, batch: int, views: list[np.ndarray]) -> None:
        features, labels = views
        for r, idx in self.records(start, batch):
            pixels = self._decode(self.files[idx], self.where)
            out = features[r].reshape(self.shape)
            np.divide(pixels.reshape(self.shape[1:] + (-1,)).transpose(2, 0, 1), np.float32(255),
                      out=out)
            row = labels[r].reshape(-1)
            row.fill(0)
            row[self.labels[idx]] = 1
