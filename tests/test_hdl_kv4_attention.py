"""hdl.kv4_attention: elaboration and port layouts (equal to quantflow's words),
the analytic cycle model (its RTL agreement is enforced by the cosim tests and
make sim's expected_cycles) and lane utilisation >= 95 % for T >= 512."""
from __future__ import annotations

import pytest

from golden.kv4_attention_config import KV4Config
from hdl.kv4_attention import (KV4Attention, KV4Quantizer, KV4Unit, append_cycles,
                               cache_layout, cmd_layout, cycle_model, lanes_busy, out_layout,
                               token_layout)
from quantflow.kv4_attention import cache_token_bits, token_bits


def test_layouts_match_quantflow_words():
    for c in (KV4Config(), KV4Config(head_dim=128, heads=3, lanes=8),
              KV4Config(rotate=False, recent=0)):
        assert token_layout(c).size == token_bits(c)
        assert cache_layout(c).size == 2 * cache_token_bits(c)
        assert cmd_layout(c).size == 16 + c.heads * 22
        assert out_layout(c).size == c.lanes * c.out_bits


def test_components_elaborate_and_convert():
    from hdl.generate import verilog
    c = KV4Config(head_dim=32, lanes=8, max_t=8, heads=1)
    for cls in (KV4Quantizer, KV4Attention, KV4Unit):
        assert "module" in verilog(cls(c), f"t_{cls.__name__.lower()}")
    with pytest.raises(TypeError):
        KV4Unit({"head_dim": 64})


def test_cycle_model_shape_and_utilisation():
    for c in (KV4Config(head_dim=64, lanes=16, heads=3), KV4Config(head_dim=128, lanes=16),
              KV4Config(head_dim=64, lanes=8, heads=2), KV4Config(head_dim=128, lanes=32)):
        per_token = cycle_model(c, 101) - cycle_model(c, 100)
        assert per_token == c.head_dim // c.lanes          # T * head_dim / lanes + overhead
        for T in (512, 1000, c.max_t):
            assert lanes_busy(c, T) >= 0.95, (c.name(), T)
    # chunks in, chunks min/max, S, zeros, 4 cycles per out beat (+ 6 butterfly stages)
    assert append_cycles(KV4Config(), 3) == 3 * (4 + 4 + 2 + 4 * 4 + 6)
    assert append_cycles(KV4Config(rotate=False), 3) == 3 * (4 + 4 + 2 + 4 * 4)
    # the recent tokens cost one extra pass of chunks each; the rotated query
    # log2(D) + 2 cycles per head
    c, r = KV4Config(recent=8), KV4Config(recent=0)
    assert cycle_model(c, 100) - cycle_model(r, 100) == 8 * c.chunks + c.chunks
    assert cycle_model(c, 3) - cycle_model(r, 3) == 3 * c.chunks + c.chunks
    assert (cycle_model(KV4Config(heads=2), 9) - cycle_model(KV4Config(heads=2, rotate=False), 9)
            == 2 * (6 + 2))
    with pytest.raises(ValueError):
        cycle_model(KV4Config(max_t=16), 17)
