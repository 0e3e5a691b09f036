"""One training loop for the CPU (fp32), one CUDA GPU (bf16 autocast) and several GPUs (DDP).

Several processes are started by `torchrun` or `accelerate launch`, which set RANK / WORLD_SIZE / LOCAL_RANK;
the loop then shards the training data with a DistributedSampler and averages gradients with DDP (NCCL on GPUs,
gloo on CPUs). `batch_size` is per process. Every process evaluates id_val in full with the same weights, and all
take process 0's score (a broadcast), so they make one early-stopping decision.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm  # plain bars: batch runs and papermill logs read them as text

from . import distributed
from .compilation import CompileError, check_compiler, compiled, pad_multiple, step_begins
from .metrics import classification_metrics
from .modeling import Collator


@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def precision(self) -> str:
        """What cached features depend on besides the weights: the device type and the autocast dtype."""
        return "cuda-bfloat16" if self.device.type == "cuda" else f"{self.device.type}-float32"

    @property
    def autocast(self):
        # bf16 only inside autocast on CUDA; master weights and optimizer state stay float32.
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")


def setup_runtime(device: str = "auto") -> Runtime:
    """Join the process group when launched by torchrun / accelerate, and pick this process's device."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: {device!r} must be auto, cpu or cuda")
    target = torch.device(distributed.device_of(device))
    if device == "cuda" and target.type != "cuda":
        raise RuntimeError("device: 'cuda' asked for, but torch sees no CUDA GPU")
    distributed.join(target.type == "cuda")
    if target.type == "cuda":
        torch.cuda.set_device(target)
    return Runtime(distributed.rank(), distributed.world_size(), target)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Encoded(torch.utils.data.Dataset):
    """Tokenised pairs (unpadded) with their labels."""

    def __init__(self, features: list[dict], labels=None):
        self.features, self.labels = features, None if labels is None else [int(x) for x in labels]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.features[i])
        if self.labels is not None:
            item["label"] = self.labels[i]
        return item


FLUSH_EVERY = 32  # prediction batches per copy to the host: one wait for the GPU per 32 batches, bounded memory


class HostChunks:
    """A prediction's outputs, left on the device and copied to the host FLUSH_EVERY batches at a time. A copy per
    batch would make the host wait for the GPU each batch, instead of collating the next batch meanwhile; the
    values are the same."""

    def __init__(self):
        self.pending, self.copied = [], []

    def add(self, values: torch.Tensor) -> None:
        self.pending.append(values)
        if len(self.pending) >= FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.copied.append(torch.cat(self.pending).cpu())
            self.pending = []

    def on_host(self) -> list[torch.Tensor]:
        """Every chunk, on the host, in the order added."""
        self._flush()
        return self.copied


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def length_sorted_batches(data: Encoded, batch_size: int) -> list[np.ndarray]:
    """The one order in which every prediction visits `data`: batches of similar length (less padding). The head
    on cached features (head_logits) batches alike, so its logits equal a full pass's bit for bit (a matrix
    product may round differently for another batch shape)."""
    order = np.argsort([len(f["input_ids"]) for f in data.features], kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _in_data_order(chunks: list[torch.Tensor], batches: list[np.ndarray]) -> np.ndarray:
    result = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
    unsorted = np.empty_like(result)
    unsorted[np.concatenate(batches) if batches else []] = result
    return unsorted


@torch.no_grad()
def predict_logits(model, data: Encoded, tokenizer, batch_size: int, runtime: Runtime,
                   progress: bool = False, what: str = "logits") -> np.ndarray:
    """Logits (or pooled features with what='features') in the order of `data`; length-sorted batches."""
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    batches, collate, out = length_sorted_batches(data, batch_size), Collator(tokenizer), HostChunks()
    for indices in tqdm(batches, disable=not progress, desc=f"predict {what}"):
        batch = _to(collate([{k: v for k, v in data[i].items() if k != "label"} for i in indices]), runtime.device)
        with runtime.autocast:
            fn = model.features if what == "features" else model
            out.add(fn(**batch).float())
    model.train(was_training)
    return _in_data_order(out.on_host(), batches)


@torch.no_grad()
def head_logits(head: torch.nn.Module, features: np.ndarray, data: Encoded, batch_size: int,
                runtime: Runtime) -> np.ndarray:
    """The head alone on `data`'s cached pooled features (float32, as the model runs it): the logits of the
    whole model without a backbone pass, equal to predict_logits's when the features are this model's."""
    was_training = head.training
    head.eval().to(runtime.device)
    batches = length_sorted_batches(data, batch_size)
    out = HostChunks()
    for indices in batches:
        out.add(head(torch.from_numpy(features[indices]).to(runtime.device)).float())
    head.train(was_training)
    return _in_data_order(out.on_host(), batches)


class BestKeeper:
    """Early stopping on id_val: keeps a copy of the best weights (and their id_val logits, when given); stops
    after `patience` epochs without gain (0 = never stops early)."""

    def __init__(self, patience: int):
        self.patience, self.best, self.state, self.waited, self.logits = patience, -math.inf, None, 0, None
        self.epoch, self.seen = -1, 0  # the kept epoch (0-based), and how many were scored

    def stop_after(self, score: float, module: torch.nn.Module, logits: np.ndarray | None = None) -> bool:
        self.seen += 1
        if score > self.best:
            self.best, self.waited, self.logits, self.epoch = score, 0, logits, self.seen - 1
            self.state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            return False
        self.waited += 1
        return bool(self.patience) and self.waited >= self.patience

    def restore(self, module: torch.nn.Module) -> None:
        module.load_state_dict(self.state)


class Fit(NamedTuple):
    """What train_model returns."""
    record: dict  # JSON: per epoch the mean loss and id_val macro-F1, the best of those, steps per epoch, seconds
    id_val_logits: np.ndarray  # of the kept weights: the evaluation reuses them instead of a second pass


@dataclass
class TrainSettings:
    epochs: int = 2
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 5e-5
    head_lr: float = 0.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    patience: int = 1
    seed: int = 0
    length_buckets: int = 0
    compile: str = "off"
    progress: bool = True


class LengthBucketSampler(DistributedSampler):
    """This process's shard in shuffled order, then re-ordered so that each batch holds pairs of similar length
    (less padding): chunks of `buckets` batches are sorted by length, cut into batches, and the batches shuffled.
    buckets = 0 keeps the plain shuffled order."""

    def __init__(self, data, lengths, batch_size: int, buckets: int, world: int, rank: int, seed: int):
        super().__init__(data, world, rank, shuffle=True, seed=seed)
        self.lengths, self.batch_size, self.buckets = np.asarray(lengths), batch_size, buckets

    def __iter__(self):
        order = np.fromiter(super().__iter__(), dtype=np.int64)
        if not self.buckets:
            return iter(order.tolist())
        chunk = self.batch_size * self.buckets
        rng = np.random.default_rng((self.seed, self.epoch))
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        return iter(np.concatenate([batches[i] for i in rng.permutation(len(batches))]).tolist())


def parameter_groups(model, settings: "TrainSettings") -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; the fresh head may take a larger learning rate."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = name.startswith("head.")
        key = (head, p.ndim >= 2)
        groups.setdefault(key, {"params": [], "weight_decay": settings.weight_decay if p.ndim >= 2 else 0.0,
                                "lr": (settings.head_lr or settings.lr) if head else settings.lr})
        groups[key]["params"].append(p)
    return list(groups.values())


def linear_schedule(optimizer, total_steps: int, warmup_ratio: float):
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _oom_message(e: Exception, settings: TrainSettings, runtime: Runtime) -> str:
    return (f"out of memory on {runtime.device} at batch size {settings.batch_size}: lower batch_size or "
            f"max_length ({str(e).splitlines()[0]})")


def waited_for(loader, clock: dict):
    """The loader's batches, adding the time spent waiting for each to clock["data"]: where that is a large share
    of the training time, the loop is starved by collation, not bound by the device."""
    batches = iter(loader)
    while True:
        started = time.perf_counter()
        batch = next(batches, None)
        clock["data"] += time.perf_counter() - started
        if batch is None:
            return
        yield batch


SYNC_EVERY = 50  # steps between reads of the loss on the host (finiteness check, progress bar)


def _check_finite(mean_loss: torch.Tensor, epoch: int, settings: "TrainSettings", bar) -> float:
    """The loss read back once per SYNC_EVERY steps and per epoch: a NaN or inf stops the run with advice. A
    mean is finite only when every loss in it was."""
    value = float(mean_loss)
    if not math.isfinite(value):
        raise RuntimeError(f"loss became {value} at epoch {epoch}; lower lr ({settings.lr})")
    bar.set_postfix(loss=f"{value:.3f}")
    return value


def train_model(model, train: Encoded, val: Encoded, tokenizer, settings: TrainSettings, runtime: Runtime,
                loss_fn=None) -> Fit:
    """Fine-tune every trainable parameter; keep the weights of the best id_val macro-F1."""
    if settings.compile != "off" and runtime.world > 1:
        raise CompileError(f"compile: {settings.compile!r} with {runtime.world} processes is untested here; use "
                           "compile: off under torchrun")
    check_compiler(settings.compile, str(runtime.device))  # a machine that cannot compile fails here, in seconds
    loss_fn = (loss_fn or torch.nn.CrossEntropyLoss()).to(runtime.device)  # its constants move once, not per step
    seed_everything(settings.seed)
    model.to(runtime.device)
    wrapped = model
    if runtime.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    step_model = compiled(wrapped, settings.compile)  # the same parameters; predictions stay eager
    lengths = [len(f["input_ids"]) for f in train.features]
    sampler = LengthBucketSampler(train, lengths, settings.batch_size, settings.length_buckets, runtime.world,
                                  runtime.rank, settings.seed)
    loader = DataLoader(train, batch_size=settings.batch_size, sampler=sampler,
                        collate_fn=Collator(tokenizer, pad_multiple(settings.compile)),
                        pin_memory=runtime.device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    # fused on CUDA; elsewhere foreach, the same numbers as the per-tensor loop a tenth faster (2-core CPU, MiniLM)
    cuda = runtime.device.type == "cuda"
    optimizer = torch.optim.AdamW(parameter_groups(model, settings), lr=settings.lr, fused=cuda or None,
                                  foreach=not cuda)
    total = settings.epochs * len(loader)
    scheduler = linear_schedule(optimizer, total, settings.warmup_ratio)
    history, keeper = [], BestKeeper(settings.patience)
    clock = {"train": 0.0, "data": 0.0}  # seconds in the training steps, and the part spent waiting for batches
    bar = tqdm(total=total, disable=not (settings.progress and runtime.main), desc="train")
    for epoch in range(settings.epochs):
        sampler.set_epoch(epoch)
        wrapped.train()
        # the loss stays on the device: reading it every step would make the GPU wait for Python
        total_loss, window, steps = torch.zeros((), device=runtime.device), [], 0
        epoch_started = time.perf_counter()
        for batch in waited_for(loader, clock):
            batch = _to(batch, runtime.device)
            labels = batch.pop("labels")
            step_begins(settings.compile)
            try:
                with runtime.autocast:
                    logits = step_model(**batch)
                loss = loss_fn(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            except torch.OutOfMemoryError as e:
                raise RuntimeError(_oom_message(e, settings, runtime)) from None
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            total_loss += loss.detach()
            window.append(loss.detach())
            steps += 1
            bar.update(1)
            if steps % SYNC_EVERY == 0:
                _check_finite(torch.stack(window).mean(), epoch, settings, bar)
                window = []
        mean_loss = _check_finite(total_loss / max(steps, 1), epoch, settings, bar)
        clock["train"] += time.perf_counter() - epoch_started  # after the loss's read-back: the steps are done
        val_logits = predict_logits(model, val, tokenizer, settings.eval_batch_size, runtime)
        # process 0's score for all: one early-stopping decision
        val_f1 = distributed.broadcast(classification_metrics(val.labels, val_logits.argmax(1))["macro_f1"])
        history.append({"epoch": epoch, "train_loss": mean_loss, "id_val_macro_f1": val_f1})
        if keeper.stop_after(val_f1, model, val_logits):
            break
    bar.close()
    keeper.restore(model)
    return Fit({"history": history, "best_id_val_macro_f1": keeper.best, "steps_per_epoch": len(loader),
                "compile": settings.compile, "train_seconds": round(clock["train"], 2),
                "data_seconds": round(clock["data"], 2)},
               keeper.logits)


@dataclass
class ProbeSettings:
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 10
    seed: int = 0
    select: str = "loss"  # the epoch kept: lowest id_val cross-entropy, or best id_val macro_f1


PROBE_SELECTIONS = ("macro_f1", "loss")


def train_probe(head: torch.nn.Module, train_x: np.ndarray, train_y, val_x: np.ndarray, val_y,
                settings: ProbeSettings, loss_fn=None, device: str | torch.device = "cpu") -> dict:
    """LP: train only the head on cached backbone features; keep the epoch with the best id_val macro-F1, or with
    the lowest id_val cross-entropy (settings.select). Seconds, not minutes: no backbone pass at all."""
    if settings.select not in PROBE_SELECTIONS:
        raise ValueError(f"probe selection {settings.select!r}: expected one of {PROBE_SELECTIONS}")
    loss_fn = (loss_fn or torch.nn.CrossEntropyLoss()).to(device)
    started = time.perf_counter()
    seed_everything(settings.seed)
    head.to(device)
    x, y = torch.as_tensor(train_x, device=device), torch.as_tensor(np.asarray(train_y), device=device)
    vx, vy = torch.as_tensor(val_x, device=device), torch.as_tensor(np.asarray(val_y), device=device)
    cuda = torch.device(device).type == "cuda"  # fused there: one kernel a step for the head's four tensors
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                  fused=cuda or None)
    generator = torch.Generator().manual_seed(settings.seed)
    history, keeper = [], BestKeeper(settings.patience)
    for epoch in range(settings.epochs):
        head.train()
        losses = []
        # the epoch's order copied to the device once: a copy per minibatch from pageable memory waits for the GPU
        for idx in torch.randperm(len(x), generator=generator).to(device).split(settings.batch_size):
            loss = loss_fn(head(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())  # read back once per epoch, not per minibatch
        head.eval()
        with torch.no_grad():
            val_logits = head(vx).float()
            val_loss = float(torch.nn.functional.cross_entropy(val_logits, vy))  # plain CE: the probe's fit
        val_f1 = classification_metrics(val_y, val_logits.argmax(1).cpu().numpy())["macro_f1"]
        history.append({"epoch": epoch, "train_loss": float(torch.stack(losses).mean()), "id_val_macro_f1": val_f1,
                        "id_val_loss": val_loss})
        if keeper.stop_after(val_f1 if settings.select == "macro_f1" else -val_loss, head):
            break
    if keeper.state is None:  # every epoch's id_val loss was NaN: the probe diverged
        raise ValueError(f"LP: the probe's id_val loss was not finite in any of {len(history)} epochs; "
                         f"lower lp_lr (now {settings.lr:g})")
    keeper.restore(head)
    head.cpu()
    kept = history[keeper.epoch]
    return {"history": history, "select": settings.select, "kept_epoch": keeper.epoch,
            "best_id_val_macro_f1": kept["id_val_macro_f1"], "best_id_val_loss": kept["id_val_loss"],
            "epochs_run": len(history), "seconds": round(time.perf_counter() - started, 2)}


def parameter_checksum(model) -> float:
    """A number that differs when any weight differs (used to prove DDP kept processes in step)."""
    return float(sum(p.detach().double().sum().item() * (i + 1) for i, p in enumerate(model.parameters())))
