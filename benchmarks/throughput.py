"""Our training loop against Hugging Face's Trainer: the same model, data, batch size, precision and epochs.

    python benchmarks/throughput.py --data train.csv.gz                    # one GPU: batch 256 and 32, all train
    python benchmarks/throughput.py --data train.csv.gz --steps 64         # 64 steps a measurement at each batch
    python benchmarks/throughput.py --data train.csv.gz --device cpu --max-train-pairs 512 --batch-sizes 32

Both train RelevanceModel (MiniLM + MLP head) on the Home Depot train part of the default split, max_length 64,
dynamic padding, bf16 autocast with float32 master weights on a GPU (fp32 on a CPU), AdamW with linear warmup and
decay, the same learning rates, gradient clipping and epochs. Five contenders (`--contenders` picks some): our loop
in the plain shuffled order (ours), with length-bucketed batches (`length_buckets` 16, ours_bucketed), compiled
(`compile` default, ours_compiled), compiled with CUDA graphs (`compile` reduce-overhead, ours_graphs), and Trainer.
Each first runs `--warmup-steps` steps that are not timed; a compiled loop compiles there, in its first round, and
those seconds are kept (warmup_seconds), since a study's process pays them once. The contenders take turns,
`--repeats` rounds with the order reversed every other round, so that a machine that speeds up or slows down during
the run (seen on a freshly started GPU node) weighs on each alike; each contender's best round counts, and every
round is kept. Printed per batch size: training samples per second of each and the ratios to Trainer, the share of
our loop's time spent waiting for batches, peak GPU memory, and each model's id_val macro-F1 after the same epochs,
so that speed is not bought with quality. Each measurement also appends one JSON line, with the options, the machine
and the date, to <out-dir>/throughput.jsonl.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from darl_utils import pipeline
from darl_utils.compilation import CompileError, failure_reason
from darl_utils.config import RunConfig
from darl_utils.metrics import classification_metrics
from darl_utils.modeling import RelevanceModel, load_backbone
from darl_utils.training import Encoded, predict_logits, seed_everything, train_model


class TrainerModel(torch.nn.Module):
    """RelevanceModel in the shape Trainer expects: labels in, {"loss", "logits"} out."""

    def __init__(self, model: RelevanceModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
        logits = self.model(input_ids, attention_mask, token_type_ids)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def fresh_model(cfg: RunConfig) -> RelevanceModel:
    backbone, _, kind, _ = load_backbone(cfg.backbone)
    seed_everything(cfg.seed)
    return RelevanceModel(backbone, kind, cfg.dropout)


def timed(fn):
    """(what fn returns, its seconds), the GPU's queue drained before and after."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def run_ours(cfg: RunConfig, ctx, train: Encoded, tiny_val: Encoded, warmup: Encoded):
    """(model, seconds, fit record): a fresh model trained on `train` after a warm-up, whose seconds (a compiled
    loop's compilation, in a process's first round) the record keeps apart as warmup_seconds."""
    settings = replace(cfg.train_settings(), progress=False, patience=0)
    model = fresh_model(cfg)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _, warmup_seconds = timed(lambda: train_model(model, warmup, tiny_val, ctx.tokenizer, replace(settings, epochs=1),
                                                  ctx.runtime))
    # the same model from its first weights, copied in place: CUDA graphs were recorded on these parameters'
    # addresses, and a new model would record them again inside the timed run
    model.load_state_dict(initial)
    fit, seconds = timed(lambda: train_model(model, train, tiny_val, ctx.tokenizer, settings, ctx.runtime))
    return model, seconds, {**fit.record, "warmup_seconds": warmup_seconds}


def run_trainer(cfg: RunConfig, ctx, train: Encoded, warmup: Encoded, out_dir: str):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    rows = lambda data: [{**f, "labels": y} for f, y in zip(data.features, data.labels)]  # noqa: E731
    cuda = ctx.runtime.device.type == "cuda"

    def arguments(rows_count: int, **kw):
        steps = -(-rows_count // cfg.batch_size) * kw.get("num_train_epochs", 1)
        warmup = max(1, int(steps * cfg.warmup_ratio))  # as our schedule counts it
        return TrainingArguments(output_dir=out_dir, per_device_train_batch_size=cfg.batch_size,
                                 learning_rate=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=warmup,
                                 max_grad_norm=cfg.max_grad_norm, lr_scheduler_type="linear", bf16=cuda,
                                 use_cpu=not cuda, save_strategy="no", eval_strategy="no", report_to=[],
                                 logging_steps=10_000, seed=cfg.seed, dataloader_num_workers=0,
                                 disable_tqdm=True, **kw)
    collate = DataCollatorWithPadding(ctx.tokenizer)
    model = TrainerModel(fresh_model(cfg))
    Trainer(model=model, args=arguments(len(warmup), num_train_epochs=1), train_dataset=rows(warmup),
            data_collator=collate).train()  # not timed
    model = TrainerModel(fresh_model(cfg))
    trainer = Trainer(model=model, args=arguments(len(train), num_train_epochs=cfg.epochs), train_dataset=rows(train),
                      data_collator=collate)
    _, seconds = timed(trainer.train)
    return model.model, seconds, {}


def id_val_f1(model, ctx, cfg) -> float:
    logits = predict_logits(model, ctx.encoded("id_val"), ctx.tokenizer, cfg.eval_batch_size, ctx.runtime)
    return classification_metrics(ctx.encoded("id_val").labels, logits.argmax(1))["macro_f1"]


BUCKETS = 16  # ours_bucketed: chunks of 16 batches sorted by token count (as docs/measurements.md measured it)
# our loop's variants: the settings each changes (darl_utils/compilation.py for the compiled ones)
OURS = {"ours": {}, "ours_bucketed": {"length_buckets": BUCKETS}, "ours_compiled": {"compile": "default"},
        "ours_graphs": {"compile": "reduce-overhead"}}
CONTENDERS = (*OURS, "trainer")


def measure(cfg: RunConfig, warmup_steps: int, repeats: int, steps: int, out_dir: str,
            contenders: tuple = CONTENDERS) -> dict:
    ctx = pipeline.prepare(cfg)
    train = ctx.encoded("train")
    if steps:
        train = Encoded(train.features[:steps * cfg.batch_size], train.labels[:steps * cfg.batch_size])
    warmup = Encoded(train.features[:warmup_steps * cfg.batch_size], train.labels[:warmup_steps * cfg.batch_size])
    tiny_val = Encoded(ctx.encoded("id_val").features[:cfg.batch_size], ctx.encoded("id_val").labels[:cfg.batch_size])
    runs = {name: (lambda changes=changes: run_ours(replace(cfg, **changes), ctx, train, tiny_val, warmup))
            for name, changes in OURS.items()}
    runs["trainer"] = lambda: run_trainer(cfg, ctx, train, warmup, out_dir)
    line = {"batch": cfg.batch_size, "pairs": len(train), "epochs": cfg.epochs, "device": str(ctx.runtime.device),
            "rounds": []}
    measured, cannot = {name: [] for name in contenders}, {}
    for round_ in range(repeats):
        order = list(contenders) if round_ % 2 == 0 else list(reversed(contenders))
        line["rounds"].append(order)
        for name in [n for n in order if n not in cannot]:
            try:
                measured[name].append(one_measurement(runs[name], len(train) * cfg.epochs, ctx, cfg))
            except Exception as e:  # a loop that cannot compile here: the other contenders are still measured
                if not OURS.get(name, {}).get("compile"):
                    raise
                why = str(e) if isinstance(e, CompileError) else f"{type(e).__name__}: {failure_reason(e)}"
                cannot[name] = line[f"{name}_error"] = why
    measured = {name: rounds for name, rounds in measured.items() if rounds}
    for name, rounds in measured.items():
        best = max(rounds, key=lambda r: r["samples_per_s"])  # speed, F1 and waiting share of the same round
        line.update({f"{name}_{key}": value for key, value in best.items() if key != "peak_gib"})
        line[f"{name}_peak_gib"] = max(r["peak_gib"] for r in rounds) if torch.cuda.is_available() else None
        line[f"{name}_rounds"] = rounds
    if "trainer" in measured:  # ratio (ours), ratio_bucketed, ratio_compiled, ratio_graphs
        for name in [n for n in measured if n in OURS]:
            key = "ratio" + name[len("ours"):]
            line[key] = line[f"{name}_samples_per_s"] / line["trainer_samples_per_s"]
    return line


def one_measurement(run, samples: int, ctx, cfg: RunConfig) -> dict:
    """One contender once: samples per second, peak GPU memory, id_val macro-F1, and (our loop) the share of its
    training time spent waiting for batches. The model is freed after, so that the next one's peak is its own."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model, seconds, record = run()
    result = {"samples_per_s": samples / seconds,
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
              "id_val_macro_f1": id_val_f1(model.to(ctx.runtime.device), ctx, cfg)}
    if record:
        result["data_share"] = record["data_seconds"] / max(record["train_seconds"], 1e-9)
        result["warmup_seconds"] = record["warmup_seconds"]
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def append_line(path: Path, line: dict, device) -> None:
    """One measurement with the machine it ran on and when, as a JSON line (figures are made from these)."""
    env = pipeline.environment(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({**line, "machine": env, "date": time.strftime("%Y-%m-%d %H:%M")}) + "\n")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="")
    parser.add_argument("--dataset", default="homedepot")
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 32])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-train-pairs", type=int, default=0)
    parser.add_argument("--max-eval-pairs", type=int, default=2000)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=0, help="training steps a measurement (0: every train pair)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the contenders")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS,
                        help="which loops are measured (default: all)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out-dir", default="reports/benchmarks/throughput")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 0:
        parser.error("--repeats must be at least 1 and --steps at least 0")
    lines = []
    for batch in args.batch_sizes:
        # head_lr 0: the head at the backbone's rate, as Trainer's one learning rate
        cfg = RunConfig(dataset=args.dataset, data=args.data, backbone=args.backbone, max_length=64, batch_size=batch,
                        head_lr=0.0,
                        epochs=args.epochs, lr=args.lr, max_train_pairs=args.max_train_pairs,
                        max_eval_pairs=args.max_eval_pairs, device=args.device, progress=False,
                        out_dir=args.out_dir).validate()
        line = measure(cfg, args.warmup_steps, args.repeats, args.steps, args.out_dir,
                       tuple(dict.fromkeys(args.contenders)))
        lines.append(line)
        append_line(Path(args.out_dir) / "throughput.jsonl", {**vars(args), **line}, line["device"])
        print(summary(line, args.epochs), flush=True)
    if lines:
        print(pipeline.environment(lines[-1]["device"])["device"])
    return lines


def summary(line: dict, epochs: int) -> str:
    """One line: each contender's samples/s (a compiled one's first warm-up, which holds its compilation), the ratios
    to Trainer, peak GPU memory and id_val macro-F1."""
    names = [n for n in CONTENDERS if f"{n}_samples_per_s" in line]
    speeds = []
    for name in names:
        first_warmup = line[f"{name}_rounds"][0].get("warmup_seconds")
        compiled = name in ("ours_compiled", "ours_graphs") and first_warmup is not None
        speeds.append(f"{name} {line[f'{name}_samples_per_s']:,.0f}"
                      + (f" (first warm-up {first_warmup:.0f} s)" if compiled else ""))
    speeds += [f"{n} not measured: {line[f'{n}_error']}" for n in CONTENDERS if f"{n}_error" in line]
    ratios = [f"{key} {value:.2f}" for key, value in line.items() if key.startswith("ratio")]
    waiting = f"; ours waits for batches {line['ours_data_share']:.0%} of its time" if "ours" in names else ""
    peak = "" if not names or line[f"{names[0]}_peak_gib"] is None else \
        "; peak GPU memory " + ", ".join(f"{n} {line[f'{n}_peak_gib']:.2f} GiB" for n in names)
    f1 = ", ".join(f"{n} {line[f'{n}_id_val_macro_f1']:.3f}" for n in names)
    return (f"batch {line['batch']}, {line['pairs']:,} train pairs x {epochs} epoch(s), best of {len(line['rounds'])} "
            f"round(s), samples/s: {', '.join(speeds)}; {', '.join(ratios)}{waiting}{peak}; id_val macro-F1 {f1}")


if __name__ == "__main__":
    main()
