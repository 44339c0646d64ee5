"""A fixed slice of the fuzzer (tests/fuzzing.py): 500 seeded cases mutating model
files, data, weights, checkpoints and flags; every one ends in exit 0, 1 or 2 with no
traceback, no temporary file left and no half-written output. The 10,000-case run is
`python tests/fuzzing.py` (README)."""

import os

import pytest

from fuzzing import fuzz

if not os.environ.get("CI"):
    pytest.importorskip("PIL")   # the image-folder cases need the images extra


def test_five_hundred_fuzzed_cases_end_cleanly():
    outcomes, problems = fuzz(500, seed=2026)
    assert problems == [], "\n".join(problems[:10])
    codes = {code for _, code in outcomes}
    assert {0, 2} <= codes   # the mutations both break and spare inputs
    assert len({kind for kind, _ in outcomes}) == 9   # every kind of input was fuzzed
