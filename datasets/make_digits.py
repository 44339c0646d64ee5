"""Convert scikit-learn's copy of the UCI optical digits (8x8, 1,797 images) into
NNTrainer raw data files: per record 64 float32 pixels scaled to [0, 1], then a
10-float one-hot label. Run once; the outputs are committed.

    pip install scikit-learn && python datasets/make_digits.py
"""

import os

import numpy as np
from sklearn.datasets import load_digits

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits")


def main() -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("<f4")
    onehot = np.eye(10, dtype="<f4")[y]
    order = np.random.default_rng(20241129).permutation(len(x))
    splits = {"train": order[:1257], "valid": order[1257:1437], "test": order[1437:]}
    os.makedirs(HERE, exist_ok=True)
    for name, idx in splits.items():
        records = np.concatenate([x[idx], onehot[idx]], axis=1)
        records.tofile(os.path.join(HERE, f"{name}.dat"))
        print(f"{name}: {len(idx)} records, classes {np.bincount(y[idx], minlength=10).tolist()}")


if __name__ == "__main__":
    main()
