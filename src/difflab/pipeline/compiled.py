"""torch.compile for long sampling jobs on a CPU: when it pays, and a network that falls back.

Measured (BENCHMARKS.md, "torch.compile for evaluation on a CPU"): in fp32 on a CPU a
compiled UNet forward runs 1.3-1.7x faster than the eager one, but the first call traces the
network and builds C++ kernels with the system compiler, about two minutes on one core. So it
pays only for a job of many network evaluations, such as the 10,000 samples of an FID
evaluation, and never for a grid. In bf16 it gained nothing, and on a GPU it is not measured:
`auto` keeps both eager.

A compiled network is built for one batch shape (static shapes: a second shape would cost a
second build); calls of any other shape, such as the last, smaller batch of a run, go to the
eager network, as does every call after a build fails (no compiler, an inductor error): the
job then finishes eagerly, with one warning saying why.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from difflab.hardware import cpp_compiler

COMPILE_CHOICES = ("auto", "on", "off")
# Image-steps (images x sampling steps) from which `auto` compiles: about twice the break-even
# measured on an AVX2 CPU (bench/eval_compile.py: a 119 s build, batches 1.65x faster, paid
# back after 1,131 images of 20 network calls, about 23,000 image-forwards), so that a machine
# that builds slower still gains. The 10,000 images of an FID evaluation are well past it.
AUTO_MIN_IMAGE_STEPS = 50_000


@dataclass(frozen=True)
class CompileChoice:
    compile: bool
    why: str


def choose_compile(requested: str, device: torch.device, precision: str,
                   images: int, steps: int) -> CompileChoice:
    """Whether to sample `images` images of `steps` steps through torch.compile, and why:
    `requested` "on" or "off" is obeyed (on needs a C++ compiler on a CPU); "auto" compiles
    fp32 CPU jobs of at least AUTO_MIN_IMAGE_STEPS image-steps when a compiler is found."""
    if requested not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {requested!r}")
    work = f"{images:,} images x {steps} steps"
    if requested == "off":
        return CompileChoice(False, "eager network (compile off)")
    compiler = cpp_compiler() if device.type == "cpu" else "gpu"
    if compiler is None:
        why = "no C++ compiler found (set CXX, or install g++ / clang++)"
        if requested == "on":
            raise ValueError(f"compile on: torch.compile needs one on a CPU: {why}")
        return CompileChoice(False, f"eager network: {why}")
    if requested == "on":
        return CompileChoice(True, f"compiled network (compile on; {work})")
    if device.type != "cpu":
        return CompileChoice(False, f"eager network (compiling is measured on CPUs only, "
                                    f"not on {device.type})")
    if precision != "fp32":
        return CompileChoice(False, f"eager network (compiling gains nothing in {precision})")
    if images * steps < AUTO_MIN_IMAGE_STEPS:
        return CompileChoice(False, f"eager network ({work}: too few for a compiled "
                                    f"network's ~2-minute first call to pay back)")
    return CompileChoice(True, f"compiled network ({work}: a first call of ~2 minutes "
                               f"builds it, then each step runs faster)")


class CompiledNetwork(torch.nn.Module):
    """`net` through torch.compile for the batch shape of its first call; other shapes, and
    every call after a failed build, run `net` eagerly. `failure`: why the build failed."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        # Not a submodule: the compiled wrapper holds the same parameters again.
        object.__setattr__(self, "_compiled", torch.compile(net, dynamic=False))
        self.shape: torch.Size | None = None
        self.failure: str | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.failure is None and self.shape in (None, x.shape):
            try:
                out = self._compiled(x, *args, **kwargs)
                self.shape = x.shape
                return out
            except Exception as e:  # noqa: BLE001 (any build failure: sample on, eagerly)
                self.failure = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                warnings.warn(f"torch.compile failed, sampling with the eager network: "
                              f"{type(e).__name__}: {self.failure}", stacklevel=2)
        return self.net(x, *args, **kwargs)
