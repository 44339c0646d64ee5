"""Bad input of every kind named in the docs: one `error:` line naming the file (and
line, section, key where there is one), exit 2, never a traceback. Then a fuzz test
over mutated NNTrainer files."""

import glob
import os
import random

import numpy as np
import pytest

from helpers import CORPUS, run

GOOD = ("[Model]\nloss = cross\nbatch_size = 4\nepochs = 1\n[Optimizer]\ntype = adam\n"
        "[train_set]\npath = train.dat\n"
        "[in]\ntype = input\ninput_shape = 1:4:4\n"
        "[conv]\ntype = conv2d\nfilters = 2\nkernel_size = 3,3\n"
        "[a]\ntype = fully_connected\nunit = 3\ninput_layers = conv\n"
        "[b]\ntype = fully_connected\nunit = 3\ninput_layers = conv\n"
        "[sum]\ntype = addition\ninput_layers = a, b\nflatten = true\n"
        "[out]\ntype = fully_connected\nunit = 3\nactivation = softmax\n")

CASES = [  # (change to GOOD, extra args, text the error must contain)
    (("unit = 3\ninput_layers = conv\n[b]", "unitz = 3\ninput_layers = conv\n[b]"), (),
     "[a] unitz: unknown key (did you mean 'unit'?)"),
    (("type = conv2d", "type = conv2"), (), "[conv] type: unknown layer type 'conv2'"),
    (("activation = softmax", "activation = softmx"), (), "did you mean 'softmax'"),
    (("type = adam", "type = adm"), (), "[optimizer] type: unknown optimizer"),
    (("loss = cross", "loss = crossentropy"), (), "[model] loss:"),
    (None, ("--planner", "fastest"), "'--planner'"),
    (("filters = 2", "filters = -2"), (), "[conv] filters: expected a positive integer"),
    (("batch_size = 4", "batch_size = 0"), (), "[model] batch_size: expected a positive"),
    (("kernel_size = 3,3", "kernel_size = 5,5"), (), "[conv]"),
    (("filters = 2\n", ""), (), "[conv]: missing required key 'filters'"),
    (("input_shape = 1:4:4\n", ""), (), "[in]: the first layer needs input_shape"),
    (("input_layers = a, b", "input_layers = a, c"), (), "no layer named [c]"),
    (("unit = 3\ninput_layers = conv\n[b]", "unit = 3\ninput_layers = sum\n[b]"), (), "cycle"),
    (("[b]\ntype = fully_connected\nunit = 3", "[b]\ntype = fully_connected\nunit = 2"), (),
     "[sum] input_layers: cannot add"),
    (("[b]", "[a]"), (), "section [a] appears twice"),
    (("[in]", "[in"), (), "cannot read this line"),
    (("path = train.dat", "path = missing.dat"), (), "[train_set] path: data file not found"),
    (None, ("--save", "/proc/nope/w.bin"), "cannot write weights"),
    (None, ("--init-weights", "{tmp}/short.bin"), "short.bin has 12 bytes"),
    (None, ("--init-weights", "{tmp}/none.bin"), "none.bin' does not exist"),
    (None, ("--init-weights", "{tmp}/m.ini"), "m.ini is a model config, not a weights file"),
    (None, ("--init-weights", "{tmp}/c.ckpt"), "c.ckpt is a checkpoint, not a weights file "
     "(.bin or .safetensors); `train --resume` reads a checkpoint"),
    (None, ("--init-weights", "{tmp}/m.onnx"), "m.onnx is an ONNX model, not a weights file"),
    # found by fuzzing the command line: each was a traceback, exit 1 or exit 0 before
    (None, ("--seed", "-1"), "--seed"),
    (("input_layers = conv\n[b]", "input_layers = conv(1)\n[b]"), (),
     "[a] input_layers: [conv] has no output 1"),
    (("input_layers = conv\n[b]", "input_layers = conv(99999999999999999999)\n[b]"), (),
     "no layer has 1024 or more outputs"),
    (("filters = 2", "filters = 99999999999"), (), "more than this machine can allocate"),
    (("[in]", "[LearningRateScheduler]\ntype = exponential\nlearning_rate = 0.01\n"
      "decay_rate = 1e308\ndecay_steps = 1\n[in]"), (), "decay factor in (0, 1]"),
    (("type = adam", "type = adam\nlearning_rate = nan"), (), "a finite number"),
    (("[conv]", "[pool]\ntype = pooling2d\npooling = max\npool_size = 2,2\npadding = 5,5\n"
      "[conv]"), (), "must be smaller than the pool size"),
    (None, ("--batch-size", "1000"), "--batch-size: the training set has 4 records, fewer "
     "than one batch of 1000"),
    (("batch_size = 4", "batch_size = 1000"), (), "m.ini:3 [model] batch_size: the training "
     "set has 4 records, fewer than one batch of 1000"),
    (("unit = 3\ninput_layers = conv\n[b]", "unit = 3\nunit = 4\ninput_layers = conv\n[b]"), (),
     "m.ini:19 [a] unit: 'unit' appears twice in [a] (first at line 18)"),
    (None, ("--set", "model.batch_size=1000"), "--set [model] batch_size: the training set "
     "has 4 records, fewer than one batch of 1000"),
    (None, ("--memory-budget", "0"), "at least one byte"),
    (None, ("--memory-budget", "1.5"), "a bare number is whole bytes, got '1.5'; for a share "
     "of the plan write 1.5%"),
    (None, ("--memory-budget", "0.5"), "for a share of the plan write 0.5%"),
    (None, ("--memory-budget", "150.5"), "got '150.5'; for MiB write 150.5MiB"),
    (("[Model]", "[Modle]"), (), "m.ini:1 [modle]: no [Model] section: is this one meant"),
    (("type = adam", "type = sgd\nbeta1 = 0.9"), (),
     "m.ini:7 [optimizer] beta1: a key of adam, adamw, not of sgd"),
    (("[Model]", "[model_out]\ntype = fully_connected\nunit = 2\n[Mdl]"), (),
     "m.ini:4 [mdl]: no [Model] section: is this one meant to be it?"),
    (None, ("--set", "optimizer.type=sgd", "--set", "optimizer.beta1=0.9"),
     "--set [optimizer] beta1: a key of adam, adamw, not of sgd"),
    (None, ("--set", "model.epochs="), "[model] epochs: empty value"),
    (None, ("--save", ""), "an empty path"),
    (None, ("--report", ""), "an empty path"),
    (None, ("--init-weights", "{tmp}/long.bin"), "does not fit this model"),
]


@pytest.mark.parametrize("change,args,message", CASES, ids=[c[2][:30] for c in CASES])
def test_each_kind_of_bad_input(tmp_path, change, args, message):
    (tmp_path / "train.dat").write_bytes(b"\0" * 4 * (16 + 3) * 4)
    (tmp_path / "short.bin").write_bytes(b"\0" * 12)
    (tmp_path / "long.bin").write_bytes(b"\0" * 4 * 86 + b"x")   # the 86 weights, and a byte
    (tmp_path / "c.ckpt").write_bytes(b"PK")
    (tmp_path / "m.onnx").write_bytes(b"\x08")
    text = GOOD if change is None else GOOD.replace(*change, 1)
    assert change is None or text != GOOD, "the change did not apply"
    model = tmp_path / "m.ini"
    model.write_text(text)
    res = run("train", str(model), "-q", *[a.format(tmp=tmp_path) for a in args])
    errors = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1, res.output
    assert message in errors[0], errors[0]
    assert "Traceback" not in res.output and "internal error" not in res.output


def test_the_good_model_trains(tmp_path):
    (tmp_path / "train.dat").write_bytes(b"\0" * 4 * (16 + 3) * 4)
    (tmp_path / "m.ini").write_text(GOOD)
    res = run("train", str(tmp_path / "m.ini"), "-q")
    assert res.exit_code == 0, res.output


def test_empty_file_and_wrong_record_size(tmp_path, tiny_model):
    (tmp_path / "empty.ini").write_text("")
    res = run("check", str(tmp_path / "empty.ini"))
    assert res.exit_code == 2 and "empty" in res.output
    path = tiny_model
    with open(tmp_path / "train.dat", "ab") as f:
        f.write(b"\0" * 8)
    res = run("train", path)
    assert res.exit_code == 2 and "not a whole number" in res.output


def _records(tmp_path, name, change):
    """The tiny_model fixture's data (4 inputs, 3 labels per record), changed and saved
    as `name` beside it."""
    data = np.fromfile(tmp_path / "train.dat", dtype="<f4").reshape(-1, 7)
    change(data)
    data.tofile(tmp_path / name)
    return str(tmp_path / name)


def test_data_that_is_not_numbers_is_refused_naming_the_record(tmp_path, tiny_model):
    def nan(d):
        d[5, 2] = np.nan

    def label_inf(d):
        d[9, 5] = np.inf
    text = tmp_path / "table.csv"   # a text file of a whole number of 28-byte records
    text.write_text(("0.25,1.5,3," * 100)[:28 * 10])
    prose = tmp_path / "notes.txt"   # UTF-8 beyond ASCII: 2 of its 28 bytes are one "×"
    prose.write_bytes(("Each record is 4×7 floats.\n" * 30).encode())
    excel = tmp_path / "excel.csv"   # "CSV UTF-8" starts with a byte-order mark
    excel.write_bytes(b"\xef\xbb\xbf" + b"a,b,c,d,e,f\n" * 23 + b"\n")
    assert prose.stat().st_size % 28 == 0 == excel.stat().st_size % 28
    x = np.zeros((8, 4), dtype=np.float32)
    x[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.zeros(8, dtype=np.int64))
    (tmp_path / "folder").mkdir()
    for data, message in [(_records(tmp_path, "nan.dat", nan), "nan.dat record 5: input 0 value 2 is nan"),
                          (_records(tmp_path, "inf.dat", label_inf), "inf.dat record 9: label 0 value 1 is inf"),
                          (str(text), "table.csv looks like a text file"),
                          (str(prose), "notes.txt looks like a text file"),
                          (str(excel), "excel.csv looks like a text file"),
                          (str(tmp_path / "nan.npz"), "nan.npz record 3: x value 1 is not a finite"),
                          (str(tmp_path / "folder"), "data path is a directory")]:
        res = run("train", tiny_model, "-q", "--set", f"train_set.path={data}")
        errors = [l for l in res.output.splitlines() if l.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and message in errors[0], res.output
        assert "[train_set] path" in errors[0]


def test_wildly_large_values_are_a_warning(tmp_path, tiny_model):
    def huge(d):
        d[2, 3] = 5.9e22
    res = run("train", tiny_model, "--epochs", "1", "--set",
              f"train_set.path={_records(tmp_path, 'huge.dat', huge)}")
    warnings = [l for l in res.stderr.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1 and "huge.dat record 2: input 0 value 3 is 5.9e+22" in warnings[0]


def mutations(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    kind = rng.randrange(5)
    if kind == 0 and lines:                       # delete a few lines
        for _ in range(rng.randint(1, 3)):
            if lines:
                del lines[rng.randrange(len(lines))]
    elif kind == 1:                               # swap two values
        kv = [i for i, l in enumerate(lines) if "=" in l]
        if len(kv) >= 2:
            i, j = rng.sample(kv, 2)
            ki, vi = lines[i].split("=", 1)
            kj, vj = lines[j].split("=", 1)
            lines[i], lines[j] = f"{ki}={vj}", f"{kj}={vi}"
    elif kind == 2:                               # garbage bytes somewhere
        data = bytearray("\n".join(lines).encode())
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(max(len(data), 1))] = rng.randrange(256) if data else 0
        return data.decode("latin-1")
    elif kind == 3 and lines:                     # a value replaced by something odd
        kv = [i for i, l in enumerate(lines) if "=" in l]
        if kv:
            i = rng.choice(kv)
            odd = rng.choice(["-1", "0", "1e40", "nan", "", "a,b", "3:3", "999999", "[x]", "1:0:1"])
            lines[i] = lines[i].split("=", 1)[0] + "= " + odd
    else:                                         # duplicate a line elsewhere
        if lines:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(lines))
    return "\n".join(lines)


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="../shared/nntrainer-ini not present")
def test_fuzzed_corpus_files_never_crash(tmp_path):
    rng = random.Random(2026)
    files = sorted(f for f in glob.glob(os.path.join(CORPUS, "**", "*.ini"), recursive=True)
                   if os.path.getsize(f) < 8000)   # the big ones only slow this down
    outcomes = {0: 0, 2: 0}
    for k in range(240):
        src = files[k % len(files)]
        target = tmp_path / f"fuzz{k}.ini"
        with open(src, encoding="utf-8") as f:
            target.write_bytes(mutations(f.read(), rng).encode("latin-1", "replace"))
        res = run("check", "-b", "2", str(target))
        assert res.exit_code in (0, 2), f"{src} mutation {k}: {res.output}"
        assert "Traceback" not in res.output and "internal error" not in res.output, \
            f"{src} mutation {k}: {res.output}"
        outcomes[res.exit_code] += 1
    assert outcomes[0] and outcomes[2]   # the mutations both break and spare files


def test_bad_npz_files_are_refused(tmp_path, tiny_model):
    model = tiny_model
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04garbage")
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(tmp_path / "text.npz", x=np.array([["a"] * 4] * 8), y=np.zeros(8, int))
    np.savez(tmp_path / "scalar.npz", x=np.float32(3), y=np.int64(3))
    np.savez(tmp_path / "complex.npz", x=np.zeros((8, 4), np.float32), y=np.zeros((8, 3), complex))
    for name, message in [("garbage", "File is not a zip file"), ("empty", "cannot read"),
                          ("text", "holds <U1 values"), ("scalar", "one row per record"),
                          ("complex", "holds complex128 values")]:
        res = run("train", model, "-q", "--set", f"train_set.path={tmp_path / name}.npz")
        errors = [l for l in res.output.splitlines() if l.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and message in errors[0], res.output


def test_yaml_nested_too_deeply_or_with_a_bad_character(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("layers: " + "[" * 50000 + "]" * 50000)
    res = run("check", str(deep))
    assert res.exit_code == 2 and "nested too deeply" in res.output
    c1 = tmp_path / "c1.yaml"
    c1.write_text('model: {loss: cross}\nlayers:\n  - {name: in, type: input, '
                  'input_shape: "1:1:64\x91"}\n')
    res = run("check", str(c1))
    errors = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "c1.yaml:3" in errors[0], res.output
    assert len(res.output.strip().splitlines()) == 2   # the error and the count


def test_yaml_errors_name_the_column_and_the_layer(tmp_path):
    """An unknown key is found after reading, and still points at its column; a value
    that is a mapping names the layer it is in, whose name comes later in the mapping."""
    head = "model: {loss: cross}\nlayers:\n  - {name: in, type: input, input_shape: 1:1:4}\n"
    unknown = "  - {name: fc, type: fully_connected, units: 3}"
    mapped = "  - {unit: {a: 1}, type: fully_connected, name: fc}"
    for layer, where in [(unknown, f"y.yaml:4:{unknown.index('units') + 1} [fc] units"),
                         (mapped, f"y.yaml:4:{mapped.index('{a') + 1} [fc] unit"),
                         ("  - {type: fully_connected}", "y.yaml:4:5: this layer has no name"),
                         ("  - {name: '  ', type: fully_connected}",
                          "y.yaml:4:12: a layer's name must be one word"),
                         ("  - {name: [a, b], type: fully_connected}",
                          "y.yaml:4:12: a layer's name must be one word")]:
        model = tmp_path / "y.yaml"
        model.write_text(head + layer + "\n")
        res = run("check", str(model))
        errors = [l for l in res.output.splitlines() if l.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and where in errors[0], res.output


def test_weights_or_an_onnx_model_given_as_the_model_say_what_to_do(tmp_path):
    for name, hint in [("m.onnx", "nntrainer import m.onnx -o model.ini"),
                       ("w.bin", "give it with --init-weights"),
                       ("w.safetensors", "give it with --init-weights"),
                       ("c.ckpt", "a checkpoint, not a model config: `train MODEL --resume` "
                                  "reads it")]:
        (tmp_path / name).write_bytes(b"\x08\x0e:@\x00")
        res = run("train", str(tmp_path / name))
        errors = [l for l in res.output.splitlines() if l.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and hint in errors[0], res.output


def test_set_switching_the_optimizer_ignores_the_old_ones_keys(tmp_path):
    """Adam to SGD from the command line: the file's Adam keys are left out, each with a
    warning (in the file itself, an Adam key under sgd is an error: see CASES)."""
    (tmp_path / "train.dat").write_bytes(b"\0" * 4 * (16 + 3) * 4)
    model = tmp_path / "m.ini"
    model.write_text(GOOD.replace("type = adam", "type = adam\nbeta1 = 0.9\nbeta2 = 0.99"))
    res = run("train", str(model), "--epochs", "1", "--no-run-dir", "--set",
              "optimizer.type=sgd")
    assert res.exit_code == 0, res.output
    for key, line in (("beta1", 7), ("beta2", 8)):
        assert (f"warning: {model}:{line} [optimizer] {key}: a key of adam, adamw, not of sgd "
                "(--set made it sgd): ignored") in res.output


def test_usage_errors_are_one_line_with_a_hint(tmp_path, tiny_model):
    res = run("convert", tiny_model)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "Missing option '--to'. Choose from: yaml, ini" in res.output
    res = run("train", tiny_model, "--debug")
    assert res.exit_code == 2 and "--debug goes before the command" in res.output
    res = run("import", tiny_model, "-o", str(tmp_path / "x.ini"))
    assert res.exit_code == 2 and "a model config already" in res.output, res.output
    res = run("eval", tiny_model, "--weights", tiny_model)
    assert res.exit_code == 2 and "is a model config, not a weights file" in res.output
    (tmp_path / "long.bin").write_bytes(b"\0" * 4 * 67 + b"x")   # SGD: no Adam state to name
    res = run("eval", tiny_model, "--weights", str(tmp_path / "long.bin"), "--data",
              str(tmp_path / "train.dat"))
    assert res.exit_code == 2 and "weights take 268, counters 8" in res.output, res.output


def test_model_files_that_are_not_files(tmp_path):
    fifo = tmp_path / "model.ini"
    os.mkfifo(fifo)   # reading it would block for ever
    res = run("check", str(fifo))
    assert res.exit_code == 2 and "not a regular file" in res.output


def test_output_to_a_pipe_is_written_in_place_not_replaced(tmp_path, tiny_model):
    """A device or pipe given as output (/dev/stdout, /dev/null) is written, never
    replaced by a regular file (as root, a rename would replace /dev/null itself)."""
    import stat
    import threading
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()), daemon=True)
    reader.start()
    res = run("convert", tiny_model, "--to", "yaml", "-o", str(fifo))
    reader.join(timeout=30)
    assert res.exit_code == 0, res.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and "layers:" in got[0]


def test_convert_refuses_a_model_that_does_not_build(tmp_path):
    (tmp_path / "train.dat").write_bytes(b"")
    model = tmp_path / "m.ini"
    model.write_text(GOOD.replace("input_layers = a, b", "input_layers = a, nosuch"))
    res = run("convert", str(model), "--to", "yaml")
    assert res.exit_code == 2 and "no layer named [nosuch]" in res.output


@pytest.mark.parametrize("bad,message", [(9.0, "embedding [e] token id 9.0, outside 0..4"),
                                         (-1.0, "embedding [e] token id -1.0, outside 0..4"),
                                         (np.nan, "t.dat record 5: input 0 value 1 is nan")])
def test_token_ids_outside_the_embedding_are_bad_data(tmp_path, bad, message):
    ids = np.tile(np.array([[0, 1, 2, 1, 0]], np.float32), (8, 1))
    ids[5, 1] = bad
    np.concatenate([ids[:, :3], ids[:, 3:]], axis=1).astype("<f4").tofile(tmp_path / "t.dat")
    model = tmp_path / "e.ini"
    model.write_text("[Model]\nloss = cross\nbatch_size = 4\n[Optimizer]\ntype = sgd\n"
                     "[train_set]\npath = t.dat\n[in]\ntype = input\ninput_shape = 1:1:3\n"
                     "[e]\ntype = embedding\nin_dim = 5\nout_dim = 2\nflatten = true\n"
                     "[out]\ntype = fully_connected\nunit = 2\nactivation = softmax\n")
    res = run("train", str(model), "-q")
    errors = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1, res.output
    assert message in errors[0]
