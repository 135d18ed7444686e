"""A run stopped at step k and resumed from its checkpoint sees the batches and losses of the
uninterrupted run, bit for bit (CPU, bucketed images + videos), inside an epoch and at its end."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lvdm.data.datamodule import VideoDataModule
from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.dit import DiT
from lvdm.training.module import LatentDiffusionModule
from lvdm.text.words import WordTextEncoder

from test_bucket_stream import bucket_config, mixed  # noqa: F401  (the mixed corpus fixture)


class Record(Callback):
    def __init__(self):
        self.steps, self.indices = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append((trainer.global_step, tuple(batch["key"]), tuple(batch["video"].shape),
                           outputs["loss"].item()))
        self.indices.append(batch_idx)


def _fit(root, max_steps, ckpt_dir, ckpt_path=None, every=None, save_at_end=None, samples_per_epoch=12,
         record=None):
    L.seed_everything(0)
    dit = DiT(in_channels=3, patch_size=(1, 8, 8), hidden_size=32, depth=1, num_heads=2,
              conditioning="cross_attn", context_dim=16)
    model = LatentDiffusionModule(dit, WordTextEncoder(dim=16, max_length=4), RectifiedFlow(), caption_dropout=0.5)
    # 4 batches an epoch: step 6 falls inside the second epoch, steps 4 and 8 end the first two
    data = VideoDataModule(str(root / "train-*.tar"), batch_size=3, samples_per_epoch=samples_per_epoch,
                           shuffle_buffer=8, buckets=bucket_config())
    record = record or Record()
    callbacks = [record]
    if every:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=every, save_top_k=-1))
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks, num_sanity_val_steps=0,
                        default_root_dir=ckpt_dir)  # Lightning's own last checkpoint goes here, not into the cwd
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    if save_at_end:
        trainer.save_checkpoint(save_at_end)
    return record.steps


@pytest.fixture(scope="module")
def full(mixed, tmp_path_factory):  # noqa: F811
    return _fit(mixed, 12, tmp_path_factory.mktemp("full"))


def test_resumed_run_matches_uninterrupted_bit_for_bit(mixed, full, tmp_path, recwarn):  # noqa: F811
    _fit(mixed, 6, tmp_path / "part", every=6)
    (ckpt,) = (tmp_path / "part").glob("*step=6*.ckpt")
    state = torch.load(ckpt, weights_only=True)
    assert state["VideoDataModule"]["stream"]["batches"] == 2  # 6 = one epoch of 4 + 2
    recwarn.clear()
    resumed = _fit(mixed, 12, tmp_path / "resumed", ckpt_path=str(ckpt))
    # Lightning warned that the train dataloader "is not resumable": it is (issue 25)
    assert not [w for w in recwarn if "not resumable" in str(w.message)]
    assert len({shape for _, _, shape, _ in full}) >= 2  # several buckets in the run
    assert resumed == full[6:]


@pytest.mark.parametrize("step", [4, 8])
def test_resume_from_an_epochs_last_batch_starts_the_next_epoch(mixed, full, tmp_path, step):  # noqa: F811
    # A checkpoint written on the last batch of an epoch used to replay that epoch's batches.
    _fit(mixed, step, tmp_path / "part", every=4)
    (ckpt,) = (tmp_path / "part").glob(f"*step={step}.ckpt")
    assert torch.load(ckpt, weights_only=True)["VideoDataModule"]["stream"]["batches"] == 4  # a whole epoch
    resumed = _fit(mixed, 12, tmp_path / "resumed", ckpt_path=str(ckpt))
    assert [keys for _, keys, _, _ in resumed] == [keys for _, keys, _, _ in full[step:]]
    assert resumed == full[step:]


def test_continuing_a_run_that_max_steps_stopped_mid_epoch(mixed, full, tmp_path):  # noqa: F811
    # Lightning counts an epoch cut short by max_steps as finished (epoch 2 at step 6 here, with
    # 2 of 4 batches done): the stream keeps its own epoch, so the run continues with batch 3 of 2.
    _fit(mixed, 6, tmp_path / "part", save_at_end=tmp_path / "end.ckpt")
    state = torch.load(tmp_path / "end.ckpt", weights_only=True)
    assert (state["epoch"], state["VideoDataModule"]["stream"]["epoch"]) == (2, 1)
    resumed = _fit(mixed, 12, tmp_path / "resumed", ckpt_path=str(tmp_path / "end.ckpt"))
    assert resumed == full[6:]


def test_lightning_counts_batches_in_the_new_layout_after_a_change(mixed, tmp_path):  # noqa: F811
    # Issue 25: 6 batches done of an 8-batch epoch, resumed with 4-batch epochs: the stream goes
    # on with the next epoch, and Lightning's batch index (its progress bar) used to go on at 6
    # (a checkpoint written after the batch's end, as at a validation or the end of training).
    _fit(mixed, 6, tmp_path / "part", samples_per_epoch=24, save_at_end=tmp_path / "end.ckpt")
    ckpt = tmp_path / "end.ckpt"
    record = Record()
    with pytest.warns(UserWarning, match="changed layout"):
        _fit(mixed, 12, tmp_path / "resumed", ckpt_path=str(ckpt), record=record)
    assert record.indices == [0, 1, 2, 3, 0, 1]
