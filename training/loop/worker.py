"""The function every Ray Train worker runs: train, validate, report, checkpoint, resume."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field

import ray
import ray.train
import ray.train.torch
import torch

from training.config import TrainConfig
from training.loop.batches import count_tokens, make_batch
from training.loop.checkpoint import Progress, load_checkpoint, save_checkpoint
from training.loop.distributed import all_reduce_sum, unwrap
from training.loop.model import build_model
from training.loop.sampler import batch_indices
from training.loop.schedule import make_scheduler
from training.loop.validate import validation_metrics


@dataclass
class Window:
    """Loss and throughput accumulated since the last report.

    Throughput is wall time since the previous report returned, so the cost of reporting
    and gradient sync is counted; only validation passes are left out.
    """

    loss_sum: float = 0.0
    steps: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)


@dataclass
class WorkerState:
    """What one worker holds for the whole run."""

    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    tokenizer: object
    train: dict
    valid: dict
    progress: Progress
    use_bf16: bool

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)


def _wants_bf16(precision: str, device: torch.device) -> bool:
    if precision == "bf16":
        return True
    return precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def _setup(loop_config: dict) -> WorkerState:
    config = TrainConfig.model_validate(loop_config["config"])
    torch.set_num_threads(config.scaling.torch_threads or config.scaling.cpus_per_worker)
    ctx = ray.train.get_context()
    payload = ray.get(loop_config["data_ref"])
    device = ray.train.torch.get_device()
    model = build_model(config, payload["tokenizer"], config.run.seed)
    model = ray.train.torch.prepare_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = config.optim
    optimizer = torch.optim.AdamW(
        params, lr=opt.lr, weight_decay=opt.weight_decay, betas=(0.9, 0.95)
    )
    scheduler = make_scheduler(optimizer, opt)
    progress = Progress()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            progress = load_checkpoint(d, unwrap(model), optimizer, scheduler)
    return WorkerState(
        config,
        ctx.get_world_rank(),
        ctx.get_world_size(),
        device,
        model,
        optimizer,
        scheduler,
        payload["tokenizer"],
        payload["train"],
        payload["valid"],
        progress,
        _wants_bf16(config.scaling.precision, device),
    )


def _train_step(s: WorkerState) -> tuple[float, int]:
    """One optimiser step over ``grad_accum_steps`` micro-batches; returns (loss, tokens)."""
    opt, n = s.config.optim, len(s.train["input_ids"])
    loss_total, tokens = 0.0, 0
    for micro in range(opt.grad_accum_steps):
        idx = batch_indices(
            n,
            s.config.run.seed,
            s.progress.step,
            micro,
            s.rank,
            s.world,
            opt.micro_batch_size,
            opt.grad_accum_steps,
        )
        batch = make_batch(s.train, idx, s.device)
        last = micro == opt.grad_accum_steps - 1
        no_sync = getattr(s.model, "no_sync", None)
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            with s.autocast():
                loss = s.model(**batch).loss / opt.grad_accum_steps
            loss.backward()
        loss_total += float(loss.detach())
        tokens += count_tokens(batch)
    if opt.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), opt.grad_clip)
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return loss_total, tokens


def _maybe_inject_failure(s: WorkerState, marker: str) -> None:
    """Testing aid: rank 0 dies once at ``debug.fail_at_step`` (a marker file makes it once)."""
    if s.rank != 0 or s.config.debug.fail_at_step != s.progress.step or os.path.exists(marker):
        return
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    open(marker, "w").close()
    print(f"injecting a worker failure at step {s.progress.step}", flush=True)
    os._exit(1)


def _window_metrics(s: WorkerState, w: Window, now: float) -> dict:
    seconds = now - w.started
    loss_sum, steps, tokens = all_reduce_sum(
        [w.loss_sum, float(w.steps), float(w.tokens)], s.device
    )
    return {
        "step": s.progress.step,
        "loss": loss_sum / max(steps, 1),
        "lr": s.scheduler.get_last_lr()[0],
        "tokens_per_s": tokens / max(seconds, 1e-9),
        "tokens_seen": s.progress.tokens_seen,
        "world_size": s.world,
    }


def _report(s: WorkerState, metrics: dict, with_checkpoint: bool) -> None:
    """All ranks report (it is a barrier); rank 0 alone attaches the checkpoint."""
    if not (with_checkpoint and s.rank == 0):
        ray.train.report(metrics)
        return
    meta = {"kind": s.config.kind, "run": s.config.run.name, "loss": metrics["loss"]}
    if s.config.finetune:
        meta.update(
            method=s.config.finetune.method,
            base_model=s.config.finetune.base_model,
            lora=s.config.finetune.lora.model_dump(),
        )
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(
            tmp,
            unwrap(s.model),
            s.optimizer,
            s.scheduler,
            s.progress,
            s.tokenizer,
            {**meta, "val_loss": metrics.get("val_loss")},
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _after_step(s: WorkerState, w: Window) -> Window:
    """Reports when due; the next window starts before this report so its cost is counted."""
    ev, step, last = s.config.eval, s.progress.step, s.progress.step == s.config.optim.max_steps
    checkpoint_due = last or step % s.config.checkpoint.every_steps == 0
    eval_due = checkpoint_due or step % ev.every_steps == 0
    if not (eval_due or step % ev.log_every_steps == 0):
        return w
    began = time.perf_counter()
    metrics = _window_metrics(s, w, began)
    if eval_due:
        metrics.update(
            validation_metrics(
                unwrap(s.model),
                s.valid,
                s.rank,
                s.world,
                s.config.optim.micro_batch_size,
                ev.max_batches,
                s.autocast,
                s.device,
            )
        )
    eval_seconds = time.perf_counter() - began
    _report(s, metrics, checkpoint_due)
    return Window(started=began + eval_seconds)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point; resumes from ``ray.train.get_checkpoint()`` when there is one."""
    s = _setup(loop_config)
    s.model.train()
    w = Window()
    while s.progress.step < s.config.optim.max_steps:
        _maybe_inject_failure(s, loop_config["failure_marker"])
        loss, tokens = _train_step(s)
        w.loss_sum, w.steps, w.tokens = w.loss_sum + loss, w.steps + 1, w.tokens + tokens
        s.progress.step += 1
        s.progress.tokens_seen += tokens * s.world
        w = _after_step(s, w)
