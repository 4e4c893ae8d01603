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
    (3, (1, 1), [0, 2, 4, 7, 9, 11, 13], [0, 2, 4, 6, 8, 11, 13], (1, 1), 1, (14, 14)),  # factor just above 2
    (5, (2, 2), [0, 2, 5, 7, 10, 12, 15], [1, 3, 5, 8], (1, 1), 4, (16, 16)),  # last run reads the bottom pad
    (5, (2, 2), [2, 4, 6, 9], [0, 3, 6, 8, 10, 12, 15], (1, 1), 1, (16, 16)),  # a run of one column at the end
    (3, (-1, -1), [0, 2, 5, 7, 9], [0, 2, 4, 7], (1, 1), 1, (14, 14)),  # runs in a cropped output
    (3, (2, 2), [0, 2, 4, 7, 9, 11], [0, 2, 5, 7, 9], (2, 2), 1, (14, 14)),  # runs with dilation
    # 5 × 5 runs, more pieces than MAX_PIECES: gathered
    (3, (1, 1), [0, 1, 3, 4, 6, 7, 9, 10, 12, 13], [0, 1, 3, 4, 6, 7, 9, 10, 12], (1, 1), 1, (15, 15)),
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


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_factor_near_an_integer_runs_strided_convs_not_gathers(monkeypatch: pytest.MonkeyPatch,
                                                                 channels_last: bool) -> None:
    import njet_layers.sampled_conv as sampled

    monkeypatch.setattr(sampled, "_gather", lambda *a: pytest.fail("gathered"))
    idx = (torch.arange(27) * 2.04).round().long()  # σ moved the factor off 2: two runs per axis
    x = torch.randn(2, 3, 56, 56, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    got = sampled.conv2d_at(x, w, None, idx, idx, (1, 1), (1, 1), 1)
    want = F.conv2d(x, w, None, 1, 1)[..., idx, :][..., idx]
    torch.testing.assert_close(got, want)
    probe = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad((got * probe).sum(), (x, w)),
                    torch.autograd.grad((want * probe).sum(), (x, w)), strict=True):
        torch.testing.assert_close(a, b)
    assert len(sampled._runs(idx) or []) == 2
