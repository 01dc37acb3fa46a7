"""The one-command GPU run (training/ship_on_gpu.sh -> train_shapes_gpu.py) as a CPU dry run at toy sizes: both stages
run at once, the run folder comes back packed in parts under 16 MiB, its weights load, and a second run continues
from what the first returned."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusers_spacetime import AutoencoderKLSpacetime, SpacetimeDiTModel
from training import train_shapes_gpu

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def returned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_out")
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "PYTHON": sys.executable}
    result = subprocess.run(["bash", "training/ship_on_gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parts = sorted(out.glob("run.tar.part*"))
    assert parts and all(part.stat().st_size <= 16 * 2**20 for part in parts) and len(list(out.iterdir())) <= 8
    packed = out / "run.tar"
    packed.write_bytes(b"".join(part.read_bytes() for part in parts))
    with tarfile.open(packed) as archive:
        archive.extractall(out / "unpacked", filter="data")
    return out / "unpacked" / "run"


def test_dry_run_returns_loadable_weights_and_logs(returned_run):
    for name in ("transformer_spacetime", "transformer_frame"):
        stored = load_file(returned_run / name / "diffusion_pytorch_model.safetensors")
        assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
        model = SpacetimeDiTModel.from_pretrained(returned_run / name)
        assert model.config.text_refiner_layers == 2 and model.config.use_pooled_text_modulation
        assert model.config.attention_span == name.split("_")[1]
    vae = AutoencoderKLSpacetime.from_pretrained(returned_run / "vae")
    shipped = AutoencoderKLSpacetime.from_pretrained(REPO / "checkpoints" / "spacetime-shapes" / "vae")
    # Decoder fine-tune: the encoder, and so every latent a transformer reads, is unchanged.
    for (name, tuned), (_, original) in zip(vae.encoder.state_dict().items(), shipped.encoder.state_dict().items()):
        torch.testing.assert_close(tuned.float(), original.float(), msg=name)
    assert vae.config.latents_mean == shipped.config.latents_mean
    vae_results = json.loads((returned_run / "vae_results.json").read_text())
    assert {"psnr_db", "shape_correct"} <= set(vae_results["after"]) and vae_results["steps"] == 2
    dit = json.loads((returned_run / "dit_results.json").read_text())
    assert dit["steps"] == 3 and dit["clips"] == 12
    assert {"spacetime/seen", "frame/held_out_phrasing"} <= set(dit["generation_check"])
    probes = [row for row in dit["sign_probe"] if "sign_probe_train" in row]
    assert probes and set(probes[-1]["sign_probe_held_out"]) == {"spacetime", "frame"}
    log = [json.loads(line) for line in (returned_run / "dit_train_log.jsonl").read_text().splitlines()]
    # Identical treatment: both models start from the same weights and see the same batches.
    first = next(row for row in log if row.get("step") == 1 and "loss_spacetime" in row)
    assert abs(first["loss_spacetime"] - first["loss_frame"]) < 0.05 * first["loss_spacetime"]


def test_second_run_continues_from_the_returned_weights(returned_run, tmp_path):
    args = train_shapes_gpu.parse_args(
        ["--stage", "dit", "--output_dir", str(tmp_path), "--init_from", str(returned_run), "--max_train_time", "60",
         "--max_train_steps", "1", "--train_batch_size", "2", "--pool_size", "4", "--captions_per_combination", "1",
         "--learning_rate", "1e-12", "--num_eval_clips", "3", "--check_steps", "1", "--mixed_precision", "no"]
    )  # fmt: skip
    results = train_shapes_gpu.main(args)
    assert results["steps_total"] == 4 and json.loads((tmp_path / "dit_state.json").read_text())["step"] == 4
    for name in ("transformer_spacetime", "transformer_frame"):
        before = load_file(returned_run / name / "diffusion_pytorch_model.safetensors")
        after = load_file(tmp_path / name / "diffusion_pytorch_model.safetensors")
        assert before.keys() == after.keys()
        for key in before:  # one step at a negligible learning rate: the returned weights, to fp16 rounding
            torch.testing.assert_close(after[key].float(), before[key].float(), rtol=2e-3, atol=2e-3, msg=key)


def test_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        train_shapes_gpu.parse_args(["--stage", "dit", "--output_dir", str(tmp_path), "--max_train_time", "0"])
    with pytest.raises(SystemExit):
        train_shapes_gpu.parse_args(
            ["--stage", "dit", "--output_dir", str(tmp_path), "--init_from", str(tmp_path), "--max_train_time", "9"]
        )


def test_slim_text_encoder_matches_the_full_one_and_refuses_other_words(tmp_path):
    from transformers import AutoModel

    from training.slim_text_encoder import check_vocabulary, load_slim, shapes_texts, write_slim

    base = REPO / "checkpoints" / "spacetime-shapes"
    kept = write_slim(base, tmp_path, shapes_texts(draws=4))
    encoder, tokenizer = load_slim(tmp_path)
    full = AutoModel.from_pretrained(base / "text_encoder", dtype=torch.float32).eval()
    texts = shapes_texts(draws=1, seed=7)[::7]  # other draws than the ones it was cut for
    check_vocabulary(tokenizer, encoder, texts)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(encoder(**batch).last_hidden_state, full(**batch).last_hidden_state)
    assert kept < 200 and sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) < 24 * 2**20
    with pytest.raises(ValueError, match=r"uses tokens \['zebra'\] that the slim text encoder does not keep"):
        check_vocabulary(tokenizer, encoder, ["a purple zebra moves to the right"])


def test_help_names_every_flag(capsys):
    with pytest.raises(SystemExit):
        train_shapes_gpu.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert all(f"--{name}" in shown for name, *_ in train_shapes_gpu.NUMBER_FLAGS) and "cosine to 10% by time" in shown
