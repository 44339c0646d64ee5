"""NNTrainer's own INI files (../shared/nntrainer-ini): each passes `check`, or is
refused in one line that says what is unsupported. Skipped when ../shared is absent."""

import glob
import os

import pytest

from nntrainer_cli.pipeline import prepare
from nntrainer_cli.plan.planners import Item, check_valid

from helpers import CORPUS, CORPUS_EXPECTED, run

pytestmark = pytest.mark.skipif(not os.path.isdir(CORPUS),
                                reason="../shared/nntrainer-ini not present")


def test_expectations_cover_the_corpus():
    found = {os.path.relpath(f, CORPUS) for f in glob.glob(os.path.join(CORPUS, "**", "*.ini"),
                                                          recursive=True)}
    assert found == set(CORPUS_EXPECTED)


@pytest.mark.parametrize("name", sorted(CORPUS_EXPECTED))
def test_check_each_corpus_file(name):
    res = run("check", os.path.join(CORPUS, name))
    errors = [l for l in res.output.splitlines() if l.startswith("error:")]
    if CORPUS_EXPECTED[name] is None:
        assert res.exit_code == 0 and not errors, res.output
    else:
        assert res.exit_code == 2 and len(errors) == 1, res.output
        assert CORPUS_EXPECTED[name] in errors[0], res.output
        assert "Traceback" not in res.output


@pytest.mark.parametrize("name", sorted(n for n, e in CORPUS_EXPECTED.items() if e is None))
def test_corpus_plans_are_valid(name):
    """Every supported corpus model: an independently valid plan near the lower bound."""
    p = prepare(os.path.join(CORPUS, name), batch_size=4, require_loss=False)
    roots = [s for s in p.plan.specs.values() if not s.alias_of]
    items = [Item(s.bytes, s.first, s.last) for s in roots]
    assert check_valid(items, [s.offset for s in roots], p.plan.peak_bytes) == []
    assert p.plan.lower_bound_bytes <= p.plan.peak_bytes <= 1.10 * p.plan.lower_bound_bytes


def test_nntrainers_lstm_application_plans_in_a_quarter_of_its_memory():
    """Applications/Layers/res/LSTM.ini: 150,528 input features into 10 units. Its input
    weight and that weight's gradient (23 MiB each) made the smallest budget its whole
    plan until lstm was tiled; now a quarter of the plan is met with its input weight
    in tiles, never all resident at once."""
    path = os.path.join(CORPUS, "Applications", "Layers", "res", "LSTM.ini")
    whole = prepare(path).plan.peak_bytes
    plan = prepare(path, budget="25%").plan
    assert plan.tiles["lstmlayer"] > 1
    assert plan.swap.peak <= plan.swap.budget <= whole // 4
    held = [0] * len(plan.slots)
    for r in plan.swap.residencies:
        if r.tensor.startswith("lstmlayer:weight_ih:t") and r.kind == "weight":
            for t in range(r.first, r.last + 1):
                held[t] += r.bytes
    assert 0 < max(held) < 150528 * 40 * 4 / 2
