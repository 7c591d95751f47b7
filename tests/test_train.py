import dataclasses
import json

import pytest
import torch

from latentbasis import LatentBasisError, load_model
from latentbasis.data import digits_images, downsample_to_digits
from latentbasis.train import PRESETS, train

TINY = dataclasses.replace(PRESETS["digits"], resolution=8, block_out_channels=(8, 16),
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8,
                           steps=4, batch_size=8, checkpoint_every=2, warmup_steps=2)


def test_digits_data():
    x, y = digits_images(16)
    assert x.shape == (1797, 1, 16, 16) and x.min() >= -1 and x.max() <= 1 and len(set(y.tolist())) == 10
    from sklearn.datasets import load_digits

    assert abs(downsample_to_digits(digits_images(8)[0]) - load_digits().data).max() < 1e-4


def test_resume_is_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    train(TINY, straight, progress=False)
    resumed = tmp_path / "resumed"
    train(dataclasses.replace(TINY, steps=2), resumed, progress=False)   # a 2-step run ...
    train(TINY, resumed, progress=False)                                  # ... continued to 4
    a, b = load_model(str(straight)), load_model(str(resumed))
    assert a.model_hash == b.model_hash
    assert (straight / "README.md").exists() and (straight / "scheduler_config.json").exists()
    log = json.loads((resumed / "training_log.json").read_text())
    assert log["steps"] == 4 and log["config"]["steps"] == 4          # the settings it finished with


def test_resume_with_other_settings_refused(tmp_path):
    train(TINY, tmp_path, progress=False)
    with pytest.raises(LatentBasisError, match="other settings"):
        train(dataclasses.replace(TINY, lr=1e-3), tmp_path, progress=False)
    with pytest.raises(LatentBasisError, match="past the"):
        train(dataclasses.replace(TINY, steps=2), tmp_path, progress=False)


def test_text_model_trains_and_loads_as_a_pipeline(tmp_path):
    cfg = dataclasses.replace(TINY, dataset="digits-text", text=True, cross_attention_dim=16, text_layers=1,
                              text_heads=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    train(cfg, tmp_path, progress=False)
    m = load_model(str(tmp_path))
    assert m.conditional and m.vae is None and m.x_shape == (1, 8, 8)
    e1, e2 = (m.encode_prompt(p).inputs["encoder_hidden_states"] for p in ("the digit seven", "number 2"))
    assert not torch.allclose(e1, e2)


def test_captions_and_vocabulary():
    from latentbasis.data import caption_vocabulary, digit_caption
    from latentbasis.text import word_tokenizer

    assert digit_caption(7, 0) == "a handwritten seven" and digit_caption(7, 3) == "the number 7"
    tok = word_tokenizer(caption_vocabulary())
    ids = tok("a handwritten digit 7").input_ids
    assert tok.unk_token_id not in ids


def test_shapes_preset_trains_rgb_and_the_card_describes_its_data(tmp_path):
    cfg = dataclasses.replace(TINY, dataset="shapes", in_channels=3, steps=2, checkpoint_every=1)
    train(cfg, tmp_path, progress=False)
    m = load_model(str(tmp_path))
    assert m.x_shape == (3, 8, 8)
    card = (tmp_path / "README.md").read_text()
    assert "procedural shapes" in card and "load_digits" not in card


def test_a_device_that_is_not_there_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(LatentBasisError, match="no CUDA GPU is available"):
        train(dataclasses.replace(TINY, device="cuda"), tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_full_disk_at_the_end_leaves_no_half_model_and_the_run_finishes_later(tmp_path, monkeypatch):
    """The finished model's files appear together or not at all: a full disk while the last of them is written
    (training_log.json) is one message, and the folder holds no weights or config of this run, only the checkpoint
    a rerun finishes from."""
    from pathlib import Path

    real = Path.write_text

    def full(self, *a, **k):
        if self.name == "training_log.json":
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(LatentBasisError, match="No space left on device"):
        train(TINY, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    monkeypatch.setattr(Path, "write_text", real)
    train(TINY, tmp_path, progress=False)                  # resumes at the last step and writes the model
    assert load_model(str(tmp_path)).x_shape == (1, 8, 8)
    assert (tmp_path / "README.md").exists() and (tmp_path / "training_log.json").exists()
