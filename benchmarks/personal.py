"""Personalization figures, each run in its own process (`nntrainer train ... --report`):

1. the README's worked example side by side: (a) few-shot centroid_knn, (b) a head on
   cached features, (c) full fine-tuning: test accuracy, planned and measured peak,
   seconds (the fastest of the rounds; tracemalloc on, as the README's commands run);
2. the head with and without the feature cache: seconds per epoch after the first, and
   the same under a memory budget (swap), with the measured peak of each;
3. centroid_knn enrollment of 100 images (20 per class of digits 5-9);
4. the MNIST-5k LeNet (configs/lenet_mnist.ini) from folders of PNG images against its
   .npz form in the folders' record order (by class, then file name; the shuffle of
   each epoch then draws the same records): test accuracy and seconds per epoch.

Each comparison alternates its sides round by round (--rounds, default 5) and reports
the median and the spread (min..max). Needs the `images` extra (Pillow).

    python benchmarks/personal.py [--rounds 5] [--json benchmarks/results/personal.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
BUDGET = "60%"   # of the head's plan: a swap plan (its floor is about 45%)


def train(model: str, *args: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        subprocess.run([sys.executable, "-m", "nntrainer_cli", "train", model, "-q",
                        "--report", out, *args], check=True, cwd=REPO)
        with open(out) as f:
            return json.load(f)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} ({min(values):.3g}..{max(values):.3g})"


def later_epochs(report: dict) -> list[float]:
    return [e["seconds"] for e in report["epochs"][1:]]


def images(root: str, x: np.ndarray, y: np.ndarray, side: int) -> str:
    from PIL import Image
    for i, (pixels, k) in enumerate(zip(x, y)):
        folder = os.path.join(root, str(k))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(pixels.reshape(side, side)).save(os.path.join(folder, f"{i:05d}.png"))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    results: dict = {"rounds": args.rounds, "cores": os.cpu_count()}

    # 1 and 2: the worked example; the head with and without its cache
    head = os.path.join(CONFIGS, "personal_head.ini")
    runs: dict[str, list[dict]] = {k: [] for k in ("knn", "head", "finetune", "head_nocache",
                                                   "head_budget", "head_budget_nocache")}
    for _ in range(args.rounds):
        for kind in ("knn", "head", "finetune"):
            runs[kind].append(train(os.path.join(CONFIGS, f"personal_{kind}.ini")))
        runs["head_nocache"].append(train(head, "--no-feature-cache"))
        runs["head_budget"].append(train(head, "--memory-budget", BUDGET))
        runs["head_budget_nocache"].append(train(head, "--memory-budget", BUDGET,
                                                 "--no-feature-cache"))
    example = []
    for kind in ("knn", "head", "finetune"):
        r = runs[kind][0]
        example.append({"model": f"configs/personal_{kind}.ini",
                        "test_accuracy": r["test"]["accuracy"],
                        "planned_peak_bytes": r["memory"]["planned_peak_bytes"],
                        "measured_peak_bytes": r["memory"]["measured_peak_bytes"],
                        "seconds": min(x["seconds"] for x in runs[kind]),
                        "feature_cache": r["feature_cache"]})
    results["example"] = example
    for key, suffix in (("head_epoch_seconds", ""), ("head_budget_epoch_seconds", "_budget")):
        cached = [statistics.median(later_epochs(r)) for r in runs[f"head{suffix}"]]
        uncached = [statistics.median(later_epochs(r)) for r in runs[f"head{suffix}_nocache"]]
        results[key] = {"cached": cached, "not_cached": uncached,
                        "speedup": statistics.median(uncached) / statistics.median(cached),
                        "measured_peak_bytes":
                            runs[f"head{suffix}"][0]["memory"]["measured_peak_bytes"],
                        "measured_peak_bytes_not_cached":
                            runs[f"head{suffix}_nocache"][0]["memory"]["measured_peak_bytes"],
                        "feature_cache": runs[f"head{suffix}"][0]["feature_cache"]}

    with tempfile.TemporaryDirectory() as tmp:
        # 3: enrollment of 100 images
        r = np.fromfile(os.path.join(REPO, "datasets", "digits", "train.dat"),
                        "<f4").reshape(-1, 74)
        x, y = (r[:, :64] * 255).round().astype(np.uint8), r[:, 64:].argmax(1)
        pick = np.concatenate([np.flatnonzero(y == k)[:20] for k in range(5, 10)])
        folder = images(os.path.join(tmp, "support100"), x[pick], y[pick], 8)
        enroll = [train(os.path.join(CONFIGS, "personal_knn.ini"), "--set",
                        f"train_set.path={folder}")["epochs"][0]["seconds"]
                  for _ in range(args.rounds)]
        results["enroll_100_seconds"] = enroll

        # 4: LeNet on MNIST-5k from PNG folders against .npz in the folders' order
        as_dir, as_npz = [], []
        for split in ("train", "valid", "test"):
            d = np.load(os.path.join(REPO, "datasets", "mnist", f"{split}.npz"))
            folder = images(os.path.join(tmp, split), d["x"], d["y"], 28)
            order = np.lexsort((np.arange(len(d["y"])), d["y"]))
            npz = os.path.join(tmp, f"{split}.npz")
            np.savez(npz, x=d["x"][order], y=d["y"][order])
            as_dir += ["--set", f"{split}_set.type=dir", "--set", f"{split}_set.path={folder}"]
            as_npz += ["--set", f"{split}_set.path={npz}"]
        lenet = os.path.join(CONFIGS, "lenet_mnist.ini")
        npz, folders = [], []
        for _ in range(args.rounds):
            npz.append(train(lenet, "--epochs", "3", "--no-tracemalloc", *as_npz))
            folders.append(train(lenet, "--epochs", "3", "--no-tracemalloc", *as_dir))
        full_npz, full_dir = train(lenet, *as_npz), train(lenet, *as_dir)
        results["lenet_mnist"] = {
            "npz_epoch_seconds": [statistics.median(later_epochs(r)) for r in npz],
            "folder_epoch_seconds": [statistics.median(later_epochs(r)) for r in folders],
            "npz_test_accuracy": full_npz["test"]["accuracy"],
            "folder_test_accuracy": full_dir["test"]["accuracy"]}

    print("| model | test accuracy | planned peak | measured peak | seconds |")
    print("|---|---|---|---|---|")
    for e in example:
        print(f"| {e['model']} | {e['test_accuracy']:.4f} | "
              f"{e['planned_peak_bytes'] / 1024:.1f} KiB | "
              f"{e['measured_peak_bytes'] / 1024:.1f} KiB | {e['seconds']:.2f} |")
    print()
    for key, what in (("head_epoch_seconds", ""), ("head_budget_epoch_seconds",
                                                   f" under --memory-budget {BUDGET}")):
        h = results[key]
        print(f"head epochs 2..30{what}, seconds per epoch: cached {spread(h['cached'])}, "
              f"not cached {spread(h['not_cached'])}, {h['speedup']:.1f}x; measured peak "
              f"{h['measured_peak_bytes'] / 1024:.1f} KiB cached (in {h['feature_cache']['where']}"
              f"), {h['measured_peak_bytes_not_cached'] / 1024:.1f} KiB not")
    print(f"centroid_knn enrollment of 100 images: {spread(enroll)} s")
    m = results["lenet_mnist"]
    print(f"LeNet MNIST-5k, seconds per epoch (epochs 2-3): npz {spread(m['npz_epoch_seconds'])}, "
          f"PNG folders {spread(m['folder_epoch_seconds'])}, "
          f"{statistics.median(m['folder_epoch_seconds']) / statistics.median(m['npz_epoch_seconds']):.2f}x; "
          f"test accuracy after 10 epochs: npz {m['npz_test_accuracy']:.4f}, "
          f"folders {m['folder_test_accuracy']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
