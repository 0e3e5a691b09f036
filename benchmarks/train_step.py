"""Time one training step and one inference batch of a backbone + head, on the CPU or a GPU.

    python benchmarks/train_step.py                                  # MiniLM, batch 32 x 64 tokens
    python benchmarks/train_step.py --backbone smollm2 --batch 64 --tokens 128 --steps 20
    python benchmarks/train_step.py --batch 256 --tokens 51 --mean-tokens 25   # the full profile's batches
    python benchmarks/train_step.py --batch 256 --tokens 56 --mean-tokens 25 --compile reduce-overhead

Random token ids, `--tokens` wide, with no padding or (`--mean-tokens`) real lengths spread evenly around that
mean and padding after them, as the study's batches have (Home Depot pairs at max_length 64: 24.5 real tokens a
pair, batches of 256 padded to 51 on average). The same loop pieces as training: bf16 autocast on CUDA, AdamW
(fused on CUDA), gradient clipping, and `--compile` as the `compile` setting (its warm-up, which compiles, is
timed apart). Prints milliseconds per step, samples per second and peak memory; on a GPU
also how much of a step the GPU is busy (its kernels' time, from torch.profiler): a small share means the step is
bound by the host (Python and kernel launches), not by the GPU.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from darl_utils.compilation import COMPILE_MODES, compiled, step_begins
from darl_utils.modeling import RelevanceModel, load_backbone
from darl_utils.pipeline import environment
from darl_utils.training import setup_runtime

WARMUP_STEPS = {"off": 1, "default": 2, "reduce-overhead": 3}  # CUDA graphs record on a later call than the first


def padding_mask(rows: int, width: int, mean: int) -> torch.Tensor:
    """An attention mask: every row real (mean 0), else real lengths spread evenly over [mean/2, 3 mean/2]."""
    if not mean:
        return torch.ones(rows, width, dtype=torch.long)
    lengths = torch.linspace(max(1, mean // 2), min(width, (3 * mean) // 2), rows).round().long()
    return (torch.arange(width)[None, :] < lengths[:, None]).long()


def gpu_busy_ms(step, steps: int) -> float:
    """Milliseconds a step during which GPU kernels or copies run: the union of their intervals. The profiler's
    GPU spans of annotated regions (optimizer.step is one) cover kernels already counted: they are left out."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False))
    return busy_us(spans) / 1000 / steps


def busy_us(spans: list[tuple[float, float]]) -> float:
    """The length of the union of sorted (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in spans:
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--mean-tokens", type=int, default=0, help="mean real length a row (0: no padding)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", default="off", choices=COMPILE_MODES, help="the training step's torch.compile")
    args = parser.parse_args()

    runtime = setup_runtime(args.device)
    backbone, _, kind, _ = load_backbone(args.backbone)
    model = RelevanceModel(backbone, kind).to(runtime.device)
    vocab = backbone.config.vocab_size
    ids = torch.randint(1000, vocab - 1, (args.batch, args.tokens), device=runtime.device)
    mask = padding_mask(args.batch, args.tokens, args.mean_tokens).to(runtime.device)
    labels = torch.randint(0, 3, (args.batch,), device=runtime.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=runtime.device.type == "cuda")
    sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)

    step_model = compiled(model, args.compile)  # the training step only: predictions run eager, as in the study

    def train_step():
        step_begins(args.compile)
        with runtime.autocast:
            logits = step_model(ids, mask)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    @torch.no_grad()
    def infer_step():
        with runtime.autocast:
            model(ids, mask)

    for name, step in (("train", train_step), ("inference", infer_step)):
        model.train(name == "train")
        started = time.perf_counter()
        for _ in range(WARMUP_STEPS[args.compile] if name == "train" else 1):
            step()  # warm-up (allocations, kernel choice; compilation, CUDA graph recording)
        sync()
        warmup = f" (warm-up {time.perf_counter() - started:.1f} s)" if name == "train" else ""
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        ms = 1000 * (time.perf_counter() - start) / args.steps
        print(f"{name:9s} {args.backbone} batch {args.batch} x {args.tokens} tokens: {ms:8.1f} ms/step, "
              f"{1000 * args.batch / ms:8.0f} samples/s{warmup}")
        if runtime.device.type == "cuda":
            print(f"{'':9s} GPU busy {gpu_busy_ms(step, args.steps):.1f} ms a step")
    if runtime.device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"peak process memory (RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print(f"device: {environment(runtime.device)['device']}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
