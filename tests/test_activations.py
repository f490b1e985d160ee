"""Activations: in place where nothing records them, out of place under autograd (where in place clones its input)."""

import pytest
import torch
from torch import nn

from efficientdet.layers.blocks import activation


@pytest.mark.parametrize("name", ["relu6", "silu", "relu"])
def test_activation_leaves_a_recorded_input_alone_and_works_in_place_otherwise(name):
    act = activation(name)
    reference = {"relu6": nn.ReLU6(), "silu": nn.SiLU(), "relu": nn.ReLU()}[name]
    leaf = (torch.randn(2, 3, 5, 5) * 8).requires_grad_()
    x = leaf * 1.0  # a non-leaf that autograd records, as every activation's input in training
    before = x.detach().clone()
    y = act(x)
    assert y.data_ptr() != x.data_ptr() and torch.equal(x.detach(), before)  # out of place: no clone of x needed
    y.sum().backward()
    expected_leaf = leaf.detach().clone().requires_grad_()
    reference(expected_leaf * 1.0).sum().backward()
    assert torch.equal(leaf.grad, expected_leaf.grad)
    # nothing records it (inference, or a frozen backbone's input): in place, no second buffer
    with torch.no_grad():
        z = before.clone()
        out = act(z)
    assert out.data_ptr() == z.data_ptr() and torch.equal(out, reference(before))
    frozen = before.clone()  # grad mode on, but the input does not require grad
    assert act(frozen).data_ptr() == frozen.data_ptr()
