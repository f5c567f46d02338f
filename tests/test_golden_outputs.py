"""Golden outputs (issue 16, item 6): every diffusion sampler and raster pipeline reproduces, for fixed seeds on
tiny seeded models, the arrays recorded in tests/golden/<case>.npz before the sampling loops move into one
core/diffusion/ layer. The cases and what each pins are in tests/golden.py.

Bit-identical results are expected while the arithmetic is unchanged. The comparison allows 1e-6 absolute
(rtol 0), the tolerance the issue grants for reordered float arithmetic; shapes, dtypes and the set of
arrays must match exactly. Integer outputs (labels, class rasters, pixel counts) are therefore compared
exactly, and an argmax or threshold may flip where a reordering moves a value across a tie.

A deliberate change of the numbers is re-recorded with `python -m tests.golden --record [case ...]`;
`python -m tests.golden --check` prints every difference without pytest. Goldens are tied to the installed
torch / diffusers / timm / smp / GDAL and the CPU's kernels: re-record after upgrading them, never as part of
the refactor they guard.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.golden import CASES, compute, golden_path, load_golden


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_match_the_recorded_goldens(name, tmp_path):
    assert golden_path(name).is_file(), f"no golden for '{name}': run `python -m tests.golden --record {name}`"
    expected = load_golden(name)
    actual = compute(name, tmp_path)
    assert sorted(actual) == sorted(expected), f"{name}: the arrays computed differ from the recorded ones"
    for key in sorted(expected):
        assert actual[key].dtype == expected[key].dtype, f"{name}/{key}: dtype {actual[key].dtype}, " \
                                                         f"golden {expected[key].dtype}"
        np.testing.assert_allclose(actual[key], expected[key], rtol=0, atol=1e-6, err_msg=f"{name}/{key}")


def test_every_case_has_a_golden_and_no_golden_is_stale():
    recorded = {path.stem for path in golden_path("x").parent.glob("*.npz")}
    assert recorded == set(CASES)
