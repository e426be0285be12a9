"""data.synthetic: the demo game passes the importer checks and is learnable by a linear probe."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from sklearn.metrics import roc_auc_score

from data.prepare import prepare
from data.schema import load_prepared
from data.synthetic import generate, heading_slice
from tests.data_helpers import assert_matches_truth, load_truth


@pytest.fixture(scope="module", params=[False, True], ids=["health_bar", "is_dead"])
def synthetic(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate(root / "raw", num_videos=16, frames=300, seed=0, is_dead=request.param)
    report = prepare(root / "raw" / "latents", root / "raw" / "features", root / "out", validation_fraction=0.25, progress=False)
    dataset_dict, schema = load_prepared(root / "out")
    return root / "raw", report, dataset_dict, schema


def test_synthetic_passes_importer_checks(synthetic):
    raw, report, dataset_dict, schema = synthetic
    assert assert_matches_truth(raw, dataset_dict, schema.action_space, schema.action_keys) == 16
    truths = [load_truth(raw, f"synthetic_{i:04d}") for i in range(16)]
    assert report["deaths"]["total"] == sum(len(t["death_onsets"]) for t in truths) > 5
    assert report["carried"]["events"] > 0 and report["gaps"] > 0
    assert report["reward"]["total"] == pytest.approx(
        sum(0.01 * sum(t["gold_events"].values()) - 10 * len(t["death_onsets"]) for t in truths), abs=1e-3
    )


def test_generation_is_deterministic(tmp_path):
    def digest(folder):
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()

    generate(tmp_path / "a", num_videos=2, frames=80, seed=3)
    generate(tmp_path / "b", num_videos=2, frames=80, seed=3)
    generate(tmp_path / "c", num_videos=2, frames=80, seed=4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_heading_slices():
    assert [heading_slice(np.radians(d)) for d in (0, 19.9, 20, 185, 359, -10)] == [0, 0, 1, 9, 17, 17]


def test_linear_probe_predicts_rewards_and_movement(synthetic):
    _, _, dataset_dict, _ = synthetic

    def arrays(split):
        table = split.data
        latents = table.column("latents").combine_chunks().flatten().to_numpy().astype(np.float32)
        return (
            latents.reshape(len(split), -1),
            table.column("reward").to_numpy() != 0,
            table.column("movement").to_numpy(),
        )

    x_train, event_train, move_train = arrays(dataset_dict["train"])
    x_test, event_test, move_test = arrays(dataset_dict["validation"])

    def probe(**kwargs):  # standardised inputs make lbfgs converge in well under a second
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, **kwargs))

    with threadpool_limits(1):  # BLAS threads fighting over shared cores make lbfgs 50x slower
        reward_probe = probe(class_weight="balanced").fit(x_train, event_train)
        move_probe = probe().fit(x_train, move_train)
    auc = roc_auc_score(event_test, reward_probe.predict_proba(x_test)[:, 1])
    assert auc >= 0.9, auc
    accuracy = (move_probe.predict(x_test) == move_test).mean()
    majority = np.bincount(move_test).max() / len(move_test)
    assert accuracy >= 2 * majority, (accuracy, majority)
