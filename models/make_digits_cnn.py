"""A small CNN trained in PyTorch on the shipped digits and exported with
torch.onnx.export, exactly as a user brings a model of theirs: the README's import
example. Prints PyTorch's own test accuracy, which `nntrainer eval` of the import must
equal.

Run once from the repository root (needs torch and onnxscript, the `bench` extra); the
output is committed:
    python models/make_digits_cnn.py
"""

import os

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = os.path.join(HERE, "..", "datasets", "digits")
OUT = os.path.join(HERE, "digits_cnn.onnx")


def digits(split: str, classes=range(10)):
    """The shipped digits of these classes as tensors (images N×1×8×8, class numbers),
    from NNTrainer's raw records: 64 pixel floats, then 10 one-hot label floats."""
    r = np.fromfile(os.path.join(DIGITS, f"{split}.dat"), "<f4").reshape(-1, 74)
    y = r[:, 64:].argmax(1)
    keep = np.isin(y, classes)
    return torch.tensor(r[keep, :64].reshape(-1, 1, 8, 8)), torch.tensor(y[keep])


def fit(model: nn.Module, x, y, epochs: int, lr: float) -> None:
    """Adam on shuffled batches of 32, the recipe of both example models."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for b in range(0, len(x), 32):
            i = order[b:b + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))
    (x, y), (tx, ty) = digits("train"), digits("test")
    fit(model, x, y, epochs=30, lr=1e-3)
    model.eval()
    with torch.no_grad():
        logits = model(tx)
    loss = nn.functional.cross_entropy(logits, ty).item()
    accuracy = (logits.argmax(1) == ty).float().mean().item()
    print(f"PyTorch {torch.__version__}: test accuracy {accuracy:.4f}, loss {loss:.4f}")
    torch.onnx.export(model, (tx[:2],), OUT, input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    print(f"wrote {OUT} ({os.path.getsize(OUT):,} bytes)")


if __name__ == "__main__":
    main()
