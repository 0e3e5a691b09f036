"""torch.compile for the training step, opt-in (the `compile` setting).

A MiniLM step at batch 256 issues about 800 operations on CUDA, each a few microseconds of Python, dispatch and
kernel launch on the host, for a few milliseconds of GPU work: the host, not the GPU, likely bounds it
(docs/measurements.md). Compiling fuses the forward and backward passes into a few dozen kernels; "reduce-overhead"
also replays them as CUDA graphs. Both cost a compilation per process (tens of seconds, less once inductor's disk
cache holds the graph), so they pay only where they are measured faster end to end (`benchmarks/throughput.py`).
Without dropout a compiled fit is the eager one within rounding (tested); with it, compiled dropout draws other
masks, so a compiled run is another run, with its own cache entry. Shapes are dynamic: one graph serves every batch
width, and widths are padded to a multiple of PAD_MULTIPLE so that CUDA graphs are recorded for a few shapes, not
one per width.
"""
from __future__ import annotations

import functools
import re

import torch

COMPILE_MODES = ("off", "default", "reduce-overhead")
COMPILER_ERROR = re.compile(r"\b(fatal )?error: .*")  # lower case: gcc's, not an exception's name ("...Error:")
PAD_MULTIPLE = 8  # compiled steps: batch widths rounded up to this (masked positions change no result)


class CompileError(RuntimeError):
    """torch.compile cannot run here; the message names the setting and the way out."""


def compiled(module: torch.nn.Module, mode: str):
    """The module itself (mode off) or its compiled form, which shares its parameters."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile: {mode!r} must be one of {', '.join(COMPILE_MODES)}")
    if mode == "off":
        return module
    return torch.compile(module, dynamic=True, mode=None if mode == "default" else mode)


def pad_multiple(mode: str) -> int:
    """What the collator rounds batch widths up to: 1 when nothing is compiled."""
    return 1 if mode == "off" else PAD_MULTIPLE


def step_begins(mode: str) -> None:
    """Tells CUDA graphs that a new training step starts, so the last step's outputs may be overwritten."""
    if mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


@functools.lru_cache(maxsize=None)
def check_compiler(mode: str, device: str) -> None:
    """Compile and run a tiny function on the device, once per process: a machine where inductor cannot build its
    kernels (no C compiler for the CPU, no Triton for CUDA) fails here in seconds, with the way out, instead of
    in the middle of a run."""
    if mode == "off":
        return
    try:
        fn = compiled(_Tiny(), mode)
        x = torch.linspace(-1, 1, 32, device=device).reshape(4, 8)  # no random numbers: the run's stream stays put
        float(fn(x).sum())
    except Exception as e:  # the backend's failures have many types (InductorError, BackendCompilerFailed, ...)
        why = failure_reason(e)
        raise CompileError(f"compile: {mode!r} cannot run on {device} here ({why}); set compile: off") from None


def failure_reason(error: Exception) -> str:
    """The line of a compiler failure that says why (its text runs to pages: the command, the generated source)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    compiler = [m.group(0) for m in map(COMPILER_ERROR.search, lines) if m]  # gcc's "...: fatal error: ..."
    reason = compiler[-1] if compiler else next((x for x in lines if not x.endswith("raised:")), type(error).__name__)
    if "Python.h" in reason:  # inductor's C++ kernels and Triton's launcher both include it
        reason += ": the Python headers (a python3-dev package) are missing"
    return reason


class _Tiny(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.gelu(x) * 2 + 1
