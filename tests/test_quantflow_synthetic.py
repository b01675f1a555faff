"""quantflow.synthetic: seeded operands with LLM-like outliers."""
import torch

import quantflow as qf


def test_synthetic_is_seeded_with_outliers():
    W1 = qf.random_linear_weights(32, 128, seed=4, outlier_channels=2, outlier_scale=8.0)
    assert torch.equal(W1, qf.random_linear_weights(32, 128, seed=4, outlier_channels=2,
                                                    outlier_scale=8.0))
    assert not torch.equal(W1, qf.random_linear_weights(32, 128, seed=5))
    rms = W1.pow(2).mean(1).sqrt()
    assert int((rms > 4 * rms.median()).sum()) == 2
    X = qf.random_activations(16, 128, seed=4, outlier_features=3)
    col = X.abs().mean(0)
    assert int((col > 5 * col.median()).sum()) == 3
