"""The VAE trainer's optional adversarial term: the discriminator and losses, a few steps with warm-up, exact resume
(the discriminator and its optimizer are in the checkpoint), flag checks."""

import pytest
import torch

from training import run_log, train_autoencoder
from training.adversarial import (
    SpacetimePatchDiscriminator,
    adaptive_adversarial_weight,
    discriminator_hinge_loss,
    generator_adversarial_loss,
)

from .conftest import killed_run
from .test_train_autoencoder import _args

ADVERSARIAL = ["--adversarial_weight", "0.5", "--adversarial_start_step", "1", "--discriminator_channels", "8",
               "--discriminator_layers", "2"]  # fmt: skip


def test_discriminator_scores_patches_of_videos_and_images():
    discriminator = SpacetimePatchDiscriminator(channels=8, num_layers=2)
    assert discriminator(torch.zeros(2, 3, 5, 32, 32)).shape == (2, 1, 5, 8, 8)
    assert discriminator(torch.zeros(2, 3, 1, 32, 48)).shape == (2, 1, 1, 8, 12)


def test_hinge_losses_and_the_adaptive_weight():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert discriminator_hinge_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert generator_adversarial_loss(fake).item() == pytest.approx(1.0)
    weight = torch.tensor([1.0, -2.0], requires_grad=True)
    reconstruction_loss, adversarial_loss = (3 * weight).sum(), (weight**2).sum()  # gradients (3, 3) and (2, -4)
    balance = adaptive_adversarial_weight(reconstruction_loss, adversarial_loss, weight)
    assert balance.item() == pytest.approx(18**0.5 / (20**0.5 + 1e-4)) and not balance.requires_grad


def test_a_few_steps_start_the_discriminator_after_the_warm_up(shapes_dir, tmp_path):
    result = train_autoencoder.main(_args(shapes_dir, tmp_path, "--max_train_steps", "3", *ADVERSARIAL))
    assert all(torch.isfinite(torch.tensor(result["losses"])))
    log = run_log.read_train_log(tmp_path)
    assert [row["discriminator"] == 0 for row in log] == [True, False, False]  # step 1: warm-up only
    assert log[0]["adversarial"] == 0 and log[1]["adversarial"] != 0
    assert (tmp_path / "vae" / "config.json").exists()


def test_resume_reproduces_the_uninterrupted_losses_with_the_discriminator(shapes_dir, tmp_path):
    full = train_autoencoder.main(
        _args(shapes_dir, tmp_path / "a", "--max_train_steps", "4", "--checkpointing_steps", "2", *ADVERSARIAL)
    )
    resumed_dir = killed_run(tmp_path / "a", 2, tmp_path / "b")
    resumed = train_autoencoder.main(
        _args(shapes_dir, resumed_dir, "--max_train_steps", "4", "--checkpointing_steps", "2",
              "--resume_from_checkpoint", "latest", *ADVERSARIAL)
    )  # fmt: skip
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "flag, value, match",
    [
        ("--adversarial_weight", "-1", "--adversarial_weight must be 0 or more"),
        ("--adversarial_start_step", "-1", "--adversarial_start_step must be 0 or more"),
        ("--discriminator_channels", "6", "--discriminator_channels must be a positive multiple of 4"),
        ("--discriminator_layers", "0", "--discriminator_layers must be at least 1"),
        ("--discriminator_learning_rate", "0", "--discriminator_learning_rate must be positive"),
    ],
)
def test_bad_adversarial_flags_name_the_flag(shapes_dir, tmp_path, flag, value, match):
    with pytest.raises(ValueError, match=match):
        _args(shapes_dir, tmp_path, flag, value)
