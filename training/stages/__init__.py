"""The training stages, by the name `--stage` takes. A new stage is one module plus one entry here."""

from training.stages.agent import AgentStage
from training.stages.base import Evaluation, Stage, StepLosses
from training.stages.dynamics import DynamicsStage
from training.stages.imagination import ImaginationStage
from training.stages.tokenizer import TokenizerStage

STAGES: dict[str, type[Stage]] = {
    TokenizerStage.name: TokenizerStage,
    DynamicsStage.name: DynamicsStage,
    AgentStage.name: AgentStage,
    ImaginationStage.name: ImaginationStage,
}

__all__ = ["STAGES", "Stage", "StepLosses", "Evaluation", "DynamicsStage", "AgentStage", "ImaginationStage", "TokenizerStage"]
