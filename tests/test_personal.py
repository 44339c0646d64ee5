"""Personal data and few-shot learning: folders of images per class and CSV tables
read as the .npz form of the same records is; centroid_knn enrolls classes as an
independent numpy nearest-centroid does; flips and shifts are seeded, training-only and
what they say. Image folders need Pillow (the `images` extra, which CI installs)."""

import importlib
import json
import os
import tracemalloc

import numpy as np
import pytest

from nntrainer_cli.pipeline import prepare

from helpers import REPO, frozen_conv, run

# CI installs Pillow (the images extra): there a missing one fails
Image = importlib.import_module("PIL.Image") if os.environ.get("CI") \
    else pytest.importorskip("PIL.Image")

DIGITS = os.path.join(REPO, "datasets", "digits")


def digits(split):
    r = np.fromfile(os.path.join(DIGITS, f"{split}.dat"), "<f4").reshape(-1, 74)
    return (r[:, :64] * 255).round().astype(np.uint8), r[:, 64:].argmax(1)


def image_folder(root, x, y, names=None, ext="png"):
    """One subfolder per class (named by `names`, else the class number)."""
    for i, (pixels, k) in enumerate(zip(x, y)):
        folder = root / (names[k] if names else str(k))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.reshape(8, 8)).save(folder / f"{i:04d}.{ext}")
    return str(root)


MODEL = """[Model]
loss = cross
batch_size = 10
epochs = 2
[Optimizer]
type = sgd
learning_rate = 0.1
[train_set]
{data}
[in]
type = input
input_shape = {shape}
[flat]
type = flatten
[fc]
type = fully_connected
unit = {classes}
activation = softmax
"""


def test_an_image_folder_trains_as_the_same_records_in_npz_do(tmp_path):
    x, y = digits("valid")
    x, y = x[:60], y[:60] % 3   # three classes
    names = ["cat", "dog", "owl"]
    folder = image_folder(tmp_path / "pets", x, y, names, ext="bmp")
    order = np.lexsort((np.arange(len(y)), y))   # the folder's order: by class, then name
    np.savez(tmp_path / "same.npz", x=x[order], y=y[order].astype(np.uint8))
    (tmp_path / "dir.ini").write_text(MODEL.format(
        data=f"type = dir\npath = {folder}", shape="1:8:8", classes=3))
    (tmp_path / "npz.ini").write_text(MODEL.format(
        data=f"path = {tmp_path}/same.npz", shape="1:8:8", classes=3))
    for name in ("dir", "npz"):
        res = run("train", str(tmp_path / f"{name}.ini"), "-q", "--no-shuffle", "--save",
                  str(tmp_path / f"{name}.bin"), "--report", str(tmp_path / f"{name}.json"))
        assert res.exit_code == 0, res.output
    assert (tmp_path / "dir.bin").read_bytes() == (tmp_path / "npz.bin").read_bytes()
    report = json.loads((tmp_path / "dir.json").read_text())
    assert report["classes"] == names
    assert report["memory"]["data_read_peak_bytes"] > 0
    res = run("eval", str(tmp_path / "dir.ini"), "-w", str(tmp_path / "dir.bin"), "--data", folder)
    assert res.exit_code == 0 and "0=cat, 1=dog, 2=owl" in res.output, res.output
    # an image beside the class folders belongs to none: left out, and said so
    Image.fromarray(x[0].reshape(8, 8)).save(tmp_path / "pets" / "stray.png")
    res = run("eval", str(tmp_path / "dir.ini"), "-w", str(tmp_path / "dir.bin"), "--data", folder)
    assert res.exit_code == 0 and "left out 1 file beside the class folders" in res.output \
        and "stray.png" in res.output, res.output
    (tmp_path / "pets" / "stray.png").unlink()
    # RGB from the channel count, resized to the input's H×W
    (tmp_path / "rgb.ini").write_text(MODEL.format(
        data=f"type = dir\npath = {folder}", shape="3:4:4", classes=3))
    assert run("train", str(tmp_path / "rgb.ini"), "-q").exit_code == 0


def test_other_data_is_numbered_by_the_training_sets_class_names(tmp_path):
    """A test folder with fewer classes, a table without one class, a renamed folder;
    a plain folder of images and one image to predict; a 16-bit PNG by its full range."""
    x, y = digits("valid")
    names = ["cat", "dog", "owl"]
    image_folder(tmp_path / "train", x[:30], y[:30] % 3, names)
    image_folder(tmp_path / "test", x[30:60][y[30:60] % 3 > 0], y[30:60][y[30:60] % 3 > 0] % 3,
                 names)
    (tmp_path / "m.ini").write_text(MODEL.format(
        data="type = dir\npath = train\n[test_set]\ntype = dir\npath = test",
        shape="1:8:8", classes=3))
    res = run("train", str(tmp_path / "m.ini"), "-q", "--save", str(tmp_path / "w.bin"),
              "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    dog_owl = json.loads((tmp_path / "r.json").read_text())["test"]["accuracy"]
    res = run("eval", str(tmp_path / "m.ini"), "-w", str(tmp_path / "w.bin"))
    assert res.exit_code == 0 and f"{dog_owl:.4f}" in res.output and "0=cat" in res.output
    (tmp_path / "test" / "owl").rename(tmp_path / "test" / "emu")
    res = run("eval", str(tmp_path / "m.ini"), "-w", str(tmp_path / "w.bin"))
    assert res.exit_code == 2 and "class folder 'emu' is not one of the training set's" \
        in res.output, res.output
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(x[i].reshape(8, 8)).save(flat / f"{i}.png")
    res = run("predict", str(tmp_path / "m.ini"), "-w", str(tmp_path / "w.bin"), "--data",
              str(flat), "-o", str(tmp_path / "p.npy"))
    assert res.exit_code == 0 and np.load(tmp_path / "p.npy").shape == (3, 3), res.output
    res = run("predict", str(tmp_path / "m.ini"), "-w", str(tmp_path / "w.bin"), "--data",
              str(flat / "1.png"), "-o", str(tmp_path / "one.npy"))
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.load(tmp_path / "one.npy")[0], np.load(tmp_path / "p.npy")[1])
    # a table names each image by its file and each column by the training set's class
    (tmp_path / "test" / "emu").rename(tmp_path / "test" / "owl")
    res = run("predict", str(tmp_path / "m.ini"), "-w", str(tmp_path / "w.bin"), "--data",
              str(tmp_path / "test"), "-o", str(tmp_path / "p.csv"))
    assert res.exit_code == 0, res.output
    table = (tmp_path / "p.csv").read_text().splitlines()
    assert table[0] == "record,cat,dog,owl,predicted"
    files = sorted(os.path.join(c, f) for c in ("dog", "owl")
                   for f in os.listdir(tmp_path / "test" / c))
    assert [line.split(",")[0] for line in table[1:]] == files
    for line in table[1:]:
        values = [float(v) for v in line.split(",")[1:4]]
        assert line.split(",")[4] == names[int(np.argmax(values))]
    from nntrainer_cli.runtime.images import ImageFolderDataset
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(flat / "deep.png")
    ds = ImageFolderDataset(str(flat / "deep.png"), [(1, 8, 8)], [3], ValueError, False)
    pixels = np.empty((1, 64), np.float32)
    ds.read(0, 1, [pixels, np.empty((1, 3), np.float32)])
    np.testing.assert_allclose(pixels, 30000 / 65535, rtol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_images_decode_as_pillows_own_open_convert_and_resize(tmp_path, channels):
    """Each image opens by its extension's plugin (a JPEG named .png by sniffing) and
    reaches the input as Image.open, convert and resize give it."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    made = {"rgb.png": rgb, "gray.bmp": rgb.convert("L"), "palette.png": rgb.convert("P"),
            "alpha.png": rgb.convert("RGBA"), "photo.jpg": rgb, "jpeg_inside.png": rgb}
    (tmp_path / "a").mkdir()
    for name, img in made.items():
        img.save(tmp_path / "a" / name, format="JPEG" if "j" in name else None)
    from nntrainer_cli.runtime.images import ImageFolderDataset
    ds = ImageFolderDataset(str(tmp_path), [(channels, 8, 8)], [1], ValueError)
    got = np.empty((len(made), channels * 64), np.float32)
    ds.read(0, len(made), [got, np.empty((len(made), 1), np.float32)])
    for row, file in zip(got, ds.files):
        with Image.open(file) as img:
            want = np.asarray(img.convert("L" if channels == 1 else "RGB")
                              .resize((8, 8), Image.BILINEAR), np.float32) / 255
        np.testing.assert_array_equal(row.reshape(channels, 8, 8),
                                      want.reshape(8, 8, channels).transpose(2, 0, 1), file)


@pytest.mark.parametrize("spoil,message", [
    (lambda root: (root / "dog" / "0001.bmp").write_bytes(b"BM not really"),
     "0001.bmp: not a readable image"),
    (lambda root: [f.unlink() for f in (root / "owl").iterdir()], "owl holds no PNG"),
    (lambda root: (root / "emu").mkdir(), "4 class folders"),
])
def test_bad_image_folders_are_refused_before_training(tmp_path, spoil, message):
    x, y = digits("valid")
    folder = image_folder(tmp_path / "pets", x[:30], y[:30] % 3, ["cat", "dog", "owl"], "bmp")
    (tmp_path / "pets" / "dog" / "0001.bmp").write_bytes(b"")   # made sure to exist
    Image.fromarray(x[1].reshape(8, 8)).save(tmp_path / "pets" / "dog" / "0001.bmp")
    spoil(tmp_path / "pets")
    (tmp_path / "m.ini").write_text(MODEL.format(
        data=f"type = dir\npath = {folder}", shape="1:8:8", classes=3))
    res = run("train", str(tmp_path / "m.ini"), "-q")
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output and "epoch" not in res.output


def test_a_csv_table_with_a_header_and_named_classes(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3))
    y = np.argmax(x, axis=1)
    names = np.array(["high", "low", "mid"])[y]
    rows = ["a,b,kind,c"] + [f"{r[0]},{r[1]},{n},{r[2]}" for r, n in zip(x, names)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "m.ini").write_text(MODEL.format(
        data="type = csv\npath = t.csv\nlabel_column = kind", shape="1:1:3", classes=3)
        .replace("learning_rate = 0.1", "learning_rate = 0.5").replace("epochs = 2", "epochs = 20"))
    res = run("train", str(tmp_path / "m.ini"), "-q", "--save", str(tmp_path / "w.bin"),
              "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["classes"] == ["high", "low", "mid"]
    assert report["epochs"][-1]["train_accuracy"] > 0.8
    # a table without one class is numbered by the training set's names, found by the
    # model file's label_column
    res = run("eval", str(tmp_path / "m.ini"), "-w", str(tmp_path / "w.bin"), "--data",
              str(tmp_path / "t.csv"))
    assert res.exit_code == 0, res.output
    everything = res.output
    (tmp_path / "no_high.csv").write_text("\n".join(
        [rows[0]] + [r for r in rows[1:] if ",high," not in r]) + "\n")
    res = run("eval", str(tmp_path / "m.ini"), "-w", str(tmp_path / "w.bin"), "--data",
              str(tmp_path / "no_high.csv"))
    assert res.exit_code == 0 and "0=high, 1=low, 2=mid" in res.output and \
        "0=high, 1=low, 2=mid" in everything, res.output
    # by column number (from 1), semicolons between cells
    (tmp_path / "semi.csv").write_text("\n".join(r.replace(",", ";") for r in rows) + "\n")
    res = run("train", str(tmp_path / "m.ini"), "-q", "--set", f"train_set.path={tmp_path}/semi.csv",
              "--set", "train_set.label_column=3")
    assert res.exit_code == 0, res.output
    # the same table without a header and with class numbers, read the same way
    (tmp_path / "plain.csv").write_text("\n".join(
        f"{r[0]},{r[1]},{r[2]},{k}" for r, k in zip(x, y)) + "\n")
    res = run("predict", str(tmp_path / "m.ini"), "-w", str(tmp_path / "w.bin"), "--data",
              str(tmp_path / "plain.csv"), "-o", str(tmp_path / "p.npy"))
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "p.npy").shape == (40, 3)


@pytest.mark.parametrize("text,message", [
    ("1,2,0\n3,4\n", "t.csv line 2: 2 cells, expected 3"),
    ("1,2,0\n3,x,1\n", "t.csv line 2 column 2: 'x' is not a finite number"),
    ("a,b,y\n1,nan,1\n", "line 2 column 2 (b): 'nan' is not a finite number"),
    ("1,2,0\n3,4,7\n", "line 2: label 7 is not a class number 0..2"),
    ("1,2,0\n3,4,1.5\n", "line 2: label 1.5 is not a class number 0..2"),
    ("1,2,0\n3,4,nan\n", "line 2: label nan is not a class number 0..2"),
    ("1,2,3,0\n", "3 feature columns but the model's input takes 2"),
    ("", "holds no rows"),
])
def test_bad_csv_rows_are_refused_naming_the_line(tmp_path, text, message):
    (tmp_path / "t.csv").write_text(text)
    (tmp_path / "m.ini").write_text(MODEL.format(data="type = csv\npath = t.csv",
                                                 shape="1:1:2", classes=3))
    res = run("train", str(tmp_path / "m.ini"), "-q")
    assert res.exit_code == 2 and message in res.output, res.output


KNN = """[Model]
batch_size = 16
epochs = 1
[train_set]
type = dir
path = support
[test_set]
type = file
path = {test}
[in]
type = input
input_shape = 1:8:8
[flat]
type = flatten
[l2]
type = preprocess_l2norm
[knn]
type = centroid_knn
num_class = 10
"""


def test_centroid_knn_enrolls_as_a_nearest_centroid_does(tmp_path):
    """Ten shots per class, enrolled in one pass with no optimizer, no gradient and no
    optimizer state planned; the centroids and the test accuracy equal a numpy
    nearest-centroid of L2-normalized pixels, written here independently."""
    x, y = digits("train")
    shots = np.concatenate([np.flatnonzero(y == k)[:10] for k in range(10)])
    image_folder(tmp_path / "support", x[shots], y[shots])
    (tmp_path / "knn.ini").write_text(KNN.format(test=os.path.join(DIGITS, "test.dat")))
    res = run("train", str(tmp_path / "knn.ini"), "-q", "--save", str(tmp_path / "knn.bin"),
              "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output

    def normalized(a):
        a = a.astype(np.float64).reshape(len(a), -1) / 255
        return a / (np.linalg.norm(a, axis=1, keepdims=True) + 0.001)

    centroids = np.stack([normalized(x[shots][y[shots] == k]).mean(0) for k in range(10)])
    saved = np.fromfile(tmp_path / "knn.bin", "<f4")
    np.testing.assert_allclose(saved[:640].reshape(10, 64), centroids, atol=1e-6)
    np.testing.assert_array_equal(saved[640:650], 10)
    tx, ty = digits("test")
    d = ((normalized(tx)[:, None, :] - centroids[None]) ** 2).sum(-1)
    want = (d.argmin(1) == ty).mean()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["test"]["accuracy"] == pytest.approx(want, abs=1e-9) and want > 0.8
    plan = prepare(str(tmp_path / "knn.ini")).plan
    kinds = {s.kind for s in plan.specs.values()}
    assert not kinds & {"gradient", "optimizer_state", "derivative"}, kinds
    res = run("eval", str(tmp_path / "knn.ini"), "-w", str(tmp_path / "knn.bin"))
    assert res.exit_code == 0 and f"{want:.4f}" in res.output, res.output
    # under a memory budget the centroids are written back through the swap file
    res = run("train", str(tmp_path / "knn.ini"), "-q", "--save", str(tmp_path / "swap.bin"),
              "--memory-budget", "80%", "--swap-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "swap.bin").read_bytes() == (tmp_path / "knn.bin").read_bytes()


def test_nothing_trainable_may_come_before_a_layer_without_gradients(tmp_path):
    (tmp_path / "support").mkdir()
    text = KNN.format(test="t.dat").replace(
        "[l2]", "[fc]\ntype = fully_connected\nunit = 8\n[l2]")
    (tmp_path / "m.ini").write_text(text)
    res = run("plan", str(tmp_path / "m.ini"))
    assert res.exit_code == 2 and "[fc] before it is trainable" in res.output, res.output
    (tmp_path / "m.ini").write_text(text.replace("unit = 8\n", "unit = 8\ntrainable = false\n"))
    assert run("plan", str(tmp_path / "m.ini")).exit_code == 0


AUGMENT = """[Model]
loss = mse
batch_size = 4
epochs = 1
[Optimizer]
type = sgd
learning_rate = 0.01
[in]
type = input
input_shape = 2:5:6
[aug]
type = {kind}
{prop}
[flat]
type = flatten
[fc]
type = fully_connected
unit = 1
"""


def _augmented(tmp_path, kind, prop, x, training=True, seed=0):
    from nntrainer_cli.optim.schedulers import make_schedule
    from nntrainer_cli.runtime.executor import Executor
    (tmp_path / "m.ini").write_text(AUGMENT.format(kind=kind, prop=prop))
    p = prepare(str(tmp_path / "m.ini"))
    ex = Executor(p.graph, p.plan, p.optimizer, make_schedule(p.cfg),
                  rng=np.random.default_rng(seed))
    ex.initialize(np.random.default_rng(0))
    def feed(part, views):
        views[0][...] = x
    if training:
        ex.train_step(0, feed)
    else:
        ex.eval_step(len(x), feed)
    return ex.fwd_ctx["aug"][0].outputs[0].copy()


def _reflect_bilinear(img, dy, dx):
    """output(i, j) = img(i + dy, j + dx), bilinear, mirrored edges: pixel by pixel."""
    c, h, w = img.shape

    def at(i, j):
        i = i % (2 * h)
        j = j % (2 * w)
        return img[:, i if i < h else 2 * h - 1 - i, j if j < w else 2 * w - 1 - j]

    out = np.empty_like(img)
    for i in range(h):
        for j in range(w):
            y, x = i + dy, j + dx
            i0, j0 = int(np.floor(y)), int(np.floor(x))
            fy, fx = y - i0, x - j0
            out[:, i, j] = ((1 - fy) * ((1 - fx) * at(i0, j0) + fx * at(i0, j0 + 1))
                            + fy * ((1 - fx) * at(i0 + 1, j0) + fx * at(i0 + 1, j0 + 1)))
    return out


def test_flips_and_shifts_follow_the_seeded_draws_in_training_only(tmp_path):
    x = np.random.default_rng(1).standard_normal((4, 2, 5, 6)).astype(np.float32)
    flipped = _augmented(tmp_path, "preprocess_flip", "", x, seed=3)
    draws = np.random.default_rng(3).random(8).reshape(4, 2)
    for r, (w, h) in enumerate(draws):
        want = x[r][:, ::-1 if h < 0.5 else 1, ::-1 if w < 0.5 else 1]
        np.testing.assert_array_equal(flipped[r], want)
    assert not np.array_equal(flipped, x)
    np.testing.assert_array_equal(_augmented(tmp_path, "preprocess_flip", "", x, False), x)
    only_w = _augmented(tmp_path, "preprocess_flip", "flip_direction = horizontal", x, seed=3)
    for r, (w, _) in enumerate(draws):
        np.testing.assert_array_equal(only_w[r], x[r][:, :, ::-1] if w < 0.5 else x[r])

    shifted = _augmented(tmp_path, "preprocess_translate", "random_translate = 0.3", x, seed=4)
    draws = np.random.default_rng(4).uniform(-0.3, 0.3, 8).reshape(4, 2)
    for r, (dx, dy) in enumerate(draws):
        np.testing.assert_allclose(shifted[r], _reflect_bilinear(x[r], dy * 5, dx * 6),
                                   atol=1e-5)
    np.testing.assert_array_equal(
        _augmented(tmp_path, "preprocess_translate", "random_translate = 0.3", x, False), x)


@pytest.mark.parametrize("records,budget,where", [(200, None, "memory"), (1257, None, "file"),
                                                   (200, "47000", "file"), (200, "46000", "file")])
def test_cached_features_give_the_weights_running_the_prefix_gives(tmp_path, records, budget,
                                                                   where):
    """Three shuffled epochs (with a partial last batch): the frozen conv's output
    cached from epoch 1 gives the same weights, bit for bit, as computing it again
    every epoch; in memory when no bigger than the plan, else in a file. Under a
    budget the swap schedule runs around the slots the cache skips, and the cache
    takes what the budget leaves beside the arena."""
    data = tmp_path / "train.dat"
    data.write_bytes(open(os.path.join(DIGITS, "train.dat"), "rb").read()[:records * 74 * 4])
    (tmp_path / "m.ini").write_text(frozen_conv(data))
    limit = ["--memory-budget", budget] if budget else []
    for flag in ("", "--no-feature-cache", "plain"):
        res = run("train", str(tmp_path / "m.ini"), "-q", "--save", str(tmp_path / f"w{flag}.bin"),
                  "--report", str(tmp_path / f"r{flag}.json"),
                  *(limit if flag != "plain" else []), *([flag] if flag[:1] == "-" else []))
        assert res.exit_code == 0, res.output
    weights = (tmp_path / "w.bin").read_bytes()
    assert weights == (tmp_path / "w--no-feature-cache.bin").read_bytes()
    assert weights == (tmp_path / "wplain.bin").read_bytes()
    report = json.loads((tmp_path / "r.json").read_text())
    cached = report["feature_cache"]
    assert cached["boundary"] == "pool/flatten_realized" and cached["where"] == where
    assert cached["bytes"] == records * (64 + 10) * 4
    assert (report["memory"]["swap"] is not None) == bool(budget)
    assert json.loads((tmp_path / "r--no-feature-cache.json").read_text())["feature_cache"] is None


def test_cached_features_are_read_without_a_temporary(tmp_path, monkeypatch):
    """From epoch 2 the boundary rows and labels are copied straight into their arena
    views: no array of their size is made on the way (numpy's take makes one unless
    told the rows are in range)."""
    from nntrainer_cli.runtime.feature_cache import FeatureCache
    data = tmp_path / "train.dat"
    data.write_bytes(open(os.path.join(DIGITS, "train.dat"), "rb").read()[:320 * 74 * 4])
    (tmp_path / "m.ini").write_text(frozen_conv(data))
    extra = []
    for method in ("read", "_load"):
        def traced(self, part, *rest, original=getattr(FeatureCache, method)):
            start = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            original(self, part, *rest)
            extra.append(tracemalloc.get_traced_memory()[1] - start)
        monkeypatch.setattr(FeatureCache, method, traced)
    assert run("train", str(tmp_path / "m.ini"), "-q").exit_code == 0
    assert len(extra) == 2 * 2 * 10   # epochs 2 and 3, 10 batches of 32
    assert max(extra) < 32 * 10 * 4 < 32 * 64 * 4   # under the labels', the features' bytes


def test_cached_features_keep_every_loss_labels(tmp_path):
    """Two losses after the frozen prefix: the cache keeps both labels of each record
    (it once kept the first only, and the second loss trained on stale labels)."""
    rng = np.random.default_rng(0)
    x, a, b = rng.random((100, 64)), rng.integers(0, 10, 100), rng.integers(0, 3, 100)
    data = tmp_path / "two.dat"
    np.concatenate([x, np.eye(10)[a], np.eye(3)[b]], axis=1).astype("<f4").tofile(data)
    heads = ("[mid]\ntype = fully_connected\nunit = 16\nactivation = relu\n"
             "[head]\ntype = fully_connected\nunit = 10\nactivation = softmax\n"
             "input_layers = mid\n"
             "[head2]\ntype = fully_connected\nunit = 3\nactivation = softmax\n"
             "input_layers = mid\n")
    model = frozen_conv(data).replace(
        "[head]\ntype = fully_connected\nunit = 10\nactivation = softmax\n", heads)
    (tmp_path / "m.ini").write_text(model)
    for name, flags in (("cached", []), ("uncached", ["--no-feature-cache"])):
        res = run("train", str(tmp_path / "m.ini"), "-q", "--save", str(tmp_path / f"{name}.bin"),
                  "--report", str(tmp_path / f"{name}.json"), *flags)
        assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cached.json").read_text())["feature_cache"]
    assert (tmp_path / "cached.bin").read_bytes() == (tmp_path / "uncached.bin").read_bytes()


@pytest.mark.parametrize("extra", [
    "[drop]\ntype = dropout\ndropout_rate = 0.2",
    "[norm]\ntype = batch_normalization\ntrainable = false",
    "[flip]\ntype = preprocess_flip",
])
def test_no_cache_where_the_prefix_is_not_the_same_every_epoch(tmp_path, extra):
    (tmp_path / "m.ini").write_text(frozen_conv(os.path.join(DIGITS, "train.dat"),
                                                extra=extra))
    res = run("train", str(tmp_path / "m.ini"), "-q", "--epochs", "2",
              "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["feature_cache"] is None


def test_the_worked_example_few_shot_matches_an_independent_nearest_centroid(tmp_path):
    """configs/personal_knn.ini: the ONNX feature extractor trained on digits 0-4,
    enrolled on 10 images per class of 5-9. Its test accuracy equals a nearest centroid
    over features from onnx's reference evaluator of the same file."""
    import onnx
    from onnx.reference import ReferenceEvaluator
    report = tmp_path / "r.json"
    res = run("train", os.path.join(REPO, "configs", "personal_knn.ini"), "-q",
              "--report", str(report))
    assert res.exit_code == 0, res.output
    got = json.loads(report.read_text())
    assert got["classes"] == ["5", "6", "7", "8", "9"]
    ref = ReferenceEvaluator(onnx.load(os.path.join(REPO, "models", "digits04_features.onnx")))

    def features(split):
        root = os.path.join(REPO, "datasets", "personal", split)
        files = [(k, os.path.join(root, d, f)) for k, d in enumerate(sorted(os.listdir(root)))
                 for f in sorted(os.listdir(os.path.join(root, d)))]
        x = np.stack([np.asarray(Image.open(f), np.float32) / 255 for _, f in files])
        z = ref.run(None, {"input": x.reshape(-1, 1, 8, 8)})[0].astype(np.float64)
        z /= np.linalg.norm(z, axis=1, keepdims=True) + 0.001
        return z, np.array([k for k, _ in files])

    (sx, sy), (tx, ty) = features("support"), features("test")
    centroids = np.stack([sx[sy == k].mean(0) for k in range(5)])
    nearest = ((tx[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert got["test"]["accuracy"] == pytest.approx((nearest == ty).mean(), abs=1e-9)
    assert got["test"]["accuracy"] > 0.8
