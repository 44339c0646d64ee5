"""The pretrained feature extractor of the README's personalization example: a small
CNN trained in PyTorch on digits 0-4 only (the shipped digits' training split), then
its convolutional part exported without the classifier, so its 64 features per image
are what a device would get from a backbone trained elsewhere on other classes. The
example personalizes it to digits 5-9, which it never saw.

Run once from the repository root (needs torch and onnxscript, the `bench` extra); the
output is committed:
    python models/make_digits04_features.py
"""

import os

import torch
from torch import nn

from make_digits_cnn import HERE, digits, fit   # this folder: the digits, the recipe

OUT = os.path.join(HERE, "digits04_features.onnx")


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    features = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    model = nn.Sequential(features, nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, 5))
    (x, y), (tx, ty) = digits("train", range(5)), digits("test", range(5))
    fit(model, x, y, epochs=40, lr=3e-3)
    model.eval()
    with torch.no_grad():
        accuracy = (model(tx).argmax(1) == ty).float().mean().item()
    print(f"PyTorch {torch.__version__}: digits 0-4 test accuracy {accuracy:.4f} "
          f"({len(x)} training images)")
    torch.onnx.export(features, (tx[:2],), OUT, input_names=["input"],
                      output_names=["features"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    print(f"wrote {OUT} ({os.path.getsize(OUT):,} bytes)")


if __name__ == "__main__":
    main()
