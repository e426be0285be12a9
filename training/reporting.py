"""What a run writes for people: `metrics.jsonl` and the model card of `final/`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any



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
                     data_summary: dict[str, Any], model_lines: list[str], metrics: dict[str, float]) -> None:
    """`final/README.md` in the Hub's model-card format (`huggingface_hub.ModelCard`): YAML metadata with the
    library, tags and held-out metrics, then how to load the model, what it was trained on and how.

    data_summary: `{"name": dataset name, "lines": markdown bullets about the data}` (`RunData.summary`);
    model_lines: markdown bullets about the model (`Stage.model_card_lines`)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    architecture = (config.architectures or [type(config).__name__.removesuffix("Config")])[0]
    # The headline (offset 0) metrics; the per-offset curves stay in metrics.jsonl and eval_metrics.json.
    finite = {k: v for k, v in sorted(metrics.items())
              if isinstance(v, (int, float)) and math.isfinite(v) and "/offset_" not in k}
    card_data = ModelCardData(
        library_name="transformers",
        tags=["dreamerv4", "world-model", "reinforcement-learning", "modeling_dreamer", setup["stage"]],
        model_name=architecture,
        eval_results=[
            EvalResult(task_type="reinforcement-learning", dataset_type="dreamer",
                       dataset_name=data_summary["name"], dataset_split="validation", metric_type=name,
                       metric_value=round(value, 6))
            for name, value in finite.items()
        ] or None,
    )
    body = [
        f"# {architecture}",
        "",
        f"{stage_description}, trained with the `modeling_dreamer` library (`train.py --stage {setup['stage']}`).",
        "",
        "## Load",
        "",
        "```python",
        f"from modeling_dreamer import {architecture}",
        "",
        f'model = {architecture}.from_pretrained("<this folder or Hub id>")',
        "# without the library installed:",
        "# transformers.AutoModel.from_pretrained(\"<this folder or Hub id>\", trust_remote_code=True)",
        "```",
        "",
        "## Data",
        "",
        *(f"- {line}" for line in data_summary["lines"]),
        "",
        "## Model",
        "",
        *model_lines,
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


def push_with_model_card(model: Any, folder: Path, repo_id: str, private: bool | None = None,
                         token: str | None = None) -> str:
    """Push `model` (saved in `folder`) with the library's `push_to_hub`, then `folder`'s model card over the
    template card `push_to_hub` writes for a new repository; returns the repository id the Hub gave."""
    from huggingface_hub import HfApi

    commit = model.push_to_hub(repo_id, private=private, token=token,
                               commit_message=f"Upload {type(model).__name__} (modeling_dreamer)")
    pushed_id = getattr(getattr(commit, "repo_url", None), "repo_id", None) or repo_id
    card = Path(folder) / "README.md"
    if card.is_file():  # the run's own card: its data, training and held-out metrics
        HfApi().upload_file(path_or_fileobj=str(card), path_in_repo="README.md", repo_id=pushed_id, token=token,
                            commit_message="Model card of the training run")
    return pushed_id

