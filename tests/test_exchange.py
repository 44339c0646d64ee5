"""Models and weights from and to other formats. `nntrainer import`: ONNX graphs built
here with onnx.helper (nothing downloaded) give models whose forward pass equals onnx's
reference evaluator, and every operator or attribute we cannot express is refused in
one line before anything is written. Weights as safetensors, checked against the
safetensors library. Needs the `import` extra, which CI installs."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from nntrainer_cli.optim.schedulers import make_schedule
from nntrainer_cli.pipeline import prepare
from nntrainer_cli.runtime import weights as weights_io
from nntrainer_cli.runtime.executor import Executor

from helpers import run, write_records

RNG = np.random.default_rng(5)


def init(name, *shape, scale=0.3):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def save(tmp_path, nodes, inits, in_shape, out_shape, name="m.onnx"):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_shape)],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, str(path))
    return str(path)


def mlp(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="/fc1/Gemm", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="/act/Relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="/fc2/Gemm", transB=1,
                              alpha=0.5, beta=2.0)]
    inits = [init("w1", 16, 8), init("b1", 16), init("w2", 4, 16), init("b2", 4)]
    return save(tmp_path, nodes, inits, [1, 8], [1, 4])


def cnn(tmp_path):
    """Conv + batch norm + relu + max pool, a residual block, global pooling, MatMul+Add,
    softmax: what a ResNet-style export holds."""
    nodes = [
        helper.make_node("Conv", ["x", "c1", "c1b"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "g", "bt", "mu", "var"], ["bn"],
                         name="bn1", epsilon=1e-5),
        helper.make_node("Relu", ["bn"], ["r"], name="relu1"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "c2"], ["q"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["q", "p"], ["s"], name="res/add"),
        helper.make_node("Dropout", ["s"], ["d"], name="drop"),
        helper.make_node("GlobalAveragePool", ["d"], ["gp"], name="gap"),
        helper.make_node("Flatten", ["gp"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "w"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "wb"], ["logits"], name="fc_bias"),
        helper.make_node("Softmax", ["logits"], ["y"], name="prob", axis=-1)]
    inits = [init("c1", 3, 2, 3, 3), init("c1b", 3), init("g", 3), init("bt", 3),
             init("mu", 3, scale=0.1), numpy_helper.from_array(
                 RNG.uniform(0.5, 1.5, 3).astype(np.float32), "var"),
             init("c2", 3, 3, 3, 3), init("w", 3, 5), init("wb", 5)]
    return save(tmp_path, nodes, inits, [1, 2, 6, 6], [1, 5])


def strided(tmp_path):
    """Asymmetric padding, strides and dilation, average pooling, then a flatten."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 0, 2, 1],
                              strides=[2, 1], dilations=[1, 2]),
             helper.make_node("AveragePool", ["c"], ["a"], name="avg", kernel_shape=[2, 2],
                              pads=[1, 1, 0, 0]),
             helper.make_node("Tanh", ["a"], ["t"], name="tanh"),
             helper.make_node("Reshape", ["t", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc")]
    inits = [init("w", 2, 1, 3, 2), numpy_helper.from_array(np.array([1, 32], np.int64), "shape"),
             init("fw", 32, 3), init("fb", 3)]
    return save(tmp_path, nodes, inits, [1, 1, 6, 5], [1, 3])


def reduced(tmp_path):
    """What PyTorch's exporters write beside the classic ops: a weight passed through an
    Identity (the TorchScript exporter's shared initializers) and a global average pool
    as ReduceMean over H and W (torch.export's), here without keepdims."""
    nodes = [helper.make_node("Identity", ["w"], ["wi"], name="shared"),
             helper.make_node("Conv", ["x", "wi"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c"], ["m"], name="mean", axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["m", "fw"], ["y"], name="fc")]
    return save(tmp_path, nodes, [init("w", 3, 2, 3, 3), init("fw", 3, 4)], [1, 2, 5, 5], [1, 4])


def ours(model, weights, x):
    """Our forward pass (the probabilities the cross-entropy loss layer computes)."""
    p = prepare(model, batch_size=len(x))
    ex = Executor(p.graph, p.plan, p.optimizer, make_schedule(p.cfg))
    assert weights_io.load(ex, weights) is None
    def feed(part, views):
        views[0][...] = x.reshape(views[0].shape)
    ex.eval_step(len(x), feed)
    return ex.fwd_ctx[p.graph.losses[0].name][0].outputs[0].reshape(len(x), -1).copy()


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("build,ext", [(mlp, ".ini"), (cnn, ".yaml"), (strided, ".ini"),
                                       (reduced, ".ini")])
def test_imported_forward_equals_the_reference(tmp_path, build, ext):
    src = build(tmp_path)
    out = tmp_path / f"imported{ext}"
    res = run("import", src, "-o", str(out))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "imported.bin").exists()
    assert run("check", str(out)).exit_code == 0
    x = RNG.standard_normal((3,) + tuple(
        d.dim_value for d in onnx.load(src).graph.input[0].type.tensor_type.shape.dim[1:]),
        dtype=np.float32)
    ref = ReferenceEvaluator(onnx.load(src))
    want = np.concatenate([ref.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    if build is not cnn:   # logits: the importer added a softmax, and says so
        want = softmax(want)
        assert "added [softmax]" in res.output
    np.testing.assert_allclose(ours(str(out), str(tmp_path / "imported.bin"), x), want,
                               atol=1e-5)


def test_imported_model_fine_tunes(tmp_path):
    src = mlp(tmp_path)
    out = tmp_path / "m.ini"
    assert run("import", src, "-o", str(out)).exit_code == 0
    write_records(tmp_path / "t.dat", RNG.standard_normal((64, 8)), RNG.integers(0, 4, 64), 4)
    res = run("train", str(out), "-q", "--init-weights", str(tmp_path / "m.bin"),
              "--epochs", "2", "--batch-size", "8", "--set", f"train_set.path={tmp_path}/t.dat",
              "--save", str(tmp_path / "tuned.bin"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "tuned.bin").read_bytes()[:64] != (tmp_path / "m.bin").read_bytes()[:64]


REFUSED = [
    (helper.make_node("Conv", ["x", "w"], ["y"], name="grouped", group=2), [init("w", 4, 1, 3, 3)],
     [1, 2, 5, 5], [1, 4, 3, 3], "node grouped (Conv): group = 2"),
    (helper.make_node("Erf", ["x"], ["y"], name="e"), [], [1, 4], [1, 4],
     "node e (Erf): this operator is not supported"),
    (helper.make_node("LeakyRelu", ["x"], ["y"], name="lr", alpha=0.2), [], [1, 4], [1, 4],
     "alpha 0.2"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], ceil_mode=1), [],
     [1, 1, 5, 5], [1, 1, 3, 3], "ceil_mode = 1"),
    (helper.make_node("Gemm", ["x", "w"], ["y"], name="ta", transA=1), [init("w", 4, 3)],
     [4, 2], [2, 3], "transA = 1"),
    (helper.make_node("Flatten", ["x"], ["y"], name="f2", axis=2), [], [1, 2, 3, 3], [2, 9],
     "flatten from axis 2"),
    (helper.make_node("Reshape", ["x", "s"], ["y"], name="rs"),
     [numpy_helper.from_array(np.array([3, 6], np.int64), "s")], [1, 2, 3, 3], [3, 6],
     "node rs (Reshape): only a flatten to (batch, -1) is supported, got [3, 6]"),
    (helper.make_node("ReduceMean", ["x"], ["y"], name="rm", axes=[1]), [], [1, 2, 3, 3],
     [1, 1, 3, 3], "only a reduction over the spatial axes (2, 3)"),
]


@pytest.mark.parametrize("node,inits,ins,outs,message", REFUSED, ids=[r[4][:24] for r in REFUSED])
def test_what_cannot_be_expressed_is_refused_before_writing(tmp_path, node, inits, ins, outs,
                                                            message):
    src = save(tmp_path, [node], inits, ins, outs)
    res = run("import", src, "-o", str(tmp_path / "out.ini"))
    errors = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and message in errors[0], res.output
    assert not (tmp_path / "out.ini").exists() and not (tmp_path / "out.bin").exists()


def test_unreadable_files_are_refused(tmp_path):
    src = mlp(tmp_path)
    data = open(src, "rb").read()
    (tmp_path / "cut.onnx").write_bytes(data[:len(data) // 2])
    (tmp_path / "text.onnx").write_text("not a model")
    for name in ("cut.onnx", "text.onnx", "missing.onnx"):
        res = run("import", str(tmp_path / name), "-o", str(tmp_path / "o.ini"))
        errors = [l for l in res.output.splitlines() if l.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and name in errors[0], res.output
    assert not os.path.exists(tmp_path / "o.ini")


def test_weights_in_a_file_beside_the_model(tmp_path):
    """Exports over 2 GB (and torch.export's, above a size) keep the weights in
    `x.onnx.data`: read from there, and a missing or cut-short file refused by name."""
    inline = mlp(tmp_path)
    model = onnx.load(inline)
    src = tmp_path / "ext.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=0)
    assert run("import", str(src), "-o", str(tmp_path / "a.ini")).exit_code == 0
    assert run("import", inline, "-o", str(tmp_path / "inline.ini")).exit_code == 0
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "inline.bin").read_bytes()
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    res = run("import", str(src), "-o", str(tmp_path / "b.ini"))
    assert res.exit_code == 2 and "ext.onnx.data is 100 bytes, shorter" in res.output, res.output
    data.unlink()
    res = run("import", str(src), "-o", str(tmp_path / "b.ini"))
    assert res.exit_code == 2 and "ext.onnx.data is missing" in res.output, res.output
    assert not (tmp_path / "b.ini").exists()


def test_safetensors_round_trip_and_interop(tmp_path, tiny_model):
    """Weights saved as safetensors equal the .bin of the same run, read with the
    safetensors library; training from either gives the same bytes; bad files are
    refused naming the tensor."""
    from safetensors.numpy import load_file, save_file
    args = ("train", tiny_model, "-q", "--epochs", "2")
    assert run(*args, "--save", str(tmp_path / "a.bin")).exit_code == 0
    assert run(*args, "--save", str(tmp_path / "a.safetensors")).exit_code == 0
    tensors = load_file(str(tmp_path / "a.safetensors"))
    order = ["hidden:weight", "hidden:bias", "out:weight", "out:bias"]
    assert sorted(tensors) == sorted(order)
    flat = np.concatenate([tensors[n].reshape(-1) for n in order])
    assert flat.astype("<f4").tobytes() == (tmp_path / "a.bin").read_bytes()[:flat.nbytes]
    for src in ("a.bin", "a.safetensors"):
        assert run(*args, "--init-weights", str(tmp_path / src),
                   "--save", str(tmp_path / f"from-{src}.bin")).exit_code == 0
    assert (tmp_path / "from-a.bin.bin").read_bytes() == \
        (tmp_path / "from-a.safetensors.bin").read_bytes()
    bad = {"missing": {k: v for k, v in tensors.items() if k != "out:bias"},
           "shape": {**tensors, "out:bias": np.zeros(4, np.float32)},
           "extra": {**tensors, "other:weight": np.zeros(2, np.float32)}}
    for name, arrays in bad.items():
        save_file(arrays, str(tmp_path / f"{name}.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 20)
    for name, message in [("missing", "missing out:bias"), ("shape", "out:bias is F32 of shape (4,)"),
                          ("extra", "unknown other:weight"), ("junk", "not a safetensors file")]:
        res = run(*args, "--init-weights", str(tmp_path / f"{name}.safetensors"))
        errors = [l for l in res.output.splitlines() if l.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and message in errors[0], res.output


def test_a_pytorch_state_dict_loads_through_a_weights_map(tmp_path, tiny_model):
    """PyTorch names and (out, in) Linear weights: renamed and transposed by the map, an
    extra tensor left out; training from it equals training from our own file."""
    from safetensors.numpy import load_file, save_file
    args = ("train", tiny_model, "-q", "--epochs", "1")
    assert run(*args, "--save", str(tmp_path / "a.safetensors")).exit_code == 0
    ours = load_file(str(tmp_path / "a.safetensors"))
    torch_like = {"hidden.weight": ours["hidden:weight"].T.copy(), "hidden.bias": ours["hidden:bias"],
                  "out.weight": ours["out:weight"].T.copy(), "out.bias": ours["out:bias"],
                  "out.num_batches_tracked": np.zeros((), np.float32)}
    save_file(torch_like, str(tmp_path / "state_dict.safetensors"))
    (tmp_path / "map.yaml").write_text(
        "hidden.weight: {name: 'hidden:weight', transpose: true}\nhidden.bias: 'hidden:bias'\n"
        "out.weight: {name: 'out:weight', transpose: true}\nout.bias: 'out:bias'\n"
        "out.num_batches_tracked: null\n")
    res = run(*args, "--init-weights", str(tmp_path / "state_dict.safetensors"), "--weights-map",
              str(tmp_path / "map.yaml"), "--save", str(tmp_path / "mapped.bin"))
    assert res.exit_code == 0, res.output
    assert run(*args, "--init-weights", str(tmp_path / "a.safetensors"),
               "--save", str(tmp_path / "direct.bin")).exit_code == 0
    assert (tmp_path / "mapped.bin").read_bytes() == (tmp_path / "direct.bin").read_bytes()
    (tmp_path / "no-transpose.yaml").write_text(
        (tmp_path / "map.yaml").read_text().replace("transpose: true", "transpose: false"))
    res = run(*args, "--init-weights", str(tmp_path / "state_dict.safetensors"), "--weights-map",
              str(tmp_path / "no-transpose.yaml"))
    assert res.exit_code == 2 and "hidden.weight is F32 of shape (8, 4); hidden:weight needs " \
        "F32 of shape (4, 8)" in res.output, res.output
    (tmp_path / "bad.yaml").write_text("hidden.weight: [1, 2]\n")
    res = run(*args, "--init-weights", str(tmp_path / "state_dict.safetensors"), "--weights-map",
              str(tmp_path / "bad.yaml"))
    assert res.exit_code == 2 and "bad.yaml hidden.weight: expected a name" in res.output


def test_the_shipped_onnx_model_evaluates_as_the_reference_does(tmp_path):
    """models/digits_cnn.onnx (made by PyTorch), imported and evaluated on the digits
    test set, gets the accuracy and loss onnx's reference evaluator gets from the same
    file."""
    from helpers import REPO
    src = os.path.join(REPO, "models", "digits_cnn.onnx")
    test = os.path.join(REPO, "datasets", "digits", "test.dat")
    assert run("import", src, "-o", str(tmp_path / "d.ini")).exit_code == 0
    res = run("eval", str(tmp_path / "d.ini"), "-w", str(tmp_path / "d.bin"), "--data", test,
              "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    records = np.fromfile(test, dtype="<f4").reshape(-1, 74)
    x = records[:, :64].reshape(-1, 1, 8, 8)
    logits = ReferenceEvaluator(onnx.load(src)).run(None, {"input": x})[0].astype(np.float64)
    labels = records[:, 64:].argmax(1)
    loss = np.mean(np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
                   + logits.max(1) - logits[np.arange(len(x)), labels])
    import json
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["accuracy"] == (logits.argmax(1) == labels).mean()
    assert report["loss"] == pytest.approx(loss, rel=1e-4)


def test_an_onnx_backbone_is_spliced_with_its_weights(tmp_path):
    """`backbone = feature.onnx`, frozen: its layers come in named after the section, fed
    by the layer before it, with the ONNX weights, which training leaves as they are
    while the head learns."""
    from safetensors.numpy import load_file
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat")]
    w, b = init("w", 2, 1, 3, 3), init("b", 2)
    save(tmp_path, nodes, [w, b], [1, 1, 4, 4], [1, 32], name="feature.onnx")
    write_records(tmp_path / "t.dat", RNG.standard_normal((32, 16)), RNG.integers(0, 3, 32), 3)
    model = tmp_path / "m.ini"
    model.write_text("[Model]\nloss = cross\nbatch_size = 8\nepochs = 2\n[Optimizer]\ntype = sgd\n"
                     "learning_rate = 0.1\n[train_set]\npath = t.dat\n"
                     "[in]\ntype = input\ninput_shape = 1:4:4\n"
                     "[feat]\nbackbone = feature.onnx\ntrainable = false\n"
                     "[head]\ntype = fully_connected\nunit = 3\nactivation = softmax\n")
    res = run("summary", str(model))
    assert res.exit_code == 0 and "feat/conv" in res.output, res.output
    start = tmp_path / "start.safetensors"
    assert run("train", str(model), "-q", "--epochs", "1", "--set", "optimizer.learning_rate=1e-9",
               "--save", str(start)).exit_code == 0
    res = run("train", str(model), "-q", "--save", str(tmp_path / "after.safetensors"))
    assert res.exit_code == 0, res.output
    after = load_file(str(tmp_path / "after.safetensors"))
    np.testing.assert_array_equal(after["feat/conv:filter"], numpy_helper.to_array(w))
    np.testing.assert_array_equal(after["feat/conv:bias"], numpy_helper.to_array(b))
    assert not np.array_equal(after["head:weight"], load_file(str(start))["head:weight"])
    plan = prepare(str(model)).plan
    assert "feat/conv:filter:grad" not in plan.specs   # frozen: no gradient planned
