"""The YAML form of a model: the same sections and keys as the INI file, as a mapping
per section, with the layers as an ordered list under `layers` (each with its `name`):

    Model: {type: NeuralNetwork, epochs: 20, loss: cross, batch_size: 32}
    Optimizer: {type: adam, learning_rate: 0.002}
    train_set: {type: file, path: ../datasets/digits/train.dat}
    layers:
      - {name: input, type: input, input_shape: "1:8:8"}
      - {name: fc, type: fully_connected, unit: 10, activation: softmax}

Values are read as the text written (no YAML typing), so `1:8:8`, `3,3` or `[3, 3]`
mean what they mean in the INI file; lists are joined with commas."""

from __future__ import annotations

import yaml

from nntrainer_cli.errors import ConfigError

from .sections import Entry, Section

LAYERS = "layers"


def _error(message: str, path: str, node, section: str | None = None,
           key: str | None = None) -> ConfigError:
    mark = node.start_mark
    return ConfigError(message, file=path, line=mark.line + 1, col=mark.column + 1,
                       section=section, key=key)


def _text(node, path: str, section: str, key: str) -> str:
    if isinstance(node, yaml.ScalarNode):
        return node.value
    if isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.ScalarNode)
                                                   for n in node.value):
        return ",".join(n.value for n in node.value)
    raise _error("expected a value or a list of values", path, node, section, key)


def _section(name: str, node, path: str, line_node) -> Section:
    if not isinstance(node, yaml.MappingNode):
        raise _error("expected a mapping of keys to values", path, node, name)
    section = Section(name, line_node.start_mark.line + 1, path)
    for k, v in node.value:
        key = str(k.value).strip().lower()
        if key in section.entries:
            raise _error(f"key '{key}' appears twice in this section", path, k, name, key)
        section.entries[key] = Entry(key, _text(v, path, name, key).strip(),
                                     k.start_mark.line + 1, col=k.start_mark.column + 1)
    return section


def parse_yaml(text: str, path: str) -> list[Section]:
    try:
        root = yaml.compose(text)
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        line = text[:e.position].count("\n") + 1
        raise ConfigError(f"malformed YAML: character {e.character!r} is not allowed",
                          file=path, line=line) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"malformed YAML: {problem}", file=path,
                          line=mark.line + 1 if mark else None,
                          col=mark.column + 1 if mark else None) from None
    except RecursionError:
        raise ConfigError("malformed YAML: nested too deeply", file=path) from None
    if root is None:
        raise ConfigError("the file is empty: no Model and no layers", file=path)
    if not isinstance(root, yaml.MappingNode):
        raise _error("expected a mapping of sections at the top (Model:, layers:, …)", path, root)
    sections: list[Section] = []
    seen: set[str] = set()

    def add(section: Section, node) -> None:
        if section.name in seen:
            raise _error(f"section [{section.name}] appears twice", path, node, section.name)
        seen.add(section.name)
        sections.append(section)

    for k, v in root.value:
        name = str(k.value).strip().lower()
        if name != LAYERS:
            add(_section(name, v, path, k), k)
            continue
        if not isinstance(v, yaml.SequenceNode):
            raise _error("layers must be a list of mappings, one per layer", path, v)
        for item in v.value:
            if not isinstance(item, yaml.MappingNode):
                raise _error("each layer must be a mapping with a name", path, item)
            named = [value for key, value in item.value
                     if str(key.value).strip().lower() == "name"]
            if not named:
                raise _error("this layer has no name", path, item)
            if not isinstance(named[0], yaml.ScalarNode) or not named[0].value.strip():
                raise _error("a layer's name must be one word", path, named[0])
            layer = _section(named[0].value.strip().lower(), item, path, item)
            del layer.entries["name"]
            add(layer, item)
    return sections
