"""The README's personalization example data: one person's few images of classes the
backbone never saw. Digits 5-9 of the shipped digits as PNG files, one folder per
class: `personal/support/` holds 10 images per class from the training split (what the
person gives the device), `personal/test/` every 5-9 image of the test split (held out).

Run once from the repository root (needs Pillow, the `images` extra); the output is
committed:
    python datasets/make_personal.py
"""

import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
SHOTS = 10


def digits(split: str):
    r = np.fromfile(os.path.join(HERE, "digits", f"{split}.dat"), "<f4").reshape(-1, 74)
    return (r[:, :64] * 255).round().astype(np.uint8).reshape(-1, 8, 8), r[:, 64:].argmax(1)


def write(folder: str, x, y, picks) -> int:
    for i in picks:
        target = os.path.join(HERE, "personal", folder, str(y[i]))
        os.makedirs(target, exist_ok=True)
        Image.fromarray(x[i]).save(os.path.join(target, f"{i:04d}.png"), optimize=True)
    return len(picks)


def main() -> None:
    x, y = digits("train")
    support = np.concatenate([np.flatnonzero(y == k)[:SHOTS] for k in range(5, 10)])
    tx, ty = digits("test")
    test = np.flatnonzero(ty >= 5)
    print(f"support: {write('support', x, y, support)} images, "
          f"test: {write('test', tx, ty, test)} images")


if __name__ == "__main__":
    main()
