"""`backbone = x.onnx` in a layer section: the ONNX graph spliced into the model, as
NNTrainer splices `backbone = x.tflite`, with its weights."""

from __future__ import annotations

from nntrainer_cli.config.sections import Entry

from .onnx_import import convert


def splice_backbones(cfg) -> None:
    """Replace each `backbone = x.onnx` layer section of `cfg` with the ONNX graph's
    layers (named `section/node`), fed by the section's input_layers or else by the
    layer before it (by its own input layer when it comes first), and record their
    weights in `cfg.backbone_weights`. `trainable` on the section applies to them all."""
    out = []
    for s in cfg.layers:
        entry = s.get("backbone")
        if entry is None:
            out.append(s)
            continue
        imported = convert(entry.path(cfg.base_dir), prefix=f"{s.name}/")
        layers = imported.sections
        source = s.get("input_layers") or (Entry("input_layers", out[-1].name, 0) if out
                                           else None)
        if source is not None:   # the backbone's own input layer gives way to the feed
            feed = layers.pop(0).name
            for layer in layers:
                e = layer.entries.get("input_layers")
                if e is not None:
                    e.value = ", ".join(source.value if v.strip() == feed else v.strip()
                                        for v in e.value.split(","))
        if s.get("trainable") is not None:
            for layer in layers:
                layer.entries["trainable"] = s.get("trainable")
        for later in cfg.layers:   # layers that name the backbone read its output
            e = later.entries.get("input_layers")
            if e is not None:
                e.value = ", ".join(layers[-1].name if v.strip().lower() == s.name else v
                                    for v in e.value.split(","))
        out += layers
        cfg.backbone_weights.update(imported.weights)
    cfg.layers = out
