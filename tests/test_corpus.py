"""NNTrainer's own INI files (../shared/nntrainer-ini): each passes `check`, or is
refused in one line that says what is unsupported. Skipped when ../shared is absent."""

import glob
import os

import pytest
from click.testing import CliRunner

from nntrainer_cli.cli import main
from nntrainer_cli.pipeline import prepare
from nntrainer_cli.plan.planners import Item, check_valid

from helpers import CORPUS

# file (relative to the corpus) → None if it must pass, else text its error must contain
EXPECTED = {
    "Applications/AlexNet/res/alex.ini": None,
    "Applications/Custom/LayerClient/res/custom_layer_client.ini": "unknown layer type 'custom_pow'",
    "Applications/Layers/res/Conv.ini": None,
    "Applications/Layers/res/LSTM.ini": None,
    "Applications/Layers/res/Linear.ini": None,
    "Applications/Layers/res/Model_A_Conv.ini": None,
    "Applications/Layers/res/Model_A_Linear.ini": None,
    "Applications/Layers/res/Model_C_Conv.ini": None,
    "Applications/Layers/res/Model_C_Linear.ini": None,
    "Applications/LogisticRegression/res/LogisticRegression.ini": None,
    "Applications/MNIST/res/mnist.ini": None,
    "Applications/MNIST/res/mnist_valid.ini": None,
    "Applications/ProductRatings/res/product_ratings_model.ini": None,
    "Applications/ReinforcementLearning/DeepQ/res/DeepQ.ini": None,
    "Applications/Resnet/res/resnet18.ini": None,
    "Applications/TFlite_export/res/fc_model.ini": None,
    "Applications/Tizen_native/CustomShortcut/res/model.ini": None,
    "Applications/TransferLearning/CIFAR_Classification/res/Classification.ini": None,
    "Applications/TransferLearning/CIFAR_Classification/res/Classification_func.ini":
        "TensorFlow Lite and NNStreamer backbones are not supported",
    "Applications/TransferLearning/CIFAR_Classification/res/Classification_new.ini":
        "unknown layer type 'InputLayer'",
    "Applications/TransferLearning/Draw_Classification/res/Training.ini":
        "TensorFlow Lite and NNStreamer backbones are not supported",
    "Applications/VGG/res/vgg.ini": None,
    "Applications/VGG/res/vgg_small.ini": None,
    "test/test_models/models/mnist.ini": None,
    "test/test_models/models/mnist_inf.ini": None,
    "test/test_models/models/simple_fc.ini": "no [Model] section",
    "test/test_models/models/simple_fc_backbone.ini": "no [Model] section",
}

pytestmark = pytest.mark.skipif(not os.path.isdir(CORPUS),
                                reason="../shared/nntrainer-ini not present")


def test_expectations_cover_the_corpus():
    found = {os.path.relpath(f, CORPUS) for f in glob.glob(os.path.join(CORPUS, "**", "*.ini"),
                                                          recursive=True)}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check_each_corpus_file(name):
    res = CliRunner().invoke(main, ["check", os.path.join(CORPUS, name)])
    errors = [l for l in res.output.splitlines() if l.startswith("error:")]
    if EXPECTED[name] is None:
        assert res.exit_code == 0 and not errors, res.output
    else:
        assert res.exit_code == 2 and len(errors) == 1 and EXPECTED[name] in errors[0], res.output
        assert "Traceback" not in res.output


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if e is None))
def test_corpus_plans_are_valid(name):
    """Every supported corpus model: an independently valid plan near the lower bound."""
    p = prepare(os.path.join(CORPUS, name), batch_size=4, require_loss=False)
    roots = [s for s in p.plan.specs.values() if not s.alias_of]
    items = [Item(s.bytes, s.first, s.last) for s in roots]
    assert check_valid(items, [s.offset for s in roots], p.plan.peak_bytes) == []
    assert p.plan.lower_bound_bytes <= p.plan.peak_bytes <= 1.10 * p.plan.lower_bound_bytes
