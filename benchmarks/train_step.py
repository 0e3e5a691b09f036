"""Time one training step and one inference batch of a backbone + head, on the CPU or a GPU.

    python benchmarks/train_step.py                                  # MiniLM, batch 32 x 64 tokens
    python benchmarks/train_step.py --backbone smollm2 --batch 64 --tokens 128 --steps 20

Random token ids of a fixed length (no padding), the same loop pieces as training: bf16 autocast on CUDA,
AdamW (fused on CUDA), gradient clipping. Prints milliseconds per step, samples per second and peak memory.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from darl_utils.modeling import RelevanceModel, load_backbone
from darl_utils.pipeline import environment
from darl_utils.training import setup_runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()

    runtime = setup_runtime(args.device)
    backbone, _, kind, _ = load_backbone(args.backbone)
    model = RelevanceModel(backbone, kind).to(runtime.device)
    vocab = backbone.config.vocab_size
    ids = torch.randint(1000, vocab - 1, (args.batch, args.tokens), device=runtime.device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 3, (args.batch,), device=runtime.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=runtime.device.type == "cuda")
    sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)

    def train_step():
        with runtime.autocast:
            logits = model(ids, mask)
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
        step()  # warm-up (allocations, kernel choice)
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        ms = 1000 * (time.perf_counter() - start) / args.steps
        print(f"{name:9s} {args.backbone} batch {args.batch} x {args.tokens} tokens: {ms:8.1f} ms/step, "
              f"{1000 * args.batch / ms:8.0f} samples/s")
    if runtime.device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"peak process memory (RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print(f"device: {environment()['device']}, torch {torch.__version__}, threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
