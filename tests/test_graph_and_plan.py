"""Graph building (NNTrainer's realizers and order) and the plan built on it."""

import pytest

from nntrainer_cli.config import load_config
from nntrainer_cli.errors import ConfigError
from nntrainer_cli.graph import build_graph
from nntrainer_cli.layers.base import Phase
from nntrainer_cli.plan import make_plan
from nntrainer_cli.plan.planners import Item, check_valid

HEAD = "[Model]\nbatch_size = 4\nloss = {loss}\n[Optimizer]\ntype = adam\n"


def graph_of(tmp_path, body, loss="cross"):
    path = tmp_path / "m.ini"
    path.write_text(HEAD.format(loss=loss) + body)
    return build_graph(load_config(str(path)))


def names(graph):
    return [n.name for n in graph.nodes]


def test_implicit_chaining_and_realized_nodes(tmp_path):
    g = graph_of(tmp_path, "[in]\ntype=input\ninput_shape=1:2:3\n"
                           "[fc]\ntype=fully_connected\nunit=5\nactivation=relu\nflatten=true\n"
                           "[out]\ntype=fully_connected\nunit=3\nactivation=softmax\n")
    assert names(g) == ["in", "fc", "fc/activation_realized", "fc/flatten_realized", "out",
                        "cross_softmax"]
    assert g.by_name["out"].inputs == [("fc/flatten_realized", 0)]
    assert g.by_name["fc"].ctx.output_shapes == [(4, 1, 2, 5)]   # dense acts on the last axis
    assert g.by_name["fc/flatten_realized"].ctx.output_shapes == [(4, 1, 1, 10)]


def test_input_shape_on_a_dense_layer_and_mse(tmp_path):
    g = graph_of(tmp_path, "[fc0]\ntype=fully_connected\ninput_shape=1:1:100\nunit=2\n", "mse")
    assert names(g) == ["fc0", "mse"]
    assert [n.name for n in g.inputs] == ["fc0"]


def test_multiout_for_shared_outputs(tmp_path):
    g = graph_of(tmp_path, "[in]\ntype=input\ninput_shape=1:1:4\n"
                           "[a]\ntype=fully_connected\nunit=4\ninput_layers=in\n"
                           "[b]\ntype=fully_connected\nunit=4\ninput_layers=in\n"
                           "[c]\ntype=fully_connected\nunit=4\ninput_layers=a\n", "mse")
    mo = g.by_name["in/generated_out_0"]
    assert mo.type == "multiout" and len(mo.ctx.output_shapes) == 2
    assert g.by_name["a"].inputs == [("in/generated_out_0", 0)]
    assert g.by_name["b"].inputs == [("in/generated_out_0", 1)]


@pytest.mark.parametrize("body,message", [
    ("[fc]\ntype=fully_connected\nunit=3\n", "needs input_shape"),
    ("[in]\ntype=input\ninput_shape=1:1:4\n[fc]\ntype=fully_connected\nunit=3\ninput_layers=inn\n",
     "did you mean 'in'"),
    ("[in]\ntype=input\ninput_shape=1:1:4\n[fc]\ntype=fully_connected\nunit=3\n",
     "softmax"),
    ("[in]\ntype=input\ninput_shape=1:1:4\n[fc]\ntype=fully_connected\nunit=-3\n",
     "positive integer"),
    ("[in]\ntype=input\ninput_shape=1:1:4\n[fc]\ntype=fully_connected\n", "missing required key 'unit'"),
    ("[in]\ntype=input\ninput_shape=1:1:4\n"
     "[a]\ntype=fully_connected\nunit=4\ninput_layers=b\n"
     "[b]\ntype=fully_connected\nunit=4\ninput_layers=a\nactivation=softmax\n", "cycle"),
    ("[in]\ntype=input\ninput_shape=1:1:4\n[fc]\ntype=fully_connected\nunit=3\n"
     "activation=softmax\nflatten=true\n", "flatten in an earlier layer"),
])
def test_graph_errors(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        graph_of(tmp_path, body)


MLP = ("[in]\ntype=input\ninput_shape=1:1:6\n"
       "[fc1]\ntype=fully_connected\nunit=8\nactivation=sigmoid\n"
       "[act]\ntype=activation\nactivation=relu\n"
       "[fc2]\ntype=fully_connected\nunit=3\nactivation=softmax\n")


def test_plan_is_valid_and_tight(tmp_path):
    g = graph_of(tmp_path, MLP)
    plan = make_plan(g, ("adam_m", "adam_v"))
    roots = [s for s in plan.specs.values() if not s.alias_of]
    items = [Item(s.bytes, s.first, s.last) for s in roots]
    assert check_valid(items, [s.offset for s in roots], plan.peak_bytes) == []
    assert plan.lower_bound_bytes <= plan.peak_bytes <= plan.naive_bytes
    phases = [(s.node, s.phase) for s in plan.slots]
    # per-layer gradient application right after that layer's gradient
    assert phases.index(("fc2", "apply_gradient")) < phases.index(("fc1", "calc_gradient"))
    # the input layer never runs backward, and fc1 needs no derivative for it
    assert ("in", "calc_derivative") not in phases
    assert ("fc1", "calc_derivative") not in phases
    # a weight's gradient lives only from its layer's calc_gradient to its apply
    grad = plan.specs["fc2:weight:grad"]
    cg = phases.index(("fc2", "calc_gradient"))
    assert (grad.first, grad.last) == (cg, phases.index(("fc2", "apply_gradient")))


def test_in_place_only_where_nobody_needs_the_old_value(tmp_path):
    plan = make_plan(graph_of(tmp_path, MLP), ("adam_m", "adam_v"))
    s = plan.specs
    # relu after sigmoid must not overwrite: sigmoid's backward reads its output
    assert s["act:out0"].alias_of is None
    # sigmoid after fc1 may: fc1 reads its input, not its output
    assert s["fc1/activation_realized:out0"].alias_of == "fc1:out0"
    # the input layer passes the data tensor through
    assert s["in:out0"].alias_of == "in:input"
    no_alias = make_plan(graph_of(tmp_path, MLP), ("adam_m", "adam_v"), in_place=False)
    assert all(t.alias_of is None for t in no_alias.specs.values())
    assert no_alias.peak_bytes >= plan.peak_bytes


def test_a_reader_after_a_backward_overwrite_is_caught(tmp_path):
    """Activations overwrite their output in calc_derivative; had anyone read it later,
    the plan would be refused (a layer bug, so an AssertionError, not a user error)."""
    from nntrainer_cli.plan.specs import _check_backward_writes, build_specs, set_lifespans
    graph = graph_of(tmp_path, MLP)
    ts = build_specs(graph, ("adam_m", "adam_v"))
    _check_backward_writes(graph, ts)   # as planned: fine
    act = "fc1/activation_realized"
    cd = ts.node_slots[act].last(Phase.CALC_DERIVATIVE)
    ts.specs[ts.io[act].outputs[0]].uses.add(cd + 1)
    set_lifespans(ts)
    with pytest.raises(AssertionError, match=f"{act} overwrites"):
        _check_backward_writes(graph, ts)


def test_frozen_layers_have_no_gradients(tmp_path):
    body = MLP.replace("unit=8\n", "unit=8\ntrainable=false\n")
    plan = make_plan(graph_of(tmp_path, body), ("adam_m", "adam_v"))
    assert "fc1:weight:grad" not in plan.specs
    assert "fc1:weight:adam_m" not in plan.specs
    assert "fc2:weight:grad" in plan.specs


def test_clipping_keeps_clipped_gradients_to_the_end(tmp_path):
    clipped = make_plan(graph_of(tmp_path, MLP.replace("unit=8\n", "unit=8\nclip_grad_by_norm=1\n")),
                        ("adam_m", "adam_v"))
    last = clipped.slots[-1]
    assert last.phase == "clip_and_apply"
    assert clipped.specs["fc1:weight:grad"].last == last.index       # clipped: to the end
    phases = [(s.node, s.phase) for s in clipped.slots]
    assert ("fc2", "apply_gradient") in phases                        # not clipped: per layer
    assert ("fc1", "apply_gradient") not in phases
    # model-wide clipping: every gradient lives at once, and the plan shows the cost
    path = tmp_path / "clip.ini"
    path.write_text(HEAD.format(loss="cross") + MLP)
    cfg = load_config(str(path), ["model.clip_grad_by_norm=1"])
    everything = make_plan(build_graph(cfg), ("adam_m", "adam_v"))
    grads = [s for s in everything.specs.values() if s.kind == "gradient"]
    assert all(s.last == everything.slots[-1].index for s in grads)
    kept = sum(s.bytes for s in everything.specs.values() if s.persistent)
    assert everything.lower_bound_bytes >= kept + sum(s.bytes for s in grads)
