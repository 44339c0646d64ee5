"""A folder of a person's images, one subfolder per class (NNTrainer's `dir` data):
PNG, JPEG and BMP, decoded a batch at a time into the input view, converted to its
shape (grayscale or RGB by the channel count, resized to H×W, scaled to [0, 1]; 16-bit
images by their full range). Records go by sorted class folder, then sorted file name.
The class index is the folder's place in sorted order, or, for data other than the
training set's, the index the training set gives that name. Every image is decoded
once when the folder is opened, so a bad file stops the run before training, not in
epoch 3. For predictions, a folder of images without class folders, or one image file,
will do."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

from .dataset import Dataset

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def _pillow(where):
    """Pillow's Image module, and its image classes by file extension."""
    try:
        from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin
    except ImportError:
        raise where("reading image folders needs Pillow, the 'images' extra: pip install "
                    "'nntrainer_cli[images]'") from None
    jpeg = JpegImagePlugin.JpegImageFile
    return Image, {".png": PngImagePlugin.PngImageFile, ".jpg": jpeg, ".jpeg": jpeg,
                   ".bmp": BmpImagePlugin.BmpImageFile}


def class_folders(path: str) -> list[str]:
    """A folder's class subfolders, in the order that numbers them."""
    return sorted(d for d in os.listdir(path)
                  if not d.startswith(".") and os.path.isdir(os.path.join(path, d)))


def holds_clients(path: str) -> bool:
    """Whether a folder holds federated clients' folders (each a folder of class
    folders, with no image of its own) rather than class folders."""
    inner = [os.path.join(path, f) for f in class_folders(path)]
    return bool(inner) and all(class_folders(f) and not _images(f)[0] for f in inner)


def _images(folder: str) -> tuple[list[str], list[str]]:
    """The image files of a folder, sorted, and the other files in it."""
    files = sorted(f for f in os.listdir(folder)
                   if not f.startswith(".") and os.path.isfile(os.path.join(folder, f)))
    images = [f for f in files if f.lower().endswith(EXTENSIONS)]
    return images, [f for f in files if f not in images]


def _shown(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def _left_out(path: str, files: list[str], what: str) -> str:
    """The note for files of a folder that are not read."""
    return f"{path}: left out {len(files)} file{'s' if len(files) > 1 else ''} {what}: " \
           f"{_shown(files, 3)}"


class ImageFolderDataset(Dataset):
    def __init__(self, path: str, input_shapes: list[tuple], label_sizes: list[int], where,
                 need_labels: bool = True, classes: list[str] | None = None):
        self.Image, self.plugins = _pillow(where)
        if len(input_shapes) != 1 or len(label_sizes) != 1:
            raise where(f"{path}: an image folder serves models with one input and one loss")
        self.shape = input_shapes[0]   # (C, H, W)
        if len(self.shape) != 3 or self.shape[0] not in (1, 3):
            raise where(f"{path}: images need an input of 1 (grayscale) or 3 (RGB) channels, "
                        f"the model's input is {':'.join(map(str, self.shape))}")
        self.notes, self.where = [], where
        self.root = path if os.path.isdir(path) else os.path.dirname(path)
        if os.path.isfile(path) and path.lower().endswith(EXTENSIONS) and not need_labels:
            self._unlabeled([path])   # one image to predict
        elif not os.path.isdir(path):
            raise where(f"{path} is a file, not a folder of class folders" if os.path.exists(path)
                        else f"image folder not found: {path}")
        elif class_folders(path):
            self._labeled(path, label_sizes[0], need_labels, classes)
        elif not need_labels and _images(path)[0]:   # a folder of images to predict
            self._unlabeled([os.path.join(path, f) for f in _images(path)[0]])
        else:
            raise where(f"{path} has no class subfolders (one folder of images per class)")
        self.count = len(self.files)
        self.order = np.arange(self.count, dtype=np.int64)
        one = np.empty(self.shape, np.float32)
        for f in self.files:   # decode each once now: a bad image is found before training
            self._decode(f, one)

    def _unlabeled(self, files: list[str]) -> None:
        self.files, self.labels, self.classes = files, np.zeros(len(files), np.int32), None

    def _labeled(self, path: str, size: int, need_labels: bool, classes) -> None:
        names = class_folders(path)
        if classes is not None:   # numbered as the training set numbers them
            unknown = [n for n in names if n not in classes]
            if unknown:
                raise self.where(f"{path}: class folder {unknown[0]!r} is not one of the "
                                 f"training set's classes ({_shown(classes)})")
            index = {n: classes.index(n) for n in names}
        else:
            if need_labels and len(names) != size:
                raise self.where(f"{path} has {len(names)} class folders ({_shown(names)}) but "
                                 f"the model tells {size} classes apart")
            classes, index = names, {n: k for k, n in enumerate(names)}
        self.classes, self.files, labels, others = classes, [], [], []
        for name in names:
            folder = os.path.join(path, name)
            images, rest = _images(folder)
            if not images:
                raise self.where(f"class folder {folder} holds no PNG, JPEG or BMP image")
            self.files += [os.path.join(folder, f) for f in images]
            labels += [index[name]] * len(images)
            others += [os.path.join(name, f) for f in rest]
        if others:
            self.notes.append(_left_out(path, others, f"that {'are' if len(others) > 1 else 'is'}"
                                                      " not PNG, JPEG or BMP"))
        beside = sum(_images(path), [])
        if beside:
            self.notes.append(_left_out(path, beside, "beside the class folders (each class's "
                                                      "images go in its folder)"))
        self.labels = np.array(labels, dtype=np.int32)

    def _open(self, f, file: str):
        """The image, opened by the plugin its extension names (skipping Pillow's format
        sniffing, a third of the decoding time of a small PNG), else by sniffing."""
        Image, plugin = self.Image, self.plugins.get(os.path.splitext(file)[1].lower())
        if plugin is not None:
            try:
                img = plugin(f, file)
            except SyntaxError:   # another format behind the name
                f.seek(0)
                plugin = None
        if plugin is None:
            with warnings.catch_warnings():   # a large photo is fine: it is resized
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(f)
        pixels, limit = img.size[0] * img.size[1], Image.MAX_IMAGE_PIXELS
        if limit and pixels > 2 * limit:   # where Image.open refuses a decompression bomb
            raise Image.DecompressionBombError(f"{pixels} pixels is over Pillow's limit of "
                                               f"{2 * limit}")
        return img

    def _decode(self, file: str, out: np.ndarray) -> None:
        """The image into `out` (C×H×W float32) in [0, 1]."""
        Image, (c, h, w) = self.Image, self.shape
        try:
            with open(file, "rb") as f:
                img = self._open(f, file)
                if img.mode.startswith("I") or img.mode == "F":   # 16/32-bit grayscale
                    scale = 1.0 if img.mode == "F" else 65535.0
                    img = Image.fromarray(np.asarray(img, np.float32) / np.float32(scale))
                elif img.mode != ("L" if c == 1 else "RGB"):
                    img = img.convert("L" if c == 1 else "RGB")
                if img.size != (w, h):
                    img = img.resize((w, h), Image.BILINEAR)
                mode, raw = img.mode, img.tobytes()   # decodes
        except Image.DecompressionBombError as e:
            raise self.where(f"{file}: {e}") from None
        except Image.UnidentifiedImageError:
            raise self.where(f"{file}: not a readable image (Pillow does not recognize "
                             "it as PNG, JPEG or BMP)") from None
        except (OSError, ValueError, SyntaxError) as e:  # what Pillow raises on bad files
            raise self.where(f"{file}: not a readable image ({e or type(e).__name__})") from None
        if mode == "F":
            out[:] = np.frombuffer(raw, np.float32).reshape(h, w)
        else:
            pixels = np.frombuffer(raw, np.uint8).reshape(h, w, -1)
            np.divide(pixels.transpose(2, 0, 1), np.float32(255), out=out)

    @property
    def held_bytes(self) -> int:
        return self.labels.nbytes + sys.getsizeof(self.files) + sum(map(sys.getsizeof, self.files))

    def class_of(self) -> np.ndarray | None:
        return self.labels if self.classes is not None else None

    def record_names(self) -> list[str]:
        return [os.path.relpath(f, self.root) for f in self.files]

    def read(self, start: int, batch: int, views: list[np.ndarray]) -> None:
        features, labels = views
        for r, idx in self.records(start, batch):
            self._decode(self.files[idx], features[r].reshape(self.shape))
            row = labels[r].reshape(-1)
            row.fill(0)
            row[self.labels[idx]] = 1
