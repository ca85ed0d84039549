"""The one PyTorch Lightning set-up of the package: force matching and learned dynamics train through it.

What it guarantees for a run folder (``outputs.RunFolder``):
- ``checkpoints/best.ckpt`` (lowest monitored validation loss) and ``checkpoints/last.ckpt`` after every
  epoch, each written atomically, so a run killed at any moment resumes from its last finished epoch;
- the shuffle of epoch e depends only on the seed and e (:class:`EpochSampler`), so a resumed run draws the
  batches an uninterrupted one would, and ends with the same weights;
- checkpoints are read weights-only (tensors and plain containers): a crafted checkpoint cannot run code;
- per-epoch metrics in ``metrics/version_*/metrics.csv`` (one version per start), read back by
  ``analysis.training_curves`` with the rows of a resumed epoch taken from the later start.
"""
import itertools
import os
from pathlib import Path
from typing import Optional

import torch

from ..errors import InputError
from ..outputs import load_plain


def lightning():
    import lightning.pytorch as pl

    return pl


class EpochSampler(torch.utils.data.Sampler):
    """torch's ``RandomSampler`` (seeded ``generator``, without replacement, ``num_samples`` per epoch) that draws
    in epoch e what an uninterrupted run draws in its epoch e: each epoch reseeds the generator and replays it
    through the earlier epochs as a DataLoader with ``batch_size`` consumed it, including the worker seed that a
    DataLoader holding the same generator draws before every epoch (``loader_draws_seed``). Lightning sets the
    epoch before the first batch of each epoch."""

    def __init__(self, n_items: int, seed: int, generator: torch.Generator, batch_size: int,
                 num_samples: Optional[int] = None, loader_draws_seed: bool = False):
        self.n_items, self.seed, self.generator, self.batch_size = int(n_items), int(seed), generator, int(batch_size)
        self.num_samples, self.loader_draws_seed = num_samples, loader_draws_seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples or self.n_items

    def __iter__(self):
        self.generator.manual_seed(self.seed)
        sampler = torch.utils.data.RandomSampler(range(self.n_items), num_samples=self.num_samples,
                                                 generator=self.generator)
        for epoch in range(self.epoch + 1):
            if self.loader_draws_seed:
                torch.empty((), dtype=torch.int64).random_(generator=self.generator)
            if epoch < self.epoch:
                # A loader stops after len(self) items; a partial last batch asks for more and so runs torch's
                # sampler to its end, which draws one more permutation.
                items = iter(sampler)
                for _ in itertools.islice(items, len(self)):
                    pass
                if len(self) % self.batch_size:
                    for _ in items:
                        pass
        return iter(sampler)


def _atomic_checkpoint_class():
    pl = lightning()

    class AtomicCheckpoint(pl.callbacks.ModelCheckpoint):
        """A ModelCheckpoint that writes beside the target and renames: a kill never leaves half a checkpoint."""

        def _save_checkpoint(self, trainer, filepath: str) -> None:
            tmp = filepath + ".tmp"
            super()._save_checkpoint(trainer, tmp)
            if trainer.is_global_zero:
                os.replace(tmp, filepath)
            self._last_checkpoint_saved = filepath

    return AtomicCheckpoint


def make_trainer(run, monitor: str, max_epochs: int, early_stopping_patience: int,
                 max_time_minutes: Optional[float] = None, progress: bool = True, accelerator: str = "auto",
                 devices="auto"):
    """A Lightning Trainer writing into the run folder ``run``."""
    pl = lightning()
    checkpoint_class = _atomic_checkpoint_class()
    directory = run.file("checkpoints")
    best = checkpoint_class(dirpath=directory, monitor=monitor, mode="min", filename="best", save_top_k=1,
                            enable_version_counter=False)
    # No monitor: saved after every epoch. Listed after ``best`` so that it holds best's updated state.
    last = checkpoint_class(dirpath=directory, monitor=None, filename="last", save_top_k=1,
                            enable_version_counter=False)
    callbacks = [pl.callbacks.EarlyStopping(monitor=monitor, patience=early_stopping_patience, mode="min"), best, last]
    if progress:
        callbacks.append(pl.callbacks.TQDMProgressBar(refresh_rate=20))
    run.file("metrics")
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator=accelerator, devices=devices, callbacks=callbacks,
        # A new version folder per (re)start: Lightning's CSV writer would overwrite earlier epochs.
        logger=pl.loggers.CSVLogger(run.path, name="metrics"), default_root_dir=run.path,
        enable_progress_bar=progress, enable_model_summary=False, deterministic=False,
        max_time={"minutes": max_time_minutes} if max_time_minutes else None,
        num_sanity_val_steps=0, log_every_n_steps=50,
    )
    return trainer


def fit(trainer, task, train_loader, val_loader, run, resume: bool) -> str:
    """Train (continuing from ``checkpoints/last.ckpt`` when resuming); returns the best checkpoint's path."""
    last = Path(run.path) / "checkpoints" / "last.ckpt"
    resume_from = str(last) if (resume and last.exists()) else None
    if resume_from is not None:
        load_state_dict(resume_from)  # a clear error for a checkpoint that is not plain data, before Lightning reads it
    trainer.fit(task, train_loader, val_loader, ckpt_path=resume_from, weights_only=True)
    best = Path(run.path) / "checkpoints" / "best.ckpt"
    return str(best if best.exists() else last)


def load_state_dict(checkpoint_path) -> dict:
    """The ``state_dict`` of a Lightning checkpoint, read weights-only."""
    checkpoint = load_plain(checkpoint_path, "a plain training checkpoint")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise InputError(f"{checkpoint_path} is not a training checkpoint (no state_dict)")
    return checkpoint["state_dict"]


def loader(dataset, batch_size: int, shuffle: bool, seed: int, collate_fn=None, num_samples: Optional[int] = None,
           loader_draws_seed: bool = True):
    """A DataLoader: a seeded order that a resumed run repeats (``EpochSampler``) when ``shuffle``, the given
    order otherwise. ``loader_draws_seed``: the DataLoader shares the sampler's generator (and draws its worker
    seed from it each epoch), as force matching always did; learned dynamics kept them apart."""
    generator = torch.Generator().manual_seed(seed)
    sampler = EpochSampler(len(dataset), seed, generator, batch_size, num_samples, loader_draws_seed) if shuffle else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                                       generator=generator if loader_draws_seed else None)
