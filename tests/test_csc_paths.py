"""The CPU matrix-product path of the CSC operators against torch's convolutions."""

import pytest
import torch
import torch.nn.functional as F

import robust_csc.csc as csc


@pytest.mark.parametrize("kernel,stride,size", [(1, 1, 5), (3, 1, 8), (3, 2, 7), (3, 2, 8), (5, 2, 9), (7, 2, 12)])
def test_gemm_operators_equal_library_convolutions(kernel, stride, size):
    gen = torch.Generator().manual_seed(kernel * 100 + stride * 10 + size)
    padding = kernel // 2
    weight = torch.randn(6, 3, kernel, kernel, generator=gen, dtype=torch.float64)
    x = torch.randn(4, 3, size, size, generator=gen, dtype=torch.float64)
    assert csc._use_gemm(x, weight)
    code = csc.analysis(x, weight, stride, padding)
    torch.testing.assert_close(code, F.conv2d(x, weight, stride=stride, padding=padding), rtol=1e-12, atol=1e-12)
    z = torch.randn(code.shape, generator=gen, dtype=torch.float64)
    op = csc.output_padding_for(size, z.shape[-1], kernel, stride, padding)
    reference = F.conv_transpose2d(z, weight, stride=stride, padding=padding, output_padding=op)
    torch.testing.assert_close(
        csc.synthesis(z, weight, stride, padding, (size, size)), reference, rtol=1e-12, atol=1e-12
    )


def test_layer_values_and_gradients_do_not_depend_on_the_path(monkeypatch):
    torch.manual_seed(0)
    layer = csc.CSCConv2d(3, 8, 3, 2, 1, n_steps=3).double().eval()  # eval: one cached step size
    x = torch.rand(5, 3, 11, 11, dtype=torch.float64, requires_grad=True)

    def run():
        layer.zero_grad()
        x.grad = None
        out = layer(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return out.detach().clone(), x.grad.clone(), layer.weight.grad.clone()

    gemm = run()
    monkeypatch.setattr(csc, "GEMM_MAX_PATCH", 0)  # force torch's convolutions
    assert not csc._use_gemm(x, layer.weight)
    library = run()
    for a, b in zip(gemm, library):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_mixed_precision_keeps_the_step_size_in_full_precision():
    """Under autocast the codes may be half precision, the power iteration may not."""
    torch.manual_seed(1)
    layer = csc.CSCConv2d(3, 16, 3, 1, 1).eval()
    x = torch.rand(4, 3, 16, 16)
    reference = layer(x)
    eta = float(layer.step_size((16, 16)))
    layer.reset_step_size()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layer(x)
    assert float(layer.step_size((16, 16))) == eta
    assert layer.step_size((16, 16)).dtype == torch.float32
    torch.testing.assert_close(mixed.float(), reference, rtol=0.05, atol=0.02)
