"""conv2d_at computes exactly the picked pixels of the stride-1 convolution, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from njet_layers.sampled_conv import conv2d_at

CASES = [  # (kernel, padding, rows, cols, dilation, groups, size)
    (3, (1, 1), range(0, 16, 2), range(0, 16, 2), (1, 1), 1, (16, 16)),  # a converted stride-2 conv
    (5, (2, 2), range(0, 16, 2), range(0, 16, 2), (1, 1), 4, (16, 16)),  # depthwise, σ past 0.5
    (5, (2, 2), range(1, 17, 2), range(1, 17, 2), (1, 1), 1, (17, 17)),  # odd start, odd size
    (5, (2, 2), range(3, 17, 3), range(3, 17, 3), (1, 1), 1, (17, 17)),  # start past the padding
    (3, (1, 1), range(0, 15, 2), range(0, 15, 2), (1, 1), 1, (15, 15)),  # last kept row reads the bottom pad
    (7, (1, 2), range(0, 10, 2), range(1, 13, 2), (1, 1), 1, (14, 15)),  # larger kernel, uneven pads
    (5, (0, 0), range(0, 8, 2), range(0, 8, 2), (1, 1), 1, (12, 12)),  # valid conv
    (3, (-1, -1), range(0, 10, 2), range(0, 10, 2), (1, 1), 1, (14, 14)),  # cropped output
    (3, (2, 2), range(0, 14, 2), range(0, 14, 2), (2, 2), 1, (14, 14)),  # dilation
    (3, (1, 1), [0, 3, 5, 8, 11], [1, 2, 6, 9, 13], (1, 1), 1, (14, 14)),  # no grid: gathered
    (3, (1, 1), range(0, 16, 2), range(0, 16, 3), (1, 1), 1, (16, 16)),  # different steps per axis
]


@pytest.mark.parametrize("kernel,padding,rows,cols,dilation,groups,size", CASES)
def test_values_and_gradients_match_the_full_conv(kernel: int, padding: tuple[int, int], rows: range,
                                                  cols: range, dilation: tuple[int, int], groups: int,
                                                  size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, *size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6 if groups == 1 else 4, 4 // groups, kernel, kernel, dtype=torch.float64,
                         requires_grad=True)
    bias = torch.randn(weight.shape[0], dtype=torch.float64, requires_grad=True)
    r, c = torch.tensor(list(rows)), torch.tensor(list(cols))
    pad = [max(p, 0) for p in padding]
    full = F.conv2d(x, weight, bias, 1, pad, dilation, groups)
    crop = [max(-p, 0) for p in padding]
    want = full[..., crop[0]:, crop[1]:][..., r, :][..., c]
    got = conv2d_at(x, weight, bias, r, c, padding, dilation, groups)
    torch.testing.assert_close(got, want)
    probe = torch.randn_like(want)
    grads = torch.autograd.grad((got * probe).sum(), (x, weight, bias))
    expected = torch.autograd.grad((want * probe).sum(), (x, weight, bias))
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b)
