"""Files are safe: user files survive --overwrite, refused runs write nothing, crafted checkpoints run no code,
changed model files are refused, and a training run killed with SIGKILL resumes to the weights of an
uninterrupted one."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from openmm_cg.cli import main
from openmm_cg.errors import InputError, ModelFileError, OutputExistsError
from openmm_cg.training.config import config_from_dict


def folder_digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


class Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path) -> None:
    """Replace ``path`` by a checkpoint that runs code when it is unpickled without restrictions."""
    torch.save({"state_dict": {}, "epoch": 0, "payload": Payload(marker)}, path)


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    from test_force_matching import toy_dataset

    return toy_dataset(300).save(tmp_path_factory.mktemp("toy") / "toy.h5")


def toy_config(dataset: Path, output: Path, max_epochs: int) -> dict:
    return {"seed": 3, "output": str(output), "data": {"dataset": str(dataset), "validation_fraction": 0.25},
            "priors": {"angles": False, "dihedrals": False, "repulsion": False},
            "model": {"cgschnet": {"n_features": 8, "n_interactions": 1, "n_rbf": 8, "cutoff_nm": 1.2,
                                   "n_output_hidden": 8}},
            "training": {"batch_size": 64, "max_epochs": max_epochs, "learning_rate": 5e-3, "lr_patience": 100,
                         "early_stopping_patience": 100}}


@pytest.fixture(scope="module")
def toy_run(toy_dataset, tmp_path_factory):
    from openmm_cg.workflows import train

    output = tmp_path_factory.mktemp("run") / "train"
    summary = train(config_from_dict(toy_config(toy_dataset, output, 2)), progress=False)
    return output, summary


# -- crafted checkpoints: one test per place that loads a checkpoint from a user's folder -------------------

def copy_run(run: Path, copy: Path) -> Path:
    subprocess.run(["cp", "-r", str(run), str(copy)], check=True)
    return copy


def test_export_of_a_run_with_a_crafted_checkpoint_runs_no_code(toy_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    copy = copy_run(toy_run[0], tmp_path / "copy")
    plant(copy / "checkpoints" / "best.ckpt", marker)
    assert main(["export", str(copy), "--out", str(tmp_path / "m.pt")]) == 2
    assert "not a plain training checkpoint" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "m.pt").exists()


def test_training_resume_from_a_crafted_checkpoint_runs_no_code(toy_dataset, toy_run, tmp_path):
    from openmm_cg.workflows import train

    marker = tmp_path / "pwned"
    copy = copy_run(toy_run[0], tmp_path / "train")
    plant(copy / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(InputError, match="not a plain training checkpoint"):
        train(config_from_dict(toy_config(toy_dataset, copy, 3)), resume=True, progress=False)
    assert not marker.exists()


def test_rollout_resume_from_a_crafted_checkpoint_runs_no_code(tmp_path):
    from test_dynamics import SEQUENCES, SMALL, TYPES, initial_history, random_model

    from openmm_cg.dynamics.chains import build_chain_batch
    from openmm_cg.dynamics.model import DYNAMICS_KIND
    from openmm_cg.dynamics.rollout import RolloutConfig, rollout
    from openmm_cg.export import save_model

    metadata = {"kind": DYNAMICS_KIND, "format_version": 1, "step_ps": 10.0, "history": SMALL.history,
                "particles_per_bead": 4, "monomer_types": TYPES, "cutoff_nm": SMALL.cutoff_nm}
    path = save_model(random_model(), metadata, tmp_path / "dynamics.pt", "float64")
    history = initial_history(build_chain_batch(SEQUENCES, TYPES, 4), SMALL.history).numpy()
    config = RolloutConfig(steps=4, report_interval=2, checkpoint_interval=2, collision_nm=0.0)
    rollout(path, SEQUENCES, history, config, tmp_path / "roll", progress=False)
    marker = tmp_path / "pwned"
    plant(tmp_path / "roll" / "rollout.ckpt", marker)
    with pytest.raises(InputError, match="not a rollout checkpoint"):
        rollout(path, SEQUENCES, history, RolloutConfig(**{**config.__dict__, "steps": 6}), tmp_path / "roll",
                progress=False)
    assert not marker.exists()


def test_dynamics_training_resume_from_a_crafted_checkpoint_runs_no_code(tmp_path):
    from test_dynamics import TYPES, zigzag

    from openmm_cg.dynamics.clustering import cluster_bond_graph
    from openmm_cg.dynamics.data import ChainData, PolymerCGData
    from openmm_cg.dynamics.model import DynamicsConfig
    from openmm_cg.dynamics.train import DynamicsTrainConfig
    from openmm_cg.workflows import train_propagator

    rng = np.random.default_rng(0)
    chains = []
    for _ in range(10):
        sequence = "".join(rng.choice(TYPES, size=8))
        assignment = cluster_bond_graph(8, [(k, k + 1) for k in range(7)], 4)
        x = zigzag(2)[None] + 0.01 * rng.normal(size=(30, 2, 3))
        chains.append(ChainData.from_frames(sequence, assignment, x, np.zeros_like(x), 100.0, 300.0))
    PolymerCGData(chains, 2.0, 300.0, TYPES, 4).save(tmp_path / "chains.h5")
    config = DynamicsTrainConfig(data=str(tmp_path / "chains.h5"), output=str(tmp_path / "run"), stride_frames=1,
                                 model=DynamicsConfig(history=2, n_features=4, n_fine_layers=1, n_layers=1, n_rbf=4),
                                 windows_per_batch=8, windows_per_epoch=16, validation_windows=8, max_epochs=1)
    train_propagator(config, progress=False)
    marker = tmp_path / "pwned"
    plant(tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
    config.max_epochs = 2
    with pytest.raises(InputError, match="not a plain training checkpoint"):
        train_propagator(config, resume=True, progress=False)
    assert not marker.exists()


def test_model_weights_beside_a_file_are_read_weights_only(toy_run, tmp_path):
    from openmm_cg.export import load_eager

    _, summary = toy_run
    for suffix in (".pt", ".json", ".state.pt"):
        source = Path(summary["model"]).with_name("model" + suffix)
        (tmp_path / ("m" + suffix)).write_bytes(source.read_bytes())
    marker = tmp_path / "pwned"
    plant(tmp_path / "m.state.pt", marker)
    with pytest.raises(ModelFileError, match="not a plain weights file"):
        load_eager(tmp_path / "m.pt")
    assert not marker.exists()


# -- model files ---------------------------------------------------------------------------------------------

def _flip_byte(path: Path, member_filter) -> None:
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if member_filter(i))
    data = bytearray(path.read_bytes())
    name_length, extra_length = np.frombuffer(bytes(data[info.header_offset + 26:info.header_offset + 30]), "<u2")
    start = info.header_offset + 30 + int(name_length) + int(extra_length)
    data[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_weights_or_the_metadata_is_refused(toy_run, tmp_path):
    from openmm_cg.export import load_exported

    _, summary = toy_run
    weights = tmp_path / "weights.pt"
    weights.write_bytes(Path(summary["model"]).read_bytes())
    _flip_byte(weights, lambda i: "/data/" in i.filename and i.file_size >= 64)
    with pytest.raises(ModelFileError, match="weights do not match the digest"):
        load_exported(weights)
    metadata = tmp_path / "metadata.pt"
    text = Path(summary["model"]).read_bytes()
    metadata.write_bytes(text.replace(b'"temperatures_K": [300.0]', b'"temperatures_K": [310.0]'))
    assert metadata.read_bytes() != text
    with pytest.raises(ModelFileError, match="metadata does not match the digest"):
        load_exported(metadata)
    load_exported(summary["model"])  # the untouched file loads


def test_model_file_names_that_collide_with_sidecars_are_refused(toy_run, tmp_path, capsys):
    run, _ = toy_run
    assert main(["export", str(run), "--out", str(tmp_path / "m.json")]) == 2
    assert "ends in .pt" in capsys.readouterr().err
    (tmp_path / "x.json").write_text('{"my": "notes"}')
    for extra in ([], ["--overwrite"]):
        assert main(["export", str(run), "--out", str(tmp_path / "x.pt")] + extra) == 2
        assert "x.json" in capsys.readouterr().err
    assert (tmp_path / "x.json").read_text() == '{"my": "notes"}' and not (tmp_path / "x.pt").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "y.pt")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "y.pt")]) == 2  # its own files: only with --overwrite
    assert main(["export", str(run), "--out", str(tmp_path / "y.pt"), "--overwrite"]) == 0


def test_abbreviated_options_are_not_accepted(toy_run, tmp_path):
    _, summary = toy_run
    with pytest.raises(SystemExit):
        main(["simulate", summary["model"], "--ov", "--out", str(tmp_path / "sim")])
    assert not (tmp_path / "sim").exists()


# -- run folders -----------------------------------------------------------------------------------------------

def test_overwrite_removes_only_what_the_package_wrote(ala2_exported, ala2_dataset, tmp_path, capsys):
    out = tmp_path / "sim"
    model = str(ala2_exported["float32"])
    argv = ["simulate", model, "--init", str(ala2_dataset[0]), "--steps", "40", "--report-interval", "20", "--checkpoint-interval", "40",
            "--platform", "CPU", "--out", str(out)]
    assert main(argv) == 0
    (out / "notes.txt").write_text("my notes")
    (out / "mine").mkdir()
    (out / "mine" / "model.pt").write_bytes(Path(model).read_bytes())  # the user's model, kept in the folder
    user_files = {k: v for k, v in folder_digest(out).items() if k.startswith(("notes", "mine"))}
    written = (out / "trajectory.dcd").stat().st_mtime_ns
    assert main(argv[:1] + [str(out / "mine" / "model.pt")] + argv[2:] + ["--overwrite"]) == 0
    after = folder_digest(out)
    assert {k: after[k] for k in user_files} == user_files  # byte for byte
    assert (out / "trajectory.dcd").stat().st_mtime_ns != written  # the package's own files were made again

    # A folder of files openmm-cg did not write, or a run of another stage, is refused whatever the flags.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("1,2,3")
    before = folder_digest(foreign)
    assert main(argv[:-1] + [str(foreign), "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err and folder_digest(foreign) == before
    analysis_like = tmp_path / "analysis"
    analysis_like.mkdir()
    (analysis_like / "openmm_cg_run.json").write_text(json.dumps({"stage": "analysis", "files": ["fes.png"]}))
    (analysis_like / "fes.png").write_bytes(b"png")
    assert main(argv[:-1] + [str(analysis_like), "--overwrite"]) == 2
    assert "holds a 'analysis' run" in capsys.readouterr().err and (analysis_like / "fes.png").exists()


def test_a_refused_reference_rerun_changes_nothing(ala2_reference):
    from openmm_cg.workflows import reference

    directory, config = ala2_reference
    before = folder_digest(Path(directory))
    with pytest.raises(InputError, match="temperature_K"):
        reference(type(config)(**{**config.__dict__, "temperature_K": 310.0}), directory)
    assert folder_digest(Path(directory)) == before


# -- training: killed, resumed, identical ----------------------------------------------------------------------

KILLABLE = """
import sys, time
import openmm_cg
from openmm_cg.training import train as module
from openmm_cg.training.config import config_from_dict
from openmm_cg.workflows import train
import json
slow = module.ForceMatching.on_train_epoch_end
def on_train_epoch_end(self):
    slow(self)
    time.sleep(0.4)  # time for the test to kill the run between two epochs
module.ForceMatching.on_train_epoch_end = on_train_epoch_end
train(config_from_dict(json.loads(sys.argv[1])), progress=False)
"""


def test_training_killed_with_sigkill_resumes_to_the_uninterrupted_weights(toy_dataset, tmp_path):
    from openmm_cg.analysis.training_curves import read_epoch_metrics
    from openmm_cg.training.lightning import load_state_dict
    from openmm_cg.workflows import train

    epochs = 6
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, json.dumps(toy_config(toy_dataset, killed, epochs))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if last.exists():
            try:
                if torch.load(last, weights_only=True)["epoch"] >= 2:
                    break
            except Exception:  # being replaced right now
                pass
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    reached = torch.load(last, weights_only=True)["epoch"]
    assert 2 <= reached < epochs, "the run was not killed in the middle"

    resumed = train(config_from_dict(toy_config(toy_dataset, killed, epochs)), resume=True, progress=False)
    straight = train(config_from_dict(toy_config(toy_dataset, tmp_path / "straight", epochs)), progress=False)
    assert resumed["epochs_run"] == straight["epochs_run"] == epochs
    for name in ("last", "best"):
        got = load_state_dict(killed / "checkpoints" / f"{name}.ckpt")
        want = load_state_dict(tmp_path / "straight" / "checkpoints" / f"{name}.ckpt")
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=f"{name}: {key}")
    assert resumed["validation_force_rmse_kJ_per_mol_nm"] == straight["validation_force_rmse_kJ_per_mol_nm"]
    # The resumed start continued where the kill left it: one metrics row per epoch, the same as without the kill.
    got, want = read_epoch_metrics(killed), read_epoch_metrics(tmp_path / "straight")
    assert len(list((killed / "metrics").glob("version_*"))) == 2
    np.testing.assert_array_equal(got["val_mse"][0], np.arange(epochs))
    np.testing.assert_allclose(got["val_mse"][1], want["val_mse"][1], rtol=0)


def test_run_folder_rules(tmp_path):
    """The rules every stage inherits: resumed settings and inputs must match, only the listed settings may
    change, and --overwrite neither deletes an input of the new run nor anything outside the manifest."""
    from openmm_cg.outputs import RunFolder

    source = tmp_path / "input.txt"
    source.write_text("a")
    run = RunFolder.open(tmp_path / "run", "stage", {"a": 1, "n": {"steps": 10}}, {"input": source})
    run.write_json("result.json", {"x": 1})
    with pytest.raises(OutputExistsError):
        RunFolder.open(tmp_path / "run", "stage", {"a": 1, "n": {"steps": 10}}, {"input": source})
    assert RunFolder.open(tmp_path / "run", "stage", {"a": 1, "n": {"steps": 20}}, {"input": source}, resume=True,
                          mutable=("n.steps",)).resumed
    with pytest.raises(InputError, match=r"other settings \(a\)"):
        RunFolder.open(tmp_path / "run", "stage", {"a": 2, "n": {"steps": 20}}, {"input": source}, resume=True)
    source.write_text("b")
    with pytest.raises(InputError, match="different input"):
        RunFolder.open(tmp_path / "run", "stage", {"a": 1, "n": {"steps": 20}}, {"input": source}, resume=True,
                       mutable=("n.steps",))
    with pytest.raises(InputError, match="would delete the input"):
        RunFolder.open(tmp_path / "run", "stage", {"a": 1}, {"input": tmp_path / "run" / "result.json"},
                       overwrite=True)
    assert (tmp_path / "run" / "result.json").exists()
    (tmp_path / "run" / "mine.txt").write_text("keep")
    fresh = RunFolder.open(tmp_path / "run", "stage", {"a": 3}, overwrite=True)
    assert not fresh.resumed and not (tmp_path / "run" / "result.json").exists()
    assert (tmp_path / "run" / "mine.txt").read_text() == "keep"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        RunFolder.open(tmp_path / "file", "stage", {})


def test_a_finished_training_run_can_be_overwritten(toy_dataset, toy_run, tmp_path):
    """--overwrite removes the model file and its sidecars with the rest of the run, then trains again."""
    from openmm_cg.workflows import train

    copy = copy_run(toy_run[0], tmp_path / "train")
    (copy / "my_notes.txt").write_text("keep")
    summary = train(config_from_dict(toy_config(toy_dataset, copy, 1)), overwrite=True, progress=False)
    assert summary["epochs_run"] == 1 and Path(summary["model"]).exists()
    assert json.loads((copy / "summary.json").read_text())["model"] == summary["model"]
    assert (copy / "my_notes.txt").read_text() == "keep"


def test_an_edited_manifest_cannot_make_overwrite_delete_outside_the_folder(tmp_path):
    from openmm_cg.outputs import MANIFEST, RunFolder

    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    RunFolder.open(tmp_path / "run", "stage", {})
    for files in (["../precious.txt"], [str(outside)], "abc", ["sub/file"]):
        manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
        (tmp_path / "run" / MANIFEST).write_text(json.dumps(dict(manifest, files=files)))
        with pytest.raises(InputError, match="nothing is deleted"):
            RunFolder.open(tmp_path / "run", "stage", {}, overwrite=True)
    assert outside.read_text() == "keep"
