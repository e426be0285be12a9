"""What a prepared dataset contains: action space, reward spec and the schema that travels with it.

The schema is the only thing `train.py` needs from the data layer to build a model config
(latent shape, action space, twohot range), so it is written twice: to `OUT/dreamer_schema.json`
and into every split's `DatasetInfo.description` (as JSON), so a copied split still knows it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from modeling_dreamer.errors import DataError

SCHEMA_FILE = "dreamer_schema.json"
REPORT_FILE = "prepare_report.json"
# 2: optional `state_names`, `tokenizer`, `label_mapping`, and a reward spec of mapped terms (a version-1
# schema reads as before: the new fields default to "none").
SCHEMA_VERSION = 2


# The one definition of the action space is `modeling_dreamer.action_space` (standard library only,
# shared with the model config). It is imported inside the functions below because importing it
# runs the `modeling_dreamer` package, which imports transformers and torch (about 7 s here), and
# `python -m data.prepare --help` must stay fast.


def default_action_space() -> dict[str, dict]:
    """A fresh copy of the default action space (`modeling_dreamer.action_space.DEFAULT_ACTION_SPACE`)."""
    from modeling_dreamer.action_space import default_action_space as shared_default

    return shared_default()


def default_action_keys(action_space: dict[str, dict]) -> dict[str, str]:
    """Which features.json key each action component is read from.

    `movement` comes from `movement_slice`; every other component from the key of its own name.
    """
    return {name: ("movement_slice" if name == "movement" else name) for name in action_space}


# Dataset columns that an action component cannot be named after.
RESERVED_COLUMNS = frozenset({"video_id", "frame_index", "latents", "reward", "death", "has_action", "state", "state_mask"})


def validate_action_space(action_space: dict[str, dict]) -> None:
    """Raise ValueError unless `action_space` is valid (see `modeling_dreamer.action_space`) and names no
    dataset column."""
    from modeling_dreamer.action_space import validate_action_space as validate_shared

    validate_shared(action_space, reserved=RESERVED_COLUMNS)


@dataclass(frozen=True)
class RewardSpec:
    """`reward[t] = gold_scale * gold_gained[t] + death_penalty * death[t]` (docs/data.md).

    `death_min_frames`: without `is_dead`, a missing health bar counts as a death only if it stays
    missing for at least this many consecutive frames (shorter gaps are flicker).
    """

    gold_scale: float = 0.01
    death_penalty: float = -10.0
    death_min_frames: int = 3

    def __post_init__(self) -> None:
        for name in ("gold_scale", "death_penalty"):
            value = getattr(self, name)
            # A NaN or inf scale would make every reward NaN without any input being wrong.
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        minimum = self.death_min_frames
        if isinstance(minimum, bool) or not isinstance(minimum, (int, np.integer)) or minimum < 1:
            raise ValueError(f"death_min_frames must be an integer >= 1, got {minimum!r}")

    def reward(self, gold_gained: np.ndarray, death: np.ndarray) -> np.ndarray:
        """Per-frame reward, float64 `(N,)`, from gold `(N,)` and death flags or counts `(N,)`."""
        return self.gold_scale * np.asarray(gold_gained, np.float64) + self.death_penalty * np.asarray(
            death, np.float64
        )

    def describe(self) -> str:
        return f"{self.gold_scale} x gold gained + {self.death_penalty} x death"


@dataclass(frozen=True)
class EnvironmentRewardSpec:
    """The reward of a recorded environment (`python -m data.prepare --episodes`): its own, as `step` returned it."""

    environment: str = ""

    def describe(self) -> str:
        return f"the environment's reward ({self.environment})"


@dataclass(frozen=True)
class MappedRewardSpec:
    """The reward of a dataset prepared from tables and events: the mapping file's reward terms
    (`data.mapping.RewardTerm`, as JSON: `{name: {"kind", "offset", "column", "scale", ...}}`); the reward of a
    frame is the sum of its terms after offsets and carrying (docs/data.md)."""

    terms: dict = field(default_factory=dict)

    def describe(self) -> str:
        parts = []
        for name, term in self.terms.items():
            shift = f" (offset {term['offset']:+d})" if term.get("offset") else ""
            if term["kind"] == "increase":
                parts.append(f"{term['scale']} x increase of {term['column']}{shift}")
            elif term["kind"] == "event":
                parts.append(f"{term['value']} x {name} event{shift}")
            else:
                parts.append(f"{term['penalty']} x death from {term['column']}{shift}")
        return " + ".join(parts) or "no reward terms"


def check_tokenizer(tokenizer: object) -> dict[str, str]:
    """`tokenizer` if it is `{"name": str, "hash": str}` (the identity of the tokenizer that made the latents),
    else DataError."""
    if (not isinstance(tokenizer, dict) or set(tokenizer) != {"name", "hash"}
            or not all(isinstance(v, str) and v for v in tokenizer.values())):
        raise DataError(f"tokenizer identity must be {{'name': str, 'hash': str}} (both non-empty), got {tokenizer!r}")
    return tokenizer


def symlog(x: np.ndarray | float) -> np.ndarray | float:
    """sign(x) * log(1 + |x|), the space the model's twohot bins live in (`modeling_dreamer.symlog`, the one
    definition; kept importable from here for the data layer's users)."""
    from modeling_dreamer.symlog import symlog as shared_symlog

    return shared_symlog(x)


def recommended_twohot_range(reward_min: float, reward_max: float) -> tuple[float, float]:
    """A twohot range `(low, high)` in symlog space that covers the observed rewards.

    The range always contains 0 (most frames have no reward) and is padded by 10% of its span on
    each side (at least 0.5), then rounded outwards to 0.1, so every observed reward lands strictly
    inside and the 255 bins are spent on values that occur (a generic range leaves most bins unused).
    Rewards of [-10, 4] give (-2.9, 2.2) instead of DreamerV3's generic (-20, 20).
    """
    from modeling_dreamer.symlog import symlog  # the model's own definition (imports neither torch nor numpy)

    low, high = float(min(symlog(float(reward_min)), 0.0)), float(max(symlog(float(reward_max)), 0.0))
    pad = max(0.1 * (high - low), 0.5)
    return float(np.floor((low - pad) * 10) / 10), float(np.ceil((high + pad) * 10) / 10)


@dataclass
class DatasetSchema:
    """Everything a consumer needs to interpret a prepared dataset.

    `latent_shape` is `(C, H, W)`; `action_space` the ordered dict of `modeling_dreamer.action_space` (with each
    component's `role` and, for binned components, `meaning`); `action_keys` the features.json key of each component
    (tables: a description of its source); `recommended_twohot_range` is `(low, high)` in symlog
    space (the model's `bins_low`/`bins_high`); `reward_min`/`reward_max` are raw rewards.
    `state_names`: the S entries of the per-frame state vector (columns `state`, `state_mask`), empty without one;
    `tokenizer`: `{"name", "hash"}` of the tokenizer that made the latents, or None; `label_mapping`: the mapping
    file the labels were read with (tables and events), or None.
    """

    latent_shape: tuple[int, int, int]
    action_space: dict[str, dict] = field(default_factory=default_action_space)
    reward_spec: RewardSpec | MappedRewardSpec | EnvironmentRewardSpec = field(default_factory=RewardSpec)
    recommended_twohot_range: tuple[float, float] = (-1.0, 1.0)
    reward_min: float = 0.0
    reward_max: float = 0.0
    action_keys: dict[str, str] | None = None
    state_names: list[str] = field(default_factory=list)
    tokenizer: dict[str, str] | None = None
    label_mapping: dict | None = None

    def __post_init__(self) -> None:
        self.latent_shape = tuple(int(d) for d in self.latent_shape)
        self.recommended_twohot_range = tuple(float(v) for v in self.recommended_twohot_range)
        if isinstance(self.reward_spec, dict):
            spec = self.reward_spec
            self.reward_spec = (MappedRewardSpec(**spec) if "terms" in spec else EnvironmentRewardSpec(**spec)
                                if "environment" in spec else RewardSpec(**spec))
        self.state_names = [str(name) for name in (self.state_names or [])]
        if len(set(self.state_names)) != len(self.state_names):
            raise DataError(f"schema: state_names has duplicates: {self.state_names}")
        if self.tokenizer is not None:
            self.tokenizer = check_tokenizer(self.tokenizer)
        if self.action_keys is None:
            self.action_keys = default_action_keys(self.action_space)
        validate_action_space(self.action_space)

    @property
    def latent_size(self) -> int:
        """C * H * W, the length of the flat `latents` column."""
        c, h, w = self.latent_shape
        return c * h * w

    def to_json(self) -> str:
        return json.dumps({"schema_version": SCHEMA_VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "DatasetSchema":
        fields = json.loads(text)
        fields.pop("schema_version", None)
        return cls(**fields)


def load_prepared(path: str | Path) -> tuple["datasets.DatasetDict", DatasetSchema]:  # noqa: F821
    """Load a folder written by `python -m data.prepare`: `(DatasetDict, DatasetSchema)`.

    The splits are memory-mapped (nothing is read into RAM). The schema comes from
    `dreamer_schema.json`, or from the train split's metadata if that file was not copied.
    `data.prepare` publishes the folder only once it is complete (`data.staging`), so a folder
    without `dataset_dict.json` was not written by it: FileNotFoundError, with a hint when an
    interrupted run left the previous dataset aside. A folder whose splits do not load or do not
    match its schema raises DataError naming the folder.
    """
    import datasets

    from data.staging import find_siblings

    path = Path(path)
    if not (path / "dataset_dict.json").is_file():
        hint = "run python -m data.prepare"
        aside = [s.path for s in find_siblings(path) if s.kind == "old"]
        if aside and not path.exists():
            hint = (
                f"an interrupted data.prepare left the previous dataset at {aside[0]}; running data.prepare "
                f"for {path} again restores it first (or rename it back)"
            )
        elif (path / ".building").exists():
            hint = "a run of an older data.prepare was interrupted here; prepare it again with --overwrite"
        raise FileNotFoundError(f"{path}: not a prepared dataset (no dataset_dict.json); {hint}")
    try:
        dataset_dict = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises many types here (FileNotFoundError, ArrowInvalid, JSON errors)
        raise DataError(f"{path}: the prepared dataset does not load ({type(error).__name__}: {error})") from error
    schema_path = path / SCHEMA_FILE
    if schema_path.exists():
        schema = DatasetSchema.from_json(schema_path.read_text())
    else:
        schema = DatasetSchema.from_json(next(iter(dataset_dict.values())).info.description)
    _check_against_schema(path, dataset_dict, schema)
    return dataset_dict, schema


def _check_against_schema(path: Path, dataset_dict: "datasets.DatasetDict", schema: DatasetSchema) -> None:  # noqa: F821
    """Raise DataError unless every split has the columns and latent length the schema describes."""
    for name, split in dataset_dict.items():
        features = split.features
        expected = ["video_id", "frame_index", "latents", "reward", "death", *schema.action_space, "has_action"]
        if schema.state_names:
            expected += ["state", "state_mask"]
        absent = [column for column in expected if column not in features]
        if absent:
            raise DataError(f"{path}: split '{name}' lacks the column(s) {absent} its schema describes")
        for column in ("state", "state_mask") if schema.state_names else ():
            length = getattr(features[column], "length", None)
            if length != len(schema.state_names):
                raise DataError(
                    f"{path}: split '{name}' stores {length} '{column}' values per frame, but the schema names "
                    f"{len(schema.state_names)} state entries {schema.state_names}"
                )
        length = getattr(features["latents"], "length", None)
        if length != schema.latent_size:
            raise DataError(
                f"{path}: split '{name}' stores {length} latent values per frame, but the schema's latent "
                f"shape {schema.latent_shape} has {schema.latent_size}"
            )
