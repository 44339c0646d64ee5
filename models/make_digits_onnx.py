"""The digits MLP as an ONNX file, laid out the way torch.onnx.export writes a stack of
Linear layers (Gemm with transB = 1, weights (out, in), a free batch dimension, logits
out), for the README's import example. The weights are ours: configs/digits_mlp.ini
trained as the README's first command trains it (30 epochs, seed 0).

Run once from the repository root (needs the `import` extra); the output is committed:
    python models/make_digits_onnx.py
"""

import os
import subprocess
import sys
import tempfile

import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_mlp.onnx")
LAYERS = [("fc1", "Relu"), ("fc2", "Relu"), ("output", None)]   # configs/digits_mlp.ini


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "w.safetensors")
        subprocess.run([sys.executable, "-m", "nntrainer_cli", "train", "configs/digits_mlp.ini",
                        "-q", "--save", saved], check=True)
        weights = load_file(saved)
    nodes, inits, x = [], [], "input"
    for name, act in LAYERS:
        inits += [numpy_helper.from_array(weights[f"{name}:weight"].T.copy(), f"{name}.weight"),
                  numpy_helper.from_array(weights[f"{name}:bias"], f"{name}.bias")]
        nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"],
                                      [f"/{name}/Gemm_output_0"], name=f"/{name}/Gemm",
                                      transB=1))
        x = f"/{name}/Gemm_output_0"
        if act:
            nodes.append(helper.make_node(act, [x], [f"/{name}/{act}_output_0"],
                                          name=f"/{name}/{act}"))
            x = f"/{name}/{act}_output_0"
    nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="nntrainer_cli models/make_digits_onnx.py")
    onnx.checker.check_model(model)
    onnx.save(model, OUT)
    print(f"wrote {OUT} ({os.path.getsize(OUT):,} bytes)")


if __name__ == "__main__":
    main()
