"""KV4 scheme fidelity on SmolLM2 (all 30 layers, 512 tokens of Hamlet, last 64
queries): the model-wide measurement of issue 7, slow (several minutes). The
bounds are regression floors under the measured values in docs/kv4_attention.md;
the issue's goal (mean >= 0.99, worst >= 0.98) is reported there, not asserted."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_smollm2_scheme_fidelity():
    from quantflow.kv4_fidelity import measure
    r = measure(variants=("kv4", "hadamard", "hadamard+v+sink4"), progress=False)
    s = r["summary"]
    assert len(r["per_layer"]["kv4"]) == 30
    # rotation helps every way it is measured; sinks never hurt
    assert s["hadamard"]["mean"] > s["kv4"]["mean"] + 0.005
    assert s["hadamard"]["worst"] > s["kv4"]["worst"]
    assert s["hadamard+v+sink4"]["mean"] >= s["hadamard"]["mean"]
    assert s["hadamard+v+sink4"]["mean"] > 0.985 and s["hadamard+v+sink4"]["worst"] > 0.975


def test_fixture_regenerates_identically(tmp_path):
    """The committed fixture is what the capture script writes."""
    import numpy as np
    from cosim.kv4_attention import FIXTURE
    from quantflow.capture_attention import capture_fixture
    out = tmp_path / "fx.npz"
    capture_fixture(out, layer=10)
    with np.load(out) as a, np.load(FIXTURE) as b:
        for n in ("q", "k", "v", "o"):
            assert np.array_equal(a[n], b[n]), n
