"""Training runs: split by trajectory, saved config, resume, refusals."""
import json

import numpy as np
import pytest
import yaml

from openmm_cg.analysis.training_curves import read_epoch_metrics
from openmm_cg.data.datasets import trajectory_split
from openmm_cg.errors import InputError, OutputExistsError
from openmm_cg.training.config import config_from_dict, load_config
from openmm_cg.workflows import export_run, train


def _config(dataset_path, output, **training):
    return config_from_dict({
        "seed": 0, "output": str(output), "data": {"dataset": str(dataset_path), "validation_fraction": 0.5},
        "model": {"cgschnet": {"n_features": 16, "n_interactions": 1, "n_rbf": 8, "n_output_hidden": 8}},
        "training": {"batch_size": 256, "max_epochs": 1, **training},
    })


def test_train_resume_and_export(ala2_dataset, tmp_path):
    path, dataset = ala2_dataset
    config = _config(path, tmp_path / "run")
    first = train(config, progress=False)
    assert set(first["train_trajectories"]).isdisjoint(first["validation_trajectories"])
    assert first["train_frames"] + first["validation_frames"] == dataset.n_frames
    saved = load_config(tmp_path / "run" / "config.json")
    assert saved == config  # the expanded config is saved next to the outputs
    for name in ("priors.json", "summary.json", "model.pt", "checkpoints/last.ckpt"):
        assert (tmp_path / "run" / name).exists(), name

    with pytest.raises(OutputExistsError):
        train(config, progress=False)
    config.training.max_epochs = 2
    second = train(config, resume=True, progress=False)
    assert second["epochs_run"] == 2
    series = read_epoch_metrics(tmp_path / "run")  # both the first run and the resumed one
    assert sorted(set(series["val_mse"][0])) == [0, 1]
    config.training.max_epochs, config.data.validation_frame_stride = 3, 3  # neither changes the training data
    third = train(config, resume=True, progress=False)
    assert third["train_frames"] == first["train_frames"]
    assert third["validation_frames"] == -(-first["validation_frames"] // 3)

    changed = _config(path, tmp_path / "run")
    changed.training.max_epochs = 3
    changed.model.cgschnet.n_features = 32
    with pytest.raises(InputError, match="other settings"):
        train(changed, resume=True, progress=False)
    exported = export_run(tmp_path / "run", tmp_path / "again.pt", dtype="float64")
    assert json.loads(exported.with_suffix(".json").read_text())["dtype"] == "float64"


def test_split_is_by_whole_trajectories(ala2_dataset):
    _, dataset = ala2_dataset
    train_ids, val_ids = trajectory_split(dataset, 0.5, seed=0)
    assert len(train_ids) == 1 and len(val_ids) == 1 and set(train_ids).isdisjoint(val_ids)
    single = dataset.select_trajectories([0])
    with pytest.raises(InputError, match="at least two trajectories"):
        trajectory_split(single, 0.5, seed=0)


def test_config_errors(tmp_path):
    with pytest.raises(InputError, match="unknown config keys in training"):
        config_from_dict({"data": {"dataset": "x.h5"}, "training": {"max_epoch": 3}})
    with pytest.raises(InputError, match="data.dataset"):
        config_from_dict({})
    with pytest.raises(InputError, match="architecture"):
        config_from_dict({"data": {"dataset": "x.h5"}, "model": {"architecture": "painn"}})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": {"dataset": "x.h5"}, "seed": 3}))
    assert load_config(tmp_path / "c.yaml").seed == 3
