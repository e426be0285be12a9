"""What only a CUDA device can show: training steps under bf16 autocast, the fused flex-attention path and a
compiled model against eager. Skipped without a GPU (run with `pytest -m "gpu or not slow"` on a CUDA machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_agent_stage_trains_under_bf16_autocast(run_training, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    run_training(tmp_path, "--stage", "agent", "--max_steps", "3", "--save_steps", "0", "--eval_steps", "0")
    setup = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert setup["mixed_precision"] in ("bf16", "fp16") and setup["device"].startswith("cuda")
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "skipped_steps" in x]
    assert records[-1]["skipped_steps"] == 0
    weights = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())  # fp32 master weights


@torch.no_grad()
def test_fused_flex_attention_matches_eager(make_config) -> None:
    from modeling_dreamer import DreamerAgentModel

    torch.manual_seed(0)
    eager = DreamerAgentModel._from_config(make_config(), attn_implementation="eager").cuda().eval()
    flex = DreamerAgentModel._from_config(make_config(), attn_implementation="flex_attention").cuda().eval()
    flex.load_state_dict(eager.state_dict())
    latents = torch.randn(2, 6, 8, 4, 4, device="cuda")
    level = torch.full((2, 6), 0.5, device="cuda")
    a, b = eager(latents, level), flex(latents, level)
    torch.testing.assert_close(b.latent_pred, a.latent_pred, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(b.agent_hidden, a.agent_hidden, atol=2e-4, rtol=2e-4)


def test_compiled_model_matches_eager(make_config) -> None:
    from modeling_dreamer import DreamerAgentModel

    torch.manual_seed(0)
    model = DreamerAgentModel._from_config(make_config(), attn_implementation="eager").cuda().eval()
    compiled = torch.compile(model)
    latents = torch.randn(2, 6, 8, 4, 4, device="cuda")
    level = torch.full((2, 6), 0.5, device="cuda")
    with torch.no_grad():
        expected, got = model(latents, level), compiled(latents, level)
    torch.testing.assert_close(got.latent_pred, expected.latent_pred, atol=1e-4, rtol=1e-4)
