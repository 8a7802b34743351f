"""Probe heads: the linear head is an nn.Linear; the MLP is Linear-ReLU-Linear, hidden = feature dim."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noisylm.errors import NoisyLMError, UsageError
from noisylm.probing.heads import LinearHead, MLPHead, check_features_fit, make_head


def test_linear_head_is_affine_map():
    head = make_head("linear", 6, 3)
    assert isinstance(head, nn.Linear) and isinstance(head, LinearHead)
    x = torch.randn(4, 6)
    torch.testing.assert_close(head(x), x @ head.weight.T + head.bias)
    assert (head.in_features, head.num_classes) == (6, 3)


def test_mlp_head_matches_app_e13():
    head = make_head("mlp", 6, 3)
    assert isinstance(head, MLPHead)
    assert head.fc1.weight.shape == (6, 6) and head.fc2.weight.shape == (3, 6)  # hidden = feature dim
    x = torch.randn(4, 6)
    expected = torch.relu(x @ head.fc1.weight.T + head.fc1.bias) @ head.fc2.weight.T + head.fc2.bias
    torch.testing.assert_close(head(x), expected)
    assert sum(p.numel() for p in head.parameters()) == 6 * 6 + 6 + 6 * 3 + 3
    assert MLPHead(6, 3, hidden=10).fc1.out_features == 10


def test_bad_head_arguments():
    with pytest.raises(UsageError, match="unknown head"):
        make_head("transformer", 6, 3)
    with pytest.raises(UsageError, match=">= 2 classes"):
        make_head("linear", 6, 1)
    with pytest.raises(UsageError, match="feature dimension"):
        make_head("mlp", 0, 3)


def test_check_features_fit():
    head = make_head("mlp", 6, 3)
    check_features_fit(head, torch.zeros(2, 6))
    with pytest.raises(NoisyLMError, match="dimension 5 but the head expects 6"):
        check_features_fit(head, torch.zeros(2, 5))
    with pytest.raises(NoisyLMError, match="2-D"):
        check_features_fit(head, torch.zeros(2, 6, 1))
