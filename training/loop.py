"""The one training loop (Accelerate). It runs any `training.stages.Stage` and knows nothing stage-specific.

    train(stage, args)

reads top to bottom: `set_up` (the Accelerator's run folder, data, model, optimiser groups, schedule, loss
normalisers, Accelerate's `prepare`, resume) -> `train_steps` (per micro-batch: the stage's losses, RMS
normalisation, backward; per optimiser step: clipping, the non-finite guard, the step; then the periodic
hooks: log, evaluate, checkpoint) -> `finish` (last checkpoint, final evaluation, `final/` and its card).
Everything a run shares lives in one `Run` object. See docs/training.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modeling_dreamer.errors import RunError
from training.arguments import DreamerTrainingArguments, RunArguments
from training.checkpointing import (
    RMS_STATE_FILE,
    RunLock,
    TrainerState,
    check_resume,
    check_resume_data,
    find_unreadable_file,
    finalize_checkpoint,
    prepare_output_dir,
    prune_checkpoints,
    resolve_checkpoint,
)
from training.data import RunData
from training.optim import build_param_groups, build_scheduler, choose_mixed_precision
from training.reporting import MetricsLog, push_with_model_card, write_model_card
from training.stages.base import Stage, StepLosses
from training.weight_average import WEIGHT_AVERAGE_FILE, WeightAverage


@dataclass
class Run:
    """What the pieces of one run share: built by `set_up`, advanced by `train_steps`, closed by `finish`."""

    stage: Stage
    args: RunArguments
    accelerator: Any
    mixed_precision: str
    output_dir: Path
    data: RunData
    model: torch.nn.Module  # prepared (possibly wrapped for DDP / FSDP)
    unwrapped: torch.nn.Module
    optimizer: Any
    scheduler: Any
    train_loader: Any
    eval_loader: Any
    normalizer: Any  # training.objectives.LossNormalizer
    clip_groups: dict[str, list[torch.nn.Parameter]]
    average: WeightAverage | None
    state: TrainerState
    total_steps: int
    setup: dict[str, Any]
    metrics_log: MetricsLog
    trackers: bool
    started: float = field(default_factory=time.time)
    micro: int = 0  # micro-batches of the current optimiser step so far
    window: "LogWindow" = field(default_factory=lambda: LogWindow())
    guard: "StepGuard | None" = None
    progress: Any = None

    @property
    def training(self) -> DreamerTrainingArguments:
        return self.args.training

    @property
    def done(self) -> bool:
        return self.state.global_step >= self.total_steps

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over processes (itself with one process)."""
        return self.accelerator.reduce(tensor, reduction="sum") if self.accelerator.num_processes > 1 else tensor

    def log(self, record: dict[str, Any]) -> None:
        self.metrics_log.write(record)
        if self.trackers:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                                 step=self.state.global_step)


def train(stage: Stage, args: RunArguments) -> dict[str, float]:
    """Run `stage` as `args` say; returns the final held-out metrics (empty without validation data)."""
    accelerator, mixed_precision = make_accelerator(args.training)
    lock = RunLock(Path(args.training.output_dir))
    try:
        run = set_up(stage, args, accelerator, mixed_precision, lock)
        train_steps(run)
        return finish(run)
    finally:
        lock.release()


# ------------------------------------------------------------------------------------------------
# Set-up
# ------------------------------------------------------------------------------------------------


def set_up(stage: Stage, args: RunArguments, accelerator: Any, mixed_precision: str, lock: RunLock) -> Run:
    """Everything before the first step: run folder, data, model and optimisation, `prepare`, resume, logging."""
    from accelerate.utils import set_seed

    from training.objectives import LossNormalizer

    t = args.training
    checkpoint = open_run_folder(stage, args, accelerator, lock)
    saved = TrainerState.load(checkpoint) if checkpoint else None
    set_seed(t.seed)
    data = stage.load_data(args, accelerator.num_processes)
    stage.bind_data(data)
    if saved is not None:
        check_resume_data(saved, checkpoint, data.description)

    model, origin = stage.build_model(data.schema)
    stage.configure_trainable(model)
    if args.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    param_groups = build_param_groups(model, t.learning_rate, t.weight_decay, stage.lr_scales())
    optimizer = torch.optim.AdamW(param_groups, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon)
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * data.steps_per_epoch(t))
    scheduler = build_scheduler(optimizer, t.lr_scheduler_type, t.warmup_steps, total_steps, t.scheduler_kwargs())
    normalizer = LossNormalizer([n for n in stage.loss_terms if n not in stage.unnormalized_terms], decay=t.rms_decay)
    register_state_file(accelerator, normalizer, RMS_STATE_FILE)

    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, data.train_loader, scheduler)
    eval_loader = accelerator.prepare(data.eval_loader) if data.eval_loader is not None else None
    normalizer.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(model)
    stage.bind_processes(lambda x: accelerator.reduce(x, reduction="sum") if accelerator.num_processes > 1 else x,
                         accelerator.num_processes)
    state = TrainerState(stage=stage.name, world_size=accelerator.num_processes, global_batch_size=global_batch(t, accelerator),
                         dataset=data.description, arguments=args.as_dict())
    run = Run(stage, args, accelerator, mixed_precision, Path(t.output_dir), data, model, unwrapped, optimizer,
              scheduler, train_loader, eval_loader, normalizer, clip_groups(unwrapped, stage.clip_groups()),
              weight_average(unwrapped, t, total_steps, accelerator), state, total_steps, {},
              MetricsLog(Path(t.output_dir) / "metrics.jsonl", accelerator.is_main_process), t.report_to != "none")
    run.guard = StepGuard(normalizer)
    if checkpoint is not None:
        resume(run, checkpoint, saved)
    data.sampler.resume_at(state.epoch, state.draws_in_epoch)
    start_logging(run, param_groups, origin, checkpoint)
    return run


def open_run_folder(stage: Stage, args: RunArguments, accelerator: Any, lock: RunLock) -> Path | None:
    """Lock the run folder, find the checkpoint to resume from and check it against this run (the main process
    decides, every process follows): the checkpoint, or None for a new run."""
    from accelerate.utils import broadcast_object_list

    t = args.training
    output_dir = Path(t.output_dir)
    verdict: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            checkpoint = resolve_checkpoint(output_dir, t.resume_from_checkpoint)
            prepare_output_dir(output_dir, checkpoint, t.overwrite_output_dir)
            if checkpoint is not None:
                check_resume(TrainerState.load(checkpoint), checkpoint, stage.name, args.as_dict())
            verdict = [str(checkpoint) if checkpoint else None]
        except (RunError, OSError) as error:
            verdict = [RunError(str(error))]
    broadcast_object_list(verdict)  # every process stops, or continues from the same checkpoint
    if isinstance(verdict[0], Exception):
        raise verdict[0]
    return Path(verdict[0]) if verdict[0] else None


def weight_average(model: torch.nn.Module, t: DreamerTrainingArguments, total_steps: int,
                   accelerator: Any) -> WeightAverage | None:
    """The running average of the trainable weights (`weight_average_start`), registered for checkpoints."""
    if t.weight_average_start is None:
        return None
    try:
        average = WeightAverage(model, start_step=math.floor(t.weight_average_start * total_steps) + 1)
    except ValueError as error:
        raise RunError(f"weight_average_start: {error}") from None
    register_state_file(accelerator, average, WEIGHT_AVERAGE_FILE)
    return average


def resume(run: Run, checkpoint: Path, saved: TrainerState) -> None:
    """Load the checkpoint's Accelerate state (with our state files) and continue its step and data position."""
    load_checkpoint(run.accelerator, checkpoint)
    state = run.state
    state.global_step, state.epoch, state.skipped_steps = saved.global_step, saved.epoch, saved.skipped_steps
    state.draws_in_epoch = saved.draws_in_epoch
    run.accelerator.print(f"Resumed from {checkpoint} at step {state.global_step} (epoch {state.epoch}, draw "
                          f"{state.draws_in_epoch}); global batch {state.global_batch_size} (was {saved.global_batch_size})")


def start_logging(run: Run, param_groups: list[dict], origin: dict[str, Any], checkpoint: Path | None) -> None:
    """The setup line of metrics.jsonl (what ran where, with how many parameters), trackers, the progress bar."""
    from tqdm.auto import tqdm

    accelerator, t, unwrapped = run.accelerator, run.training, run.unwrapped
    run.setup = {
        "setup": True, "stage": run.stage.name, "world_size": accelerator.num_processes,
        "device": str(accelerator.device), "device_type": accelerator.device.type,
        "mixed_precision": run.mixed_precision, "global_batch_size": run.state.global_batch_size,
        "window_length": run.args.data.window_length, "total_steps": run.total_steps,
        "train_windows": run.data.num_windows, "relevant_windows": run.data.num_relevant,
        "parameters": {"total": sum(p.numel() for p in unwrapped.parameters()),
                       **{g["name"]: sum(p.numel() for p in g["params"]) for g in param_groups}},
        "learning_rates": {g["name"]: g["initial_lr"] for g in param_groups}, "origin": origin,
        "resumed_from": str(checkpoint) if checkpoint else None, "torch_compile": t.torch_compile,
        "time_context_length": getattr(unwrapped.config, "time_context_length", None),
    }
    run.metrics_log.start(resumed_at_step=run.state.global_step if checkpoint else None)
    run.metrics_log.write(run.setup)
    if run.trackers:
        accelerator.init_trackers("dreamer", config={k: v for k, v in run.args.as_dict().items()
                                                     if isinstance(v, (int, float, str, bool))})
    run.progress = tqdm(total=run.total_steps, initial=run.state.global_step, disable=not accelerator.is_main_process,
                        desc=run.stage.name, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------


def train_steps(run: Run) -> None:
    """Micro-batches from the sampler, epoch after epoch, until `total_steps` optimiser steps are done."""
    run.model.train()
    while not run.done:
        for batch in epoch_batches(run):
            if micro_batch(run, batch):
                after_optimizer_step(run)
            if run.done:
                break
    run.progress.close()


def epoch_batches(run: Run) -> Iterator[dict[str, Any]]:
    """The batches of the current sampler epoch; the epoch counter moves on once they are all drawn."""
    run.train_loader.set_epoch(run.state.epoch)
    for batch in run.train_loader:
        run.state.draws_in_epoch += run.training.per_device_train_batch_size * run.accelerator.num_processes
        yield batch
    run.state.epoch += 1
    run.state.draws_in_epoch = 0


def micro_batch(run: Run, batch: dict[str, Any]) -> bool:
    """Losses and backward of one micro-batch; True when it completed an optimiser step."""
    accelerator = run.accelerator
    if run.micro == 0:
        run.guard.begin()
    generator = step_generator(run.training.seed, run.state.global_step, run.micro, accelerator.process_index,
                               accelerator.device)
    with accelerator.accumulate(run.model):
        result = stage_losses(run, batch, generator)
        total, logs = run.normalizer.combine(result.losses, result.counts, run.stage.loss_weights(), run.reduce_sum)
        run.guard.watch(total)
        backward(run, total)
        run.window.add(result.logs)
        run.window.add(logs)
        run.micro += 1
        if not accelerator.sync_gradients:
            return False
        optimizer_step(run)
    return True


def stage_losses(run: Run, batch: dict[str, Any], generator: torch.Generator) -> StepLosses:
    """The stage's raw loss terms of one micro-batch (tests replace this to inject faults)."""
    return run.stage.compute_losses(run.model, batch, generator, run.unwrapped)


def backward(run: Run, total: torch.Tensor) -> None:
    """Back-propagate the micro-batch's loss (tests replace this to inject faults)."""
    run.accelerator.backward(total)


def optimizer_step(run: Run) -> None:
    """Clip, then step the optimiser unless a loss or the gradients were not finite on some process (the
    step's one host synchronisation); a dropped step also restores the normalisers."""
    grad_norm = clip_gradients(run.accelerator, run.clip_groups, run.training.max_grad_norm or math.inf, run.window)
    if run.guard.finite(grad_norm, run.accelerator):
        run.optimizer.step()
    else:
        run.guard.drop()
        run.state.skipped_steps += 1
    run.optimizer.zero_grad(set_to_none=True)


def after_optimizer_step(run: Run) -> None:
    """Schedule, weight average and counters, then the periodic hooks: log, evaluate, checkpoint."""
    t, state = run.training, run.state
    run.scheduler.step()
    state.global_step += 1
    if run.average is not None:
        run.average.update(state.global_step)
    run.micro = 0
    run.progress.update(1)
    if state.global_step == 1:
        run.log({"step": 1, "first_step_s": round(time.time() - run.started, 2)})  # includes compilation
    if state.global_step % t.logging_steps == 0 or run.done:
        log_step(run)
    if t.eval_steps > 0 and state.global_step % t.eval_steps == 0 and not run.done:
        run.log({"step": state.global_step, **evaluate(run)})
    if t.save_steps > 0 and state.global_step % t.save_steps == 0:
        save_checkpoint(run)


def log_step(run: Run) -> None:
    """One metrics.jsonl record: the averages of the logging window, learning rates, timing."""
    state = run.state
    record = {"step": state.global_step, "epoch": state.epoch, "skipped_steps": state.skipped_steps,
              "elapsed_s": round(time.time() - run.started, 2), **run.window.flush()}
    record.update({f"lr/{g['name']}": g["lr"] for g in run.optimizer.param_groups})
    run.log(record)
    run.progress.set_postfix({k.split("/")[-1]: f"{record[k]:.3g}" for k in record if k.startswith("loss/")})


def evaluate(run: Run, save_predictions: bool = False) -> dict[str, float]:
    """The stage's held-out metrics (`eval/...`), with the weight average swapped in where there is one."""
    if run.eval_loader is None:
        return {}
    run.model.eval()
    averaged = run.average.swapped_in() if run.average is not None else contextlib.nullcontext()
    with averaged:
        result = run.stage.evaluate(run.model, run.eval_loader, run.accelerator, seed=run.training.seed)
    run.model.train()
    if save_predictions and run.accelerator.is_main_process:
        np.savez_compressed(run.output_dir / "eval_predictions.npz",
                            **{k.replace("/", "__"): v for k, v in result.arrays.items()})
    return {f"eval/{k}": v for k, v in result.metrics.items()}


def save_checkpoint(run: Run) -> None:
    """`checkpoint-<step>/`, written aside and renamed when complete; old ones pruned (`save_total_limit`)."""
    accelerator, step = run.accelerator, run.state.global_step
    tmp, final = run.output_dir / f"checkpoint-{step}.tmp", run.output_dir / f"checkpoint-{step}"
    accelerator.save_state(str(tmp))  # the state hooks add rms_state.safetensors (and the weight average)
    accelerator.wait_for_everyone()  # every process has written its RNG state before the rename
    if accelerator.is_main_process:
        run.state.save(tmp)
        finalize_checkpoint(tmp, final)
        prune_checkpoints(run.output_dir, run.training.save_total_limit)
    accelerator.wait_for_everyone()


# ------------------------------------------------------------------------------------------------
# Finish
# ------------------------------------------------------------------------------------------------


def finish(run: Run) -> dict[str, float]:
    """Last checkpoint, final evaluation, `final/` (checked finite) with its model card; returns the metrics."""
    t = run.training
    if t.save_steps >= 0 and not (run.output_dir / f"checkpoint-{run.state.global_step}").exists():
        save_checkpoint(run)
    if run.average is not None:
        run.average.copy_to_model()  # the checkpoint keeps the live weights; the final model is the average
    final_metrics = evaluate(run, save_predictions=True)
    if final_metrics:
        run.log({"step": run.state.global_step, "final": True, **final_metrics})
    save_final_model(run)
    if run.accelerator.is_main_process:
        run.setup.update(steps=run.state.global_step, skipped_steps=run.state.skipped_steps)
        write_model_card(run.output_dir / "final", run.unwrapped.config, run.stage.description, run.setup,
                         run.data.summary(), run.stage.model_card_lines(run.unwrapped.config), final_metrics)
        (run.output_dir / "eval_metrics.json").write_text(json.dumps(final_metrics, indent=2))
        if t.push_to_hub:  # like transformers' Trainer: the output folder's name when no hub_model_id is given
            push_with_model_card(run.unwrapped, run.output_dir / "final", t.hub_model_id or run.output_dir.name)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return final_metrics


def save_final_model(run: Run) -> None:
    """`final/` through `save_pretrained`, from Accelerate's full state dict (gathered on the main process when
    the model is sharded, e.g. FSDP2); refused, on every process, if any weight is not finite."""
    from accelerate.utils import broadcast_object_list

    accelerator = run.accelerator
    weights = accelerator.get_state_dict(run.model)
    bad = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()] if accelerator.is_main_process else []
    verdict = [bad]
    broadcast_object_list(verdict)
    if verdict[0]:
        raise RunError(f"not saving {run.output_dir / 'final'}: {len(verdict[0])} weight tensors are not finite "
                       f"(first: {verdict[0][0]}); the last complete checkpoint is in {run.output_dir}")
    run.unwrapped.save_pretrained(run.output_dir / "final", state_dict=weights, is_main_process=accelerator.is_main_process,
                                  save_function=accelerator.save)


# ------------------------------------------------------------------------------------------------
# The Accelerator
# ------------------------------------------------------------------------------------------------


def make_accelerator(t: DreamerTrainingArguments) -> tuple[Any, str]:
    """The Accelerator with mixed precision chosen by device, one schedule step per optimiser step, and
    the world size checked against the launcher's."""
    from accelerate import Accelerator, PartialState

    # Accelerate forms a CPU process group only when told in code that it runs on the CPU; without this a
    # 2-process CPU launch silently gives two independent single-process runs.
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not (
        torch.cuda.is_available() or (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    )
    device_type = PartialState(cpu=use_cpu).device.type
    mixed_precision = choose_mixed_precision(
        t.mixed_precision, device_type, device_type == "cuda" and torch.cuda.is_bf16_supported()
    )
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        log_with=None if t.report_to == "none" else t.report_to,
        project_dir=t.output_dir,
        step_scheduler_with_optimizer=False,
        dynamo_backend="inductor" if t.torch_compile else None,
    )
    check_world_size(accelerator.num_processes)
    return accelerator, mixed_precision


def check_world_size(num_processes: int) -> None:
    """Fail loudly when the launcher started processes that do not form one job.

    `accelerate launch --multi_gpu` on a machine without GPUs starts independent processes that each train
    alone (docs/training.md); the environment's WORLD_SIZE then disagrees with Accelerate's view.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if num_processes != launched:
        raise RunError(
            f"Accelerate sees {num_processes} process(es) but the launcher started WORLD_SIZE={launched}. "
            "For CPU DDP use: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py ..."
        )


def global_batch(t: DreamerTrainingArguments, accelerator: Any) -> int:
    return t.per_device_train_batch_size * t.gradient_accumulation_steps * accelerator.num_processes


# ------------------------------------------------------------------------------------------------
# Checkpoint state of our own (rms_state.safetensors, weight_average.safetensors) and resume
# ------------------------------------------------------------------------------------------------


def register_state_file(accelerator: Any, holder: Any, file_name: str) -> None:
    """Save and load `holder` (the loss normalisers, the weight average: anything with `save_file(path)` and
    `load_file(path)`) with every Accelerate checkpoint, as the safetensors file `file_name`.

    Accelerate's `register_for_checkpointing` would pickle them; its state hooks let us write the format
    we document. Both are identical on every process (the normalisers record cross-process means, the weights
    are the same), so the main process writes the file and every process reads it."""

    def save(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            holder.save_file(Path(output_dir) / file_name)

    def load(models: list, input_dir: str) -> None:
        holder.load_file(Path(input_dir) / file_name)

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def load_checkpoint(accelerator: Any, checkpoint: Path) -> None:
    """`accelerator.load_state`, with an error that names the unreadable file when it fails."""
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # noqa: BLE001 - re-raised with the culprit named
        culprit = find_unreadable_file(checkpoint)
        raise RunError(f"cannot resume from {checkpoint}: {culprit or f'{type(error).__name__}: {error}'}") from error


# ------------------------------------------------------------------------------------------------
# Pieces of one step
# ------------------------------------------------------------------------------------------------


def step_generator(seed: int, step: int, micro: int, rank: int, device: torch.device) -> torch.Generator:
    """Randomness of one micro-batch as a pure function of (seed, step, micro-batch, rank), on the device.

    Noise levels, noise and independent-frame flags then do not depend on RNG state, which makes resumed
    runs bitwise identical to uninterrupted ones, and nothing is drawn on the host and copied over.
    """
    return torch.Generator(device=device).manual_seed(((seed * 1_000_003 + step) * 1_009 + micro) * 101 + rank)


def clip_groups(model: torch.nn.Module, prefixes: dict[str, tuple[str, ...]]) -> dict[str, list[torch.nn.Parameter]]:
    """Group name -> the trainable parameters whose names start with one of its prefixes (`Stage.clip_groups`);
    one group `all` of every trainable parameter when no groups are given."""
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if not prefixes:
        return {"all": [param for _, param in trainable]}
    groups = {group: [param for name, param in trainable if name.startswith(starts)] for group, starts in prefixes.items()}
    empty = [group for group, params in groups.items() if not params]
    if empty:
        raise RunError(f"gradient clip groups {empty} match no trainable parameter (prefixes {prefixes})")
    return groups


def clip_gradients(accelerator: Any, groups: dict[str, list[torch.nn.Parameter]], max_norm: float,
                   window: "LogWindow") -> torch.Tensor:
    """Clip each group's gradients to `max_norm` on its own; log and return the norm before clipping (of all
    groups together: the root of the sum of the groups' squared norms). Stays on the device."""
    norms = {group: torch.as_tensor(accelerator.clip_grad_norm_(params, max_norm), dtype=torch.float32)
             for group, params in groups.items()}
    total = torch.stack(list(norms.values())).square().sum().sqrt()
    window.add({"grad_norm": total})
    if len(norms) > 1:
        window.add({f"grad_norm/{group}": norm for group, norm in norms.items()})
    return total


class StepGuard:
    """Drops an optimiser step whose loss or gradients were not finite, exactly: no optimiser update, and the
    normalisers return to their state at the start of the step (its micro-batches updated them).

    Non-finite values are noted on the device as they come (`watch`) and decided once per optimiser step
    (`finite`), so a step waits on the device once, not once per micro-batch; with several processes the
    decision is all-reduced, so every process drops the same steps."""

    def __init__(self, normalizer: Any) -> None:
        self.normalizer = normalizer
        self.bad: torch.Tensor | None = None
        self.snapshot: dict[str, torch.Tensor] = {}

    def begin(self) -> None:
        self.bad = None
        self.snapshot = {k: v.clone() for k, v in self.normalizer.state_dict().items()}

    def watch(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.bad = bad if self.bad is None else self.bad | bad

    def finite(self, grad_norm: torch.Tensor, accelerator: Any) -> bool:
        """True when the step's losses and its gradients' norm are finite on every process."""
        bad = (~torch.isfinite(torch.as_tensor(grad_norm, device=accelerator.device))) | self.bad.to(accelerator.device)
        bad = bad.float()
        if accelerator.num_processes > 1:
            bad = accelerator.reduce(bad, reduction="sum")
        return float(bad) == 0.0

    def drop(self) -> None:
        self.normalizer.load_state_dict(self.snapshot)


class LogWindow:
    """Averages of logged values since the last flush, kept on the device until then (no host synchronisation
    per micro-batch).

    A value is a float, a tensor, None (nothing measured), or `(value, present)` with `present` a bool tensor
    (counted only where True, e.g. an MTP offset without targets). A measured NaN makes the average NaN, which
    is logged as such; a key never measured in the window is left out.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, logs: dict[str, Any]) -> None:
        for key, value in logs.items():
            if value is None:
                continue
            value, present = value if isinstance(value, tuple) else (value, True)
            if isinstance(present, torch.Tensor):
                value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
                present = present.float()
                contribution = torch.where(present > 0, value, 0.0)  # absent: not even NaN * 0
            else:  # plain values stay what they are: no tensor is made from host values per micro-batch
                contribution = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
                present = 1.0 if present else 0.0
                if not present:
                    continue
            self.sums[key] = self.sums[key] + contribution if key in self.sums else contribution
            self.counts[key] = self.counts[key] + present if key in self.counts else present

    def flush(self) -> dict[str, float]:
        averages = {}
        for key in self.sums:
            total, count = float(self.sums[key]), float(self.counts[key])
            if count > 0:
                averages[key] = total / count
        self.sums, self.counts = {}, {}
        return averages
