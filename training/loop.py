"""The one training loop (Accelerate). It runs any `training.stages.Stage` and knows nothing stage-specific.

    train(stage, args)

reads top to bottom: Accelerator -> run folder (lock, resume checks) -> data -> model, optimiser groups,
schedule, loss normalisers -> prepare -> resume -> steps (losses from the stage, non-finite guard, RMS
normalisation, backward, clip, step; logging, evaluation, checkpoints) -> final model and card.
See docs/training.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.arguments import DreamerTrainingArguments, RunArguments
from training.checkpointing import (
    RMS_STATE_FILE,
    RunError,
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
from training.optim import build_param_groups, build_scheduler, choose_mixed_precision
from training.reporting import MetricsLog, dump_rank_state, write_model_card
from training.stages.base import Stage
from training.weight_average import WEIGHT_AVERAGE_FILE, WeightAverage


def train(stage: Stage, args: RunArguments) -> dict[str, float]:
    """Run `stage` as `args` say; returns the final held-out metrics (empty without validation data)."""
    accelerator, mixed_precision = make_accelerator(args.training)
    lock = RunLock(Path(args.training.output_dir))
    try:
        return run(stage, args, accelerator, mixed_precision, lock)
    finally:
        lock.release()


def run(stage: Stage, args: RunArguments, accelerator: Any, mixed_precision: str, lock: RunLock) -> dict[str, float]:
    """The body of `train`, with the Accelerator made and the run folder's lock (not yet taken) in hand."""
    from accelerate.utils import broadcast_object_list, set_seed
    from tqdm.auto import tqdm

    from modeling_dreamer.objectives import LossNormalizer

    t = args.training
    output_dir = Path(t.output_dir)

    # ---- Run folder: lock, resume point, checks that need no weights (main process decides) ----
    problem: list[Any] = [None]
    saved: TrainerState | None = None
    if accelerator.is_main_process:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            checkpoint = resolve_checkpoint(output_dir, t.resume_from_checkpoint)
            prepare_output_dir(output_dir, checkpoint, t.overwrite_output_dir)
            if checkpoint is not None:
                saved = TrainerState.load(checkpoint)
                check_resume(saved, checkpoint, stage.name, args.as_dict())
            problem = [str(checkpoint) if checkpoint else None]
        except (RunError, OSError) as error:
            problem = [RunError(str(error))]
    broadcast_object_list(problem)  # every process stops, or continues from the same checkpoint
    if isinstance(problem[0], Exception):
        raise problem[0]
    checkpoint = Path(problem[0]) if problem[0] else None
    saved = TrainerState.load(checkpoint) if checkpoint else None
    set_seed(t.seed)

    # ---- Data: windows of the prepared dataset, drawn by the reward-mixture sampler ----
    data = load_data(args, accelerator.num_processes)
    stage.bind_data(data)
    if saved is not None:
        check_resume_data(saved, checkpoint, data.description)

    # ---- Model, optimiser groups, schedule, loss normalisers ----
    model, origin = stage.build_model(data.schema)
    stage.configure_trainable(model)
    if args.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    param_groups = build_param_groups(model, t.learning_rate, t.weight_decay, stage.lr_scales())
    optimizer = torch.optim.AdamW(param_groups, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon)
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * data.steps_per_epoch(t))
    scheduler = build_scheduler(optimizer, t.lr_scheduler_type, t.warmup_steps, total_steps, t.scheduler_kwargs())
    normalizer = LossNormalizer([n for n in stage.loss_terms if n not in stage.unnormalized_terms], decay=t.rms_decay)
    loss_weights = stage.loss_weights()
    register_state_file(accelerator, normalizer, RMS_STATE_FILE)

    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, data.train_loader, scheduler)
    eval_loader = accelerator.prepare(data.eval_loader) if data.eval_loader is not None else None
    normalizer.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(model)
    clipped = clip_groups(unwrapped, stage.clip_groups())
    average = None
    if t.weight_average_start is not None:
        try:
            average = WeightAverage(unwrapped, start_step=math.floor(t.weight_average_start * total_steps) + 1)
        except ValueError as error:
            raise RunError(f"weight_average_start: {error}") from None
        register_state_file(accelerator, average, WEIGHT_AVERAGE_FILE)

    # ---- Resume ----
    state = TrainerState(stage=stage.name, world_size=accelerator.num_processes, global_batch_size=global_batch(t, accelerator),
                         dataset=data.description, arguments=args.as_dict())
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint)
        state.global_step, state.epoch, state.skipped_steps = saved.global_step, saved.epoch, saved.skipped_steps
        state.draws_in_epoch = saved.draws_in_epoch
        accelerator.print(f"Resumed from {checkpoint} at step {state.global_step} (epoch {state.epoch}, draw "
                          f"{state.draws_in_epoch}); global batch {state.global_batch_size} (was {saved.global_batch_size})")
    data.sampler.resume_at(state.epoch, state.draws_in_epoch)

    # ---- Logging ----
    trainable = {g["name"]: sum(p.numel() for p in g["params"]) for g in param_groups}
    setup = {
        "setup": True, "stage": stage.name, "world_size": accelerator.num_processes, "device": str(accelerator.device),
        "device_type": accelerator.device.type, "mixed_precision": mixed_precision,
        "global_batch_size": state.global_batch_size, "window_length": args.data.window_length,
        "total_steps": total_steps, "train_windows": data.num_windows, "relevant_windows": data.num_relevant,
        "parameters": {"total": sum(p.numel() for p in unwrapped.parameters()), **trainable},
        "learning_rates": {g["name"]: g["initial_lr"] for g in param_groups}, "origin": origin,
        "resumed_from": str(checkpoint) if checkpoint else None, "torch_compile": t.torch_compile,
        "time_context_length": getattr(unwrapped.config, "time_context_length", None),
    }
    metrics_log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process)
    metrics_log.start(resumed_at_step=state.global_step if checkpoint else None)
    metrics_log.write(setup)
    trackers = t.report_to != "none"
    if trackers:
        accelerator.init_trackers("dreamer", config={k: v for k, v in args.as_dict().items() if isinstance(v, (int, float, str, bool))})

    def log(record: dict[str, Any]) -> None:
        metrics_log.write(record)
        if trackers:
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=state.global_step)

    def save_checkpoint() -> None:
        tmp, final = output_dir / f"checkpoint-{state.global_step}.tmp", output_dir / f"checkpoint-{state.global_step}"
        accelerator.save_state(str(tmp))  # the save hook adds rms_state.safetensors
        accelerator.wait_for_everyone()  # every process has written its RNG state before the rename
        if accelerator.is_main_process:
            state.save(tmp)
            finalize_checkpoint(tmp, final)
            prune_checkpoints(output_dir, t.save_total_limit)
        accelerator.wait_for_everyone()

    def averaged_weights() -> Any:
        """The model with the weight average swapped in (`weight_average_start`), else as it is."""
        return average.swapped_in() if average is not None else contextlib.nullcontext()

    def evaluate(save_predictions: bool = False) -> dict[str, float]:
        if eval_loader is None:
            return {}
        model.eval()
        with averaged_weights():
            result = stage.evaluate(model, eval_loader, accelerator, seed=t.seed)
        model.train()
        if save_predictions and accelerator.is_main_process:
            np.savez_compressed(output_dir / "eval_predictions.npz", **{k.replace("/", "__"): v for k, v in result.arrays.items()})
        return {f"eval/{k}": v for k, v in result.metrics.items()}

    # ---- The loop ----
    progress = tqdm(total=total_steps, initial=state.global_step, disable=not accelerator.is_main_process,
                    desc=stage.name, dynamic_ncols=True)
    model.train()
    window = LogWindow()
    step = StepGuard(normalizer)
    micro = 0
    windows_seen: list[list[int]] = []
    started = time.time()
    while state.global_step < total_steps:
        train_loader.set_epoch(state.epoch)
        for batch in train_loader:
            state.draws_in_epoch += t.per_device_train_batch_size * accelerator.num_processes
            if t.debug_dump_rank_state:
                windows_seen.extend([int(i), int(s)] for i, s in zip(batch["window_index"], batch["source"]))
            if t.debug_nan_at_step == state.global_step:
                batch["latents"] = torch.full_like(batch["latents"], float("nan"))
            if micro == 0:
                step.begin()
            generator = step_generator(t.seed, state.global_step, micro, accelerator.process_index, accelerator.device)
            with accelerator.accumulate(model):
                result = stage.compute_losses(model, batch, generator, unwrapped)
                total, normalized_logs = normalize_losses(normalizer, result.losses, result.counts, loss_weights)
                step.watch(total)
                if t.debug_inf_grad_at_step == state.global_step:
                    total = total * float("inf")  # testing aid: a finite loss whose gradients overflow
                accelerator.backward(total)
                window.add(result.logs)
                window.add(normalized_logs)
                micro += 1
                if accelerator.sync_gradients:
                    grad_norm = clip_gradients(accelerator, clipped, t.max_grad_norm or math.inf, window)
                    if step.finite(grad_norm, accelerator):  # the step's one host synchronisation
                        optimizer.step()
                    else:
                        step.drop()  # normalisers back to where they were at the start of the step
                        state.skipped_steps += 1
                    optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            # ---- one optimiser step done ----
            scheduler.step()
            state.global_step += 1
            if average is not None:
                average.update(state.global_step)
            micro = 0
            progress.update(1)
            if state.global_step == 1:
                setup_time = {"first_step_s": round(time.time() - started, 2)}  # includes compilation
                log({"step": 1, **setup_time})
            if state.global_step % t.logging_steps == 0 or state.global_step == total_steps:
                record = {"step": state.global_step, "epoch": state.epoch, "skipped_steps": state.skipped_steps,
                          "elapsed_s": round(time.time() - started, 2), **window.flush()}
                record.update({f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups})
                log(record)
                progress.set_postfix({k.split("/")[-1]: f"{record[k]:.3g}" for k in record if k.startswith("loss/")})
            if t.eval_steps > 0 and state.global_step % t.eval_steps == 0 and state.global_step < total_steps:
                log({"step": state.global_step, **evaluate()})
            if t.save_steps > 0 and state.global_step % t.save_steps == 0:
                save_checkpoint()
            if state.global_step >= total_steps:
                break
        else:
            state.epoch += 1
            state.draws_in_epoch = 0
            continue
        break
    progress.close()

    # ---- Final: checkpoint, evaluation, model, card ----
    if t.save_steps >= 0 and not (output_dir / f"checkpoint-{state.global_step}").exists():
        save_checkpoint()
    if average is not None:
        average.copy_to_model()  # the checkpoint keeps the live weights; the final model is the average
    final_metrics = evaluate(save_predictions=True)
    if final_metrics:
        log({"step": state.global_step, "final": True, **final_metrics})
    if t.debug_dump_rank_state:
        dump_rank_state(output_dir, accelerator.process_index, unwrapped, normalizer, windows_seen)
    # The full state dict (gathered on the main process when the model is sharded, e.g. FSDP2), checked for
    # non-finite weights there, the verdict shared with every process.
    weights = accelerator.get_state_dict(model)
    bad = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()] if accelerator.is_main_process else []
    verdict = [bad]
    broadcast_object_list(verdict)
    if verdict[0]:
        raise RunError(f"not saving {output_dir / 'final'}: {len(verdict[0])} weight tensors are not finite (first: "
                       f"{verdict[0][0]}); the last complete checkpoint is in {output_dir}")
    unwrapped.save_pretrained(output_dir / "final", state_dict=weights, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save)
    if accelerator.is_main_process:
        setup.update(steps=state.global_step, skipped_steps=state.skipped_steps)
        write_model_card(output_dir / "final", unwrapped.config, stage.description, setup, data.summary(), final_metrics)
        (output_dir / "eval_metrics.json").write_text(json.dumps(final_metrics, indent=2))
        if t.push_to_hub:
            unwrapped.push_to_hub(t.hub_model_id)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final_metrics


# ------------------------------------------------------------------------------------------------
# Setup
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
        raise RuntimeError(
            f"Accelerate sees {num_processes} process(es) but the launcher started WORLD_SIZE={launched}. "
            "For CPU DDP use: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py ..."
        )


def global_batch(t: DreamerTrainingArguments, accelerator: Any) -> int:
    return t.per_device_train_batch_size * t.gradient_accumulation_steps * accelerator.num_processes


@dataclass
class RunData:
    """The prepared dataset's schema, the training windows and sampler, and the loaders."""

    schema: Any
    datasets: Any
    train_windows: Any  # data.windows.WindowDataset of the training split
    sampler: Any
    train_loader: Any
    eval_loader: Any
    num_windows: int
    num_relevant: int
    description: dict[str, Any]  # what a checkpoint records about the data
    world_size: int

    def steps_per_epoch(self, t: DreamerTrainingArguments) -> int:
        batches = math.ceil(len(self.sampler) / t.per_device_train_batch_size / self.world_size)
        return max(1, batches // t.gradient_accumulation_steps)

    def summary(self) -> dict[str, Any]:
        """The dataset as the model card describes it (no local paths)."""
        spec = self.schema.reward_spec

        def videos(split: str) -> int:
            return len(set(self.datasets[split]["video_id"])) if split in self.datasets else 0

        return {
            "name": self.description["name"],
            "train_frames": len(self.datasets["train"]), "train_videos": videos("train"),
            "validation_frames": len(self.datasets["validation"]) if "validation" in self.datasets else 0,
            "validation_videos": videos("validation"),
            "reward": f"{spec.gold_scale} x gold gained + {spec.death_penalty} x death",
        }


def load_data(args: RunArguments, world_size: int) -> RunData:
    from torch.utils.data import DataLoader, Subset

    from data.sampler import MixtureSampler
    from data.schema import load_prepared
    from data.windows import WindowDataset, collate_windows

    d, t = args.data, args.training
    try:
        datasets, schema = load_prepared(d.dataset_path)
    except (FileNotFoundError, ValueError) as error:
        raise RunError(f"dataset_path {d.dataset_path}: {error}") from None
    windows = WindowDataset(datasets["train"], d.window_length, stride=d.window_stride)
    if len(windows) == 0:
        raise RunError(f"{d.dataset_path}: no training window of {d.window_length} consecutive frames")
    groups = windows.relevant_windows_by_sign() if d.relevant_balance == "sign" else None
    sampler = MixtureSampler(len(windows), windows.relevant_windows(), d.relevant_fraction, seed=t.seed,
                             relevant_groups=groups)
    train_loader = DataLoader(windows, batch_size=t.per_device_train_batch_size, sampler=sampler,
                              collate_fn=collate_windows, drop_last=True, num_workers=d.dataloader_num_workers)
    eval_loader = None
    if "validation" in datasets and len(datasets["validation"]) > 0:
        eval_windows = WindowDataset(datasets["validation"], d.window_length)
        if d.max_eval_windows is not None and len(eval_windows) > d.max_eval_windows:
            eval_windows = Subset(eval_windows, range(d.max_eval_windows))
        if len(eval_windows) > 0:
            eval_loader = DataLoader(eval_windows, batch_size=t.per_device_eval_batch_size, shuffle=False,
                                     collate_fn=collate_windows)
    description = {"name": Path(d.dataset_path).name, "fingerprint": windows.fingerprint(),
                   "windows": len(windows), "relevant_windows": len(windows.relevant_windows()),
                   "window_length": d.window_length}
    return RunData(schema, datasets, windows, sampler, train_loader, eval_loader, len(windows),
                   len(windows.relevant_windows()), description, world_size)


# ------------------------------------------------------------------------------------------------
# Checkpoint state of our own (rms_state.safetensors) and resume
# ------------------------------------------------------------------------------------------------


def register_state_file(accelerator: Any, holder: Any, file_name: str) -> None:
    """Save and load `holder` (the loss normalisers, the weight average: anything with `save_file(path)` and
    `load_file(path)`) with every Accelerate checkpoint, as the safetensors file `file_name`.

    Accelerate's `register_for_checkpointing` would pickle them; its state hooks let us write the format
    we document. Both are identical on every process (the normalisers' updates are all-reduced, the weights
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
# One step
# ------------------------------------------------------------------------------------------------


def step_generator(seed: int, step: int, micro: int, rank: int, device: torch.device) -> torch.Generator:
    """Randomness of one micro-batch as a pure function of (seed, step, micro-batch, rank), on the device.

    Noise levels, noise and independent-frame flags then do not depend on RNG state, which makes resumed
    runs bitwise identical to uninterrupted ones, and nothing is drawn on the host and copied over.
    """
    return torch.Generator(device=device).manual_seed(((seed * 1_000_003 + step) * 1_009 + micro) * 101 + rank)


def normalize_losses(normalizer: Any, losses: dict[str, torch.Tensor], counts: dict[str, torch.Tensor],
                     weights: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Weighted sum (`weights`: term -> weight, default 1) of the loss terms, each divided by its running RMS
    when `normalizer` has one for it (terms it lacks are summed as they are), and their raw and normalised
    values for the log.

    A term with no valid target on this process (count 0) still joins its normaliser's cross-process
    reduction but is left out of the average (and of the log); a term no process had leaves its normaliser
    untouched. Nothing here waits on the device.
    """
    total = torch.zeros((), device=next(iter(losses.values())).device)
    logs: dict[str, Any] = {}
    for name, loss in losses.items():
        present = counts[name] > 0
        logs[f"loss/{name}"] = (loss.detach(), present)
        if name in normalizer:
            normalized = normalizer.normalize(name, loss, present=present)  # an absent term is an exact 0
            logs[f"loss_normalized/{name}"] = (normalized.detach(), present)
            logs[f"rms/{name}"] = normalizer[name].rms()
        else:
            normalized = torch.where(present, loss, torch.zeros_like(loss))
        total = total + (weights or {}).get(name, 1.0) * normalized
    return total, logs


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
            value = torch.as_tensor(value).detach().float()
            present = torch.as_tensor(present, device=value.device).float()
            contribution = torch.where(present > 0, value, torch.zeros_like(value))  # absent: not even NaN * 0
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
