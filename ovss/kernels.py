"""CPU matrix products for inference, through oneDNN where PyTorch's default goes to MKL.

PyTorch runs a float32 ``F.linear`` on the CPU as MKL's ``sgemm``. On AMD CPUs MKL does not take
its fastest paths: on the project's AMD EPYC Zen 4 box (AVX-512, 2 threads) the ViT-B/16 shapes of
a 4-window sliding window (788 x 768 by 768 x {768, 2304, 3072}, 788 x 3072 by 3072 x 768) run at
107-157 GFLOP/s through MKL and at 172-189 GFLOP/s through oneDNN (the library PyTorch already
ships for its convolutions), which takes SCLIP's warm predict from 1.21 s to 1.02 s there
(``benchmarks/RESULTS.md``). oneDNN computes the same float32 products with float32 accumulation
(no reduced-precision mode is enabled); results differ from MKL's by summation order only
(~1e-6 relative).

Used only where nothing needs a gradient (the op has no autograd formula) and for float32 CPU
tensors; everything else (GPU, bf16/fp16, training) goes to ``F.linear`` unchanged.
``OVSS_ONEDNN_LINEAR=0`` turns it off.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F


def _available() -> bool:
    if os.environ.get("OVSS_ONEDNN_LINEAR", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:  # a private op of PyTorch's (its inductor's CPU fusion uses it): probe it once, use it only if it agrees
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(3, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(5, generator=g)
        with torch.no_grad():
            out = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return out.shape == (3, 5) and bool(torch.allclose(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5))
    except (AttributeError, RuntimeError, TypeError):
        return False


#: whether :func:`linear` may use oneDNN (decided once at import)
ONEDNN_LINEAR = _available()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: ``x @ weight.T + bias``.

    Args:
        x: (..., in) input.
        weight: (out, in).
        bias: (out,) or None.

    Returns:
        (..., out), the dtype and device of ``x``. Through oneDNN for float32 CPU tensors when no
        gradient is recorded (see the module docstring), else through ``F.linear``.
    """
    if (ONEDNN_LINEAR and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
            and weight.device.type == "cpu" and x.dim() >= 2 and x.numel() > 0 and not torch.is_grad_enabled()
            and (bias is None or (bias.dtype == torch.float32 and bias.device.type == "cpu"))):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight.contiguous(), bias, "none", [], "")
    return F.linear(x, weight, bias)


def linear_module(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for an ``nn.Linear`` (or ``NonDynamicallyQuantizableLinear``) through :func:`linear`."""
    return linear(x, module.weight, module.bias)


class OneDNNLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose forward goes through :func:`linear` (same parameters, same state-dict
    keys). :func:`use_onednn_linears` turns the ``nn.Linear`` layers of a network into these."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return linear(x, self.weight, self.bias)


def use_onednn_linears(module: torch.nn.Module) -> torch.nn.Module:
    """Route every plain ``nn.Linear`` of ``module`` (timm/open_clip MLPs, projection heads) through
    :func:`linear`, in place, and return ``module``. Subclasses of ``nn.Linear`` are left alone
    (their forward may do more), and so are the projections ``nn.MultiheadAttention`` reads directly.
    Nothing changes where a gradient is recorded or off the CPU (see :func:`linear`)."""
    if ONEDNN_LINEAR:
        for m in module.modules():
            if type(m) is torch.nn.Linear:
                m.__class__ = OneDNNLinear
    return module
