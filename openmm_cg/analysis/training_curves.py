"""Learning curves from Lightning's CSV log."""
import csv
from pathlib import Path

import numpy as np


def read_epoch_metrics(run_dir) -> dict:
    """{metric: (epochs, values)} for every per-epoch metric of a training run (all its restarts)."""
    rows = []
    files = sorted(Path(run_dir).glob("metrics/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for metrics_csv in files:
        with open(metrics_csv, newline="") as handle:
            rows.extend(csv.DictReader(handle))
    # A resumed run starts a new version at its last checkpoint; an epoch it logs again replaces the earlier row.
    by_epoch = {int(row["epoch"]): {} for row in rows}
    for row in rows:
        by_epoch[int(row["epoch"])].update({k: v for k, v in row.items() if v not in ("", None)})
    series = {}
    for row in (by_epoch[epoch] for epoch in sorted(by_epoch)):
        for key, value in row.items():
            if key in ("epoch", "step") or value in ("", None):
                continue
            series.setdefault(key, ([], []))
            series[key][0].append(int(row["epoch"]))
            series[key][1].append(float(value))
    return {key: (np.array(e), np.array(v)) for key, (e, v) in series.items()}


def plot_training_curves(run_dir, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_epoch_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label in (("train_mse", "training"), ("val_mse", "validation")):
        if key in series:
            epochs, values = series[key]
            ax.plot(epochs, np.sqrt(values), marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("delta-force RMSE (kJ/mol/nm)")
    ax.set_title("force matching")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(path), dpi=120)
    plt.close(fig)
