"""What a run writes for people: `metrics.jsonl`, the model card of `final/`, and a per-process state dump
used by the multi-process tests."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch


class MetricsLog:
    """`OUTPUT/metrics.jsonl`: the run's setup on the first line, then one JSON object per logged step or
    evaluation. Written by the main process only. A value that was measured but is not finite is written as
    NaN / Infinity (Python's JSON extension), never dropped."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def start(self, resumed_at_step: int | None) -> None:
        """A new run truncates the log; a resumed run keeps what was logged up to its checkpoint's step and
        drops the records of the interrupted run after it (they are logged again as the run redoes them)."""
        if not self.enabled:
            return
        kept: list[str] = []
        if resumed_at_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                record = json.loads(line)
                if "step" not in record or record["step"] <= resumed_at_step:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record, default=float) + "\n")


def write_model_card(folder: Path, config: Any, stage_description: str, setup: dict[str, Any],
                     data_summary: dict[str, Any], metrics: dict[str, float]) -> None:
    """`final/README.md` in the Hub's model-card format (`huggingface_hub.ModelCard`): YAML metadata with the
    library, tags and held-out metrics, then how to load the model, what it was trained on and how."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    architecture = (config.architectures or ["DreamerModel"])[0]
    # The headline (offset 0) metrics; the per-offset curves stay in metrics.jsonl and eval_metrics.json.
    finite = {k: v for k, v in sorted(metrics.items())
              if isinstance(v, (int, float)) and math.isfinite(v) and "/offset_" not in k}
    card_data = ModelCardData(
        library_name="transformers",
        tags=["dreamerv4", "world-model", "reinforcement-learning", "modeling_dreamer", setup["stage"]],
        model_name=architecture,
        eval_results=[
            EvalResult(task_type="reinforcement-learning", dataset_type="dreamer-latents",
                       dataset_name=data_summary["name"], dataset_split="validation", metric_type=name,
                       metric_value=round(value, 6))
            for name, value in finite.items()
        ] or None,
    )
    action_space = ", ".join(
        f"{name} ({spec['type']}{', ' + str(spec['n']) if spec['type'] == 'categorical' else ''})"
        for name, spec in config.action_space.items()
    )
    body = [
        f"# {architecture}",
        "",
        f"{stage_description}, trained with the `modeling_dreamer` library (`train.py --stage {setup['stage']}`).",
        "",
        "## Load",
        "",
        "```python",
        "import modeling_dreamer  # registers the Dreamer classes with transformers' Auto classes",
        "from transformers import AutoModel",
        "",
        'model = AutoModel.from_pretrained("<this folder or Hub id>")',
        "# without the library installed: AutoModel.from_pretrained(..., trust_remote_code=True)",
        "```",
        "",
        "## Data",
        "",
        f"- prepared dataset `{data_summary['name']}`: {data_summary['train_frames']:,} training frames in "
        f"{data_summary['train_videos']} videos, {data_summary['validation_frames']:,} held-out frames in "
        f"{data_summary['validation_videos']} videos",
        f"- latents per frame: ({config.latent_channels}, {config.latent_height}, {config.latent_width})",
        f"- action space: {action_space}",
        f"- reward: {data_summary['reward']}",
        f"- twohot reward bins: {config.num_bins} over [{config.bins_low:.3f}, {config.bins_high:.3f}] in symlog space",
        "",
        "## Training",
        "",
        f"- started from: {setup['origin']['init']}",
        f"- steps: {setup['steps']} ({setup['skipped_steps']} skipped for non-finite values), global batch "
        f"{setup['global_batch_size']} windows of {setup['window_length']} frames",
        f"- processes: {setup['world_size']} ({setup['device_type']}), mixed precision: {setup['mixed_precision']}",
        f"- learning rates: {', '.join(f'{k} {v:.3g}' for k, v in setup['learning_rates'].items())}",
        f"- parameters: {setup['parameters']['total']:,} in total, "
        + ", ".join(f"{k} {v:,}" for k, v in setup["parameters"].items() if k != "total") + " trained",
        "",
        "## Held-out metrics",
        "",
        *(["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in finite.items()]
          if finite else ["No evaluation was run."]),
        "",
    ]
    content = f"---\n{card_data.to_yaml()}\n---\n" + "\n".join(body)
    ModelCard(content).save(folder / "README.md")


def dump_rank_state(output_dir: Path, rank: int, model: torch.nn.Module, normalizer: torch.nn.Module,
                    windows: list[list[int]]) -> None:
    """What one process holds at the end (testing aid): a checksum of its weights, its normaliser state and
    the (window, source) draws it trained on, in order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    record = {
        "rank": rank,
        "weights_sha256": digest.hexdigest(),
        "rms_state": {k: v.item() for k, v in normalizer.state_dict().items()},
        "windows": windows,
    }
    (output_dir / f"rank_state_{rank}.json").write_text(json.dumps(record))
