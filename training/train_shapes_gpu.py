"""The shipped shapes model's GPU training: clips rendered on the device, captions in many phrasings, two stages.

    python training/train_shapes_gpu.py --stage vae --output_dir runs/gpu --max_train_time 400
    python training/train_shapes_gpu.py --stage dit --output_dir runs/gpu --max_train_time 380

`vae` fine-tunes the shipped VAE's decoder (the encoder, and so every latent and `latents_mean`/`latents_std`, stay
as they are): L1 weighted towards the colored object plus an L1 on image gradients, on freshly rendered clips with
random recoloring, so that it draws a 12 px square with corners. `dit` trains the spacetime transformer and its
per-frame baseline (`attention_span="frame"`) in lockstep, from the same initial weights on the same batches,
captions, noise and timesteps: identical treatment by construction. Its data is a pool of clips rendered on the
device and encoded once; every draw of a clip gets a caption drawn from a bank of encoded phrasings of its
combination (`make_shapes_dataset.varied_caption`, training phrasings; the canonical one a quarter of the time), so
the model sees each direction said many ways. The two stages share no state, so they run at once on one GPU. Each
writes fp16 weights atomically every `--save_every_seconds` and at the end, so a run cut short still returns its
last weights; `--init_from` continues from a previous run's returned weights (a fresh optimizer: moments are not
returned, to keep the files small).

Why a loop of its own rather than train_text_to_video.py: data is rendered on the device and captions are drawn
per step (no files, no data loader), and two models step together on one batch; the pieces are shared
(`varied_caption`, `render_specs`, the pipeline's `encode_prompt`/`normalize_latents`, `condition_mask`,
`color_augmentation`, `saturation_weights`, diffusers' `EMAModel` and timestep density).

Sign tracking: every `--probe_every` steps, each transformer's loss at noise level 0.9 on held probe clips with
their own caption and with the direction reversed (same phrasing, same noise): the share of clips where the own
caption wins is logged as `sign_probe` (0.5 = the direction words are ignored), for training and held-out phrasings.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: find `training`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers.training_utils import EMAModel, compute_density_for_timestep_sampling

from diffusers_spacetime import AutoencoderKLSpacetime, SpacetimeDiTModel, SpacetimeVideoPipeline, evaluation
from diffusers_spacetime.evaluation import psnr
from training import make_shapes_dataset as shapes
from training.checkpointing import save_folder_atomically
from training.evaluate import to_uint8
from training.flow_matching import condition_mask
from training.shapes_render import draw_specs, render_specs
from training.slim_text_encoder import check_vocabulary, load_slim
from training.train_autoencoder import color_augmentation, saturation_weights

REPO = Path(__file__).resolve().parents[1]
SPANS = ("spacetime", "frame")


# (flag, type, default, help) of the numbers each stage tunes; the help says which stage reads a flag.
NUMBER_FLAGS = (
    ("max_train_steps", int, None, "Stop after this many steps as well."),
    ("train_batch_size", int, None, "Clips per step (vae 48, dit 256)."),
    ("learning_rate", float, None, "Peak learning rate (vae 2e-4, dit 4e-4)."),
    ("lr_warmup_steps", int, 200, "Linear warm-up, then cosine to 10%% by time."),
    ("pool_size", int, 40000, "dit: clips rendered and encoded once."),
    ("captions_per_combination", int, 24, "dit: encoded phrasings per combination."),
    ("caption_dropout", float, 0.1, "dit: share of empty captions."),
    ("canonical_caption_prob", float, 0.25, "dit: share of canonical captions."),
    ("condition_frames_prob", float, 0.25, "dit: image-to-video training."),
    ("max_condition_frames", int, 2, "dit: most clean latent frames."),
    ("flow_shift", float, 3.0, "dit: shift of the training sigmas."),
    ("logit_mean", float, 0.5, "dit: logit-normal mean (>0: more high noise)."),
    ("ema_decay", float, 0.999, "dit: EMA decay of the shipped weights."),
    ("max_text_tokens", int, 40, "dit: fixed token budget (one compiled shape)."),
    ("saturation_weight", float, 20.0, "vae: loss weight on colored pixels."),
    ("edge_weight", float, 0.5, "vae: weight of the image-gradient L1."),
    ("color_augmentation", float, 0.5, "vae: share of recolored clips."),
    ("num_eval_clips", int, 48, "Clips/prompts of the final measurements."),
    ("check_steps", int, 25, "dit: denoising steps of the final generations."),
    ("probe_every", int, 500, "dit: steps between sign probes."),
    ("log_every", int, 50, "Steps between log lines."),
    ("save_every_seconds", float, 90.0, "Seconds between weight saves."),
    ("seed", int, 0, "Seed of data, captions, noise and initial weights."),
)
POSITIVE_FLAGS = ("max_train_time", "pool_size", "num_eval_clips", "probe_every", "log_every", "max_text_tokens",
                  "check_steps", "captions_per_combination")  # fmt: skip
PROBABILITY_FLAGS = ("caption_dropout", "canonical_caption_prob", "condition_frames_prob", "color_augmentation")


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, each with its help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True, choices=("vae", "dit"), help="What to train.")
    parser.add_argument("--output_dir", required=True, help="Run folder: weights, train logs, results.")
    parser.add_argument("--max_train_time", type=float, required=True, help="Seconds of training (the loop's budget).")
    folders = (  # (flag, default, help)
        ("base_model", str(REPO / "checkpoints" / "spacetime-shapes"), "Pipeline folder whose VAE, text encoder, "
         "tokenizer and scheduler are used (and whose VAE is tuned)."),
        ("transformer_config", str(REPO / "training" / "configs" / "dit_shapes_text.json"), "JSON config of the "
         "transformers (attention_span is set per model)."),
        ("text_encoder", None, "dit: a slim text encoder folder (training/slim_text_encoder.py) instead of the base "
         "model's: the same states for every caption the run encodes, in half the size that the device has to carry."),
        ("init_from", None, "A previous run's output_dir: continue from its returned weights."),
    )  # fmt: skip
    for name, default, text in folders:
        parser.add_argument(f"--{name}", default=default, help=text)
    for name, kind, default, text in NUMBER_FLAGS:
        parser.add_argument(f"--{name}", type=kind, default=default, help=text)
    parser.add_argument(
        "--holdout",
        action="append",
        default=None,
        help="Combinations kept out of training (as make_shapes_dataset.py); default: the shipped model's two.",
    )
    parser.add_argument("--mixed_precision", default="bf16", choices=("bf16", "no"), help="bf16 autocast on GPU.")
    parser.add_argument("--compile", action="store_true", help="torch.compile the trained modules (falls back).")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in POSITIVE_FLAGS:
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    for name in PROBABILITY_FLAGS:
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name} must be a probability in [0, 1], got {getattr(args, name)}")
    if args.init_from and Path(args.init_from).resolve() == Path(args.output_dir).resolve():
        parser.error("--init_from must be another folder than --output_dir (the returned run is read, not rewritten)")
    args.train_batch_size = args.train_batch_size or (48 if args.stage == "vae" else 256)
    args.learning_rate = args.learning_rate or (2e-4 if args.stage == "vae" else 4e-4)
    if args.train_batch_size < 1 or not args.learning_rate > 0:
        parser.error("--train_batch_size and --learning_rate must be positive")
    return args


# 1. Shared pieces
def learning_rate(args, step: int, elapsed: float) -> float:
    """Linear warm-up over steps, then cosine from the peak to 10% over the time budget (steps are not known)."""
    if step < args.lr_warmup_steps:
        return args.learning_rate * (step + 1) / args.lr_warmup_steps
    progress = min(elapsed / args.max_train_time, 1.0)
    return args.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def within_budget(args, step: int, train_start: float) -> bool:
    """Whether the loop takes another step: time is left and, with --max_train_steps, steps too."""
    return time.monotonic() - train_start < args.max_train_time and step < (args.max_train_steps or 1 << 62)


def optimizer_step(optimizer, params, lr: float, forward_backward, name: str, step: int) -> torch.Tensor:
    """Sets the learning rate, runs `forward_backward` (zeroes, computes and backpropagates the loss, returns it),
    refuses a non-finite loss, clips the gradient norm to 1 and steps."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = forward_backward()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{name} loss is {loss.item()} at step {step + 1}: lower --learning_rate")
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return loss


def autocast(args, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16")


def maybe_compile(module, args):
    return torch.compile(module) if args.compile else module


def eager_on_failure(step_fn, compiled: dict, eager: dict, name: str, step: int, run: Run):
    """Runs `step_fn`; if the compiled `compiled[name]` fails on the first step, logs why and goes on eagerly."""
    if step > 0 or compiled[name] is eager[name]:
        return step_fn()
    try:
        return step_fn()
    except Exception as error:  # a compiler failure must not cost the GPU window: eager is slower, not wrong
        run.log({"event": "compile_failed", "module": name, "error": f"{type(error).__name__}: {error}"[:500]})
        compiled[name] = eager[name]
        return step_fn()


class Run:
    """The run folder: log lines to stdout and `<stage>_train_log.jsonl`, results, fp16 weights saved atomically."""

    def __init__(self, args):
        self.args, self.dir = args, Path(args.output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.start, self.last_save = time.monotonic(), time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def log(self, row: dict) -> None:
        row = {"stage": self.args.stage, "elapsed_s": round(self.elapsed(), 1), **row}
        print(json.dumps(row), flush=True)
        with open(
            self.dir / f"{self.args.stage}_train_log.jsonl", "a"
        ) as handle:  # one file per stage: both run at once
            handle.write(json.dumps(row) + "\n")

    def save_fp16(self, model, name: str) -> None:
        half = copy.deepcopy(model).to(torch.float16)
        save_folder_atomically(lambda folder: half.save_pretrained(folder, safe_serialization=True), self.dir / name)

    def write_results(self, results: dict) -> None:
        path = self.dir / f"{self.args.stage}_results.json"
        path.write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(json.dumps(results, default=float), flush=True)


def holdouts(args):
    return shapes.parse_holdouts(args.holdout or list(shapes.SHIPPED_HOLDOUTS))


def detector_scores(frames: np.ndarray, specs) -> dict:
    """The evaluation detector's color/shape/direction accuracy (%) on uint8 (B, F, H, W, 3) clips."""
    rows = [evaluation.evaluate_video(clip, spec.attributes) for clip, spec in zip(frames, specs)]
    summary = evaluation.summarize(rows)
    return {key: round(summary[f"{key}_pct"], 1) for key in ("color_correct", "shape_correct", "direction_correct")}


# 2. VAE: decoder fine-tune
@torch.no_grad()
def vae_measure(vae, specs, device, args) -> dict:
    """PSNR (dB) and detector accuracy of the VAE's reconstructions (posterior mode) of `specs`' clips."""
    video = render_specs(specs, device)
    with autocast(args, device):
        decoded = torch.cat(
            [vae.decode(vae.encode(part).latent_dist.mode()).sample.float() for part in video.split(16)]
        )
    truth, rec = to_uint8(video), to_uint8(decoded)
    return {"psnr_db": round(float(np.mean([psnr(a, b) for a, b in zip(truth, rec)])), 2),
            **detector_scores(rec, specs)}  # fmt: skip


def train_vae(args, device, run: Run) -> dict:
    source = Path(args.init_from) / "vae" if args.init_from else Path(args.base_model) / "vae"
    vae = AutoencoderKLSpacetime.from_pretrained(source, torch_dtype=torch.float32).to(device)
    vae.encoder.requires_grad_(False)  # frozen: the latents every transformer reads stay valid
    params = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.0, fused=device.type == "cuda")
    grid = shapes.combination_grid(holdouts(args))
    eval_specs = draw_specs(shapes.combination_grid(holdouts(args), only_holdout=True) + grid, args.num_eval_clips,
                            np.random.default_rng([args.seed, 99]))  # fmt: skip
    results = {"before": vae_measure(vae, eval_specs, device, args), "source": str(source)}
    run.log({"event": "before", **results["before"]})
    rng, generator = np.random.default_rng([args.seed, 1]), torch.Generator(device).manual_seed(args.seed)
    eager = {"decode": vae.decode}
    decoders = {"decode": maybe_compile(vae.decode, args)}
    step, clips, train_start = 0, 0, time.monotonic()
    while within_budget(args, step, train_start):
        lr = learning_rate(args, step, time.monotonic() - train_start)
        video = render_specs(draw_specs(grid, args.train_batch_size, rng), device)  # (B, 3, F, H, W)
        video = color_augmentation(video, generator, args.color_augmentation)
        with torch.no_grad():
            latents = vae.encode(video).latent_dist.sample(generator)

        def forward_backward():
            optimizer.zero_grad(set_to_none=True)
            with autocast(args, device):
                reconstruction = decoders["decode"](latents).sample.float()
            weights = saturation_weights(video, args.saturation_weight)  # (B, 1, F, H, W)
            loss = ((reconstruction - video).abs() * weights).mean()
            for dim in (3, 4):  # image gradients along rows and columns: sharp edges and corners
                edge = (reconstruction.diff(dim=dim) - video.diff(dim=dim)).abs()
                loss = loss + args.edge_weight * (edge * weights.narrow(dim, 1, edge.shape[dim])).mean()
            loss.backward()
            return loss

        compiled_or_eager = partial(eager_on_failure, forward_backward, decoders, eager, "decode", step, run)
        loss = optimizer_step(optimizer, params, lr, compiled_or_eager, "vae", step)
        step, clips = step + 1, clips + len(video)
        if step % args.log_every == 0:
            rate = clips / (time.monotonic() - train_start)
            run.log({"step": step, "loss": round(loss.item(), 5), "clips_per_s": round(rate, 1)})
        if time.monotonic() - run.last_save > args.save_every_seconds:
            run.save_fp16(vae, "vae")
            run.last_save = time.monotonic()
    results["after"] = vae_measure(vae, eval_specs, device, args)
    results.update(steps=step, clips=clips, train_seconds=round(time.monotonic() - train_start, 1),
                   clips_per_s=round(clips / max(time.monotonic() - train_start, 1e-9), 1))  # fmt: skip
    run.log({"event": "after", **results["after"]})
    run.save_fp16(vae, "vae")
    return results


# 3. Transformers: spacetime and per-frame in lockstep
class CaptionBank:
    """Every caption a training step can draw, encoded once: per combination of `grid`, its canonical caption and
    `per_combination - 1` training phrasings; and the empty prompt (caption dropout). A step draws from it on the
    device, so the text encoder, the tokenizer and Python caption writing stay out of the training loop.
    """

    def __init__(self, pipe, grid, per_combination: int, args, seed):
        rng = np.random.default_rng(seed)
        texts = [""]
        for attributes in grid:
            texts.append(shapes.caption(attributes))
            texts += [shapes.varied_caption(attributes, rng, "train") for _ in range(per_combination - 1)]
        parts = [encode_text(pipe, texts[start : start + 1024], args) for start in range(0, len(texts), 1024)]
        store = torch.bfloat16 if pipe.vae.device.type == "cuda" else torch.float32
        self.embeds = torch.cat([embeds for embeds, _ in parts]).to(store)  # (N, L, D)
        self.mask = torch.cat([mask for _, mask in parts])  # (N, L)
        self.per_combination, self.args, self.num_texts = per_combination, args, len(texts)

    def draw(self, combination: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`combination` `(B,)` grid indices -> embeds `(B, L, D)` float32 and mask `(B, L)`."""
        draw = torch.rand(combination.shape, device=combination.device, generator=generator)
        phrasing = torch.randint(1, max(self.per_combination, 2), combination.shape, device=combination.device,
                                 generator=generator) % self.per_combination  # fmt: skip
        canonical = draw < self.args.caption_dropout + self.args.canonical_caption_prob
        index = 1 + combination * self.per_combination + torch.where(canonical, 0, phrasing)
        index = torch.where(draw < self.args.caption_dropout, 0, index)
        return self.embeds[index].float(), self.mask[index]


def encode_text(pipe, texts: list[str], args) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's own text path at a fixed length: (B, L, D) float32, (B, L)."""
    check_vocabulary(pipe.tokenizer, pipe.text_encoder, texts)
    with torch.no_grad():
        embeds, mask, _, _ = pipe.encode_prompt(
            texts,
            do_classifier_free_guidance=False,
            max_sequence_length=args.max_text_tokens,
            device=pipe.vae.device,
            dtype=torch.float32,
        )
    return embeds, mask


@torch.no_grad()
def build_pool(pipe, specs, device, args) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every pool clip, (N, C, F', H', W') bf16 on the device (float32 on CPU)."""
    store = torch.bfloat16 if device.type == "cuda" else torch.float32
    means, stds = [], []
    for start in range(0, len(specs), 256):
        video = render_specs(specs[start : start + 256], device)
        with autocast(args, device):
            posterior = pipe.vae.encode(video).latent_dist
        means.append(posterior.mean.to(store))
        stds.append(posterior.std.to(store))
    return torch.cat(means), torch.cat(stds)


def flow_matching_batch(latents, sigmas_table, args, generator, patch_frames):
    """Noisy latents, per-frame timesteps, target and the mask of frames in the loss, for one batch."""
    batch_size, _, num_frames = latents.shape[:3]
    density = compute_density_for_timestep_sampling(
        weighting_scheme="logit_normal", batch_size=batch_size, logit_mean=args.logit_mean, logit_std=1.0,
        device=latents.device, generator=generator,
    )  # fmt: skip
    indices = (density * len(sigmas_table)).long().clamp(0, len(sigmas_table) - 1)
    sigmas = sigmas_table[indices]  # (B,)
    clean = condition_mask(
        batch_size, num_frames, args.condition_frames_prob, args.max_condition_frames, patch_frames, generator
    )  # (B, F)
    frame_sigmas = torch.where(clean, 0.0, sigmas[:, None])  # (B, F)
    noise = torch.randn(latents.shape, device=latents.device, generator=generator)
    sigma = frame_sigmas[:, None, :, None, None]
    noisy = (1 - sigma) * latents + sigma * noise
    keep = (~clean).float()[:, None, :, None, None]  # (B, 1, F, 1, 1)
    return noisy, frame_sigmas * 1000.0, noise - latents, keep


def masked_mse(prediction, target, keep) -> torch.Tensor:
    error = (prediction.float() - target).pow(2) * keep
    return error.sum() / (keep.sum() * error.shape[1] * error.shape[3] * error.shape[4])


def probe_captions(specs, phrasing: str, seed: int) -> tuple[list[str], list[str]]:
    """Each clip's caption and the same words with the direction reversed (one rng state per clip for both)."""
    own, reverse = [], []
    for index, spec in enumerate(specs):
        attributes = spec.attributes
        own.append(shapes.varied_caption(attributes, np.random.default_rng([seed, index]), phrasing))
        flipped = {**attributes, "direction": shapes.REVERSED_DIRECTIONS[attributes["direction"]]}
        reverse.append(shapes.varied_caption(flipped, np.random.default_rng([seed, index]), phrasing))
    return own, reverse


@torch.no_grad()
def sign_probe(pipe, models, latents, captions, args) -> dict:
    """Share of clips whose own caption gives a lower loss at noise 0.9 than the reversed one, per model."""
    generator = torch.Generator(latents.device).manual_seed(1234)
    noise = torch.randn(latents.shape, device=latents.device, generator=generator)
    noisy = 0.1 * latents + 0.9 * noise
    timestep = torch.full(latents.shape[:1], 900.0, device=latents.device)
    result = {}
    for name, model in models.items():
        losses = []
        for texts in captions:
            embeds, mask = encode_text(pipe, texts, args)
            with autocast(args, latents.device):
                prediction = model(noisy, timestep, embeds, mask, return_dict=False)[0].float()
            losses.append((prediction - (noise - latents)).pow(2).mean(dim=(1, 2, 3, 4)))
        result[name] = round(100.0 * (losses[0] < losses[1]).float().mean().item(), 1)
    return result


def load_transformers(args, device) -> dict[str, SpacetimeDiTModel]:
    models = {}
    for span in SPANS:
        if args.init_from:
            model = SpacetimeDiTModel.from_pretrained(Path(args.init_from) / f"transformer_{span}")
        else:
            config = {k: v for k, v in json.loads(Path(args.transformer_config).read_text()).items() if k[0] != "_"}
            torch.manual_seed(args.seed)  # the same initial weights for both spans
            model = SpacetimeDiTModel(**{**config, "attention_span": span})
        models[span] = model.to(device=device, dtype=torch.float32).train()
    return models


@torch.no_grad()
def generation_check(pipe, models, emas, phrasings, args, device) -> dict:
    """Generated videos (`--check_steps` steps, guidance 5, seed per prompt) of each EMA model, scored by the
    detector: the direction/adherence numbers of the run, measured where it ran."""
    results = {}
    for name, model in models.items():
        shipped = copy.deepcopy(model)
        emas[name].copy_to(shipped.parameters())
        check = SpacetimeVideoPipeline.from_pipe(pipe, transformer=shipped.eval())
        check.set_progress_bar_config(disable=True)
        for phrasing, (subset, texts) in phrasings.items():
            check_vocabulary(check.tokenizer, check.text_encoder, texts)
            frames = check(texts, num_inference_steps=args.check_steps, guidance_scale=5.0, output_type="np",
                           generator=[torch.Generator(device).manual_seed(i) for i in range(len(texts))]).frames  # fmt: skip
            rows = [evaluation.evaluate_video(f, s.attributes) for f, s in zip(frames, subset)]
            summary = evaluation.summarize(rows)
            results[f"{name}/{phrasing}"] = {k: round(summary[f"{k}_pct"], 1) for k in
                                             ("adherent", "color_correct", "shape_correct", "direction_correct")}  # fmt: skip
    return results


def load_text_and_latent_side(args, device) -> SpacetimeVideoPipeline:
    """The base pipeline without a transformer (the transformers are the ones trained here), with the slim text
    encoder and the previous run's VAE where given."""
    text = dict(zip(("text_encoder", "tokenizer"), load_slim(args.text_encoder))) if args.text_encoder else {}
    pipe = SpacetimeVideoPipeline.from_pretrained(
        args.base_model, transformer=None, **text, dtype=torch.float32, use_safetensors=True
    ).to(device)
    if args.init_from and (Path(args.init_from) / "vae").is_dir():
        # The decoder may have been tuned; the encoder, and so the latents, are the same.
        pipe.vae = AutoencoderKLSpacetime.from_pretrained(Path(args.init_from) / "vae").to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def previous_state(init_from: str | None) -> dict:
    """The steps and clips that the run continued from (`--init_from`) reached over all its runs."""
    if init_from and (Path(init_from) / "dit_state.json").is_file():
        return json.loads((Path(init_from) / "dit_state.json").read_text())
    return {"step": 0, "clips": 0}


def check_phrasings(grid, args) -> dict:
    """The prompts of the final generation check: seen and held-out combinations in canonical captions, and the
    seen ones in held-out phrasings. Phrasing -> (clip specs, captions)."""
    check_rng = np.random.default_rng([args.seed, 5])
    seen = draw_specs(grid, args.num_eval_clips, check_rng)
    held = draw_specs(shapes.combination_grid(holdouts(args), only_holdout=True), args.num_eval_clips // 3, check_rng)
    return {
        "seen": (seen, [s.caption for s in seen]),
        "held_out": (held, [s.caption for s in held]),
        "held_out_phrasing": (seen, [shapes.varied_caption(s.attributes, check_rng, "held_out") for s in seen]),
    }


def build_trainees(args, device) -> tuple[dict, dict, dict, dict]:
    """Per span: the transformer, its EMA, its optimizer and its forward (compiled with --compile)."""
    models = load_transformers(args, device)
    emas = {name: EMAModel(model.parameters(), decay=args.ema_decay, foreach=True) for name, model in models.items()}
    for ema in emas.values():
        ema.to(device)
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0,
                                          fused=device.type == "cuda") for name, model in models.items()}  # fmt: skip
    compiled = {name: maybe_compile(model, args) for name, model in models.items()}
    return models, emas, optimizers, compiled


def train_dit(args, device, run: Run) -> dict:
    pipe = load_text_and_latent_side(args, device)
    grid = shapes.combination_grid(holdouts(args))
    pool_start = time.monotonic()
    specs = draw_specs(grid, args.pool_size, np.random.default_rng([args.seed, 2]))
    means, stds = build_pool(pipe, specs, device, args)
    pool_seconds = round(time.monotonic() - pool_start, 1)
    run.log({"event": "pool", "clips": len(specs), "seconds": pool_seconds})

    models, emas, optimizers, compiled = build_trainees(args, device)
    patch_frames = models["spacetime"].config.patch_size[0]
    scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config, shift=args.flow_shift)
    sigmas_table = scheduler.sigmas[:-1].flip(0).to(device=device, dtype=torch.float32)  # ascending, (1000,)

    probe_index = np.random.default_rng([args.seed, 3]).choice(len(specs), min(256, len(specs)), replace=False)
    probe_latents = pipe.normalize_latents(means[probe_index].float())
    probes = {phrasing: probe_captions([specs[i] for i in probe_index], phrasing, args.seed)
              for phrasing in ("train", "held_out")}  # fmt: skip

    def probe_row(step: int) -> dict:
        return {"step": step, **{f"sign_probe_{phrasing}": sign_probe(pipe, models, probe_latents, texts, args)
                                 for phrasing, texts in probes.items()}}  # fmt: skip

    combination_of = {tuple(attributes.values()): index for index, attributes in enumerate(grid)}
    pool_combination = torch.tensor([combination_of[tuple(spec.attributes.values())] for spec in specs], device=device)
    bank_start = time.monotonic()
    captions = CaptionBank(pipe, grid, args.captions_per_combination, args, [args.seed, 4])
    run.log(
        {"event": "caption_bank", "captions": captions.num_texts, "seconds": round(time.monotonic() - bank_start, 1)}
    )
    generator = torch.Generator(device).manual_seed(args.seed)
    step, clips, history = 0, 0, []
    train_start = time.monotonic()
    while within_budget(args, step, train_start):
        lr = learning_rate(args, step, time.monotonic() - train_start)
        index = torch.randint(len(specs), (args.train_batch_size,), device=device, generator=generator)
        posterior_noise = torch.randn(means[index].shape, device=device, generator=generator)
        latents = pipe.normalize_latents(means[index].float() + stds[index].float() * posterior_noise)
        embeds, mask = captions.draw(pool_combination[index], generator)
        noisy, timestep, target, keep = flow_matching_batch(latents, sigmas_table, args, generator, patch_frames)
        losses = {}
        for name in models:

            def forward_backward():
                optimizers[name].zero_grad(set_to_none=True)
                with autocast(args, device):
                    prediction = compiled[name](noisy, timestep, embeds, mask, return_dict=False)[0]
                loss = masked_mse(prediction, target, keep)
                loss.backward()
                return loss

            compiled_or_eager = partial(eager_on_failure, forward_backward, compiled, models, name, step, run)
            loss = optimizer_step(optimizers[name], models[name].parameters(), lr, compiled_or_eager, name, step)
            emas[name].step(models[name].parameters())
            losses[name] = loss.detach()
        step, clips = step + 1, clips + args.train_batch_size
        if step % args.log_every == 0:
            rate = clips / (time.monotonic() - train_start)
            run.log({"step": step, "lr": lr, "clips_per_s": round(rate, 1),
                     **{f"loss_{k}": round(v.item(), 5) for k, v in losses.items()}})  # fmt: skip
        if step % args.probe_every == 0:
            history.append(probe_row(step))
            run.log(history[-1])
        if time.monotonic() - run.last_save > args.save_every_seconds:
            save_transformers(run, models, emas, step, clips, args.init_from)
    train_seconds = time.monotonic() - train_start
    save_transformers(run, models, emas, step, clips, args.init_from)
    history.append(probe_row(step))
    run.log(history[-1])
    previous = previous_state(args.init_from)
    results = {"steps": step, "clips": clips, "train_seconds": round(train_seconds, 1), "pool_seconds": pool_seconds,
               "steps_total": previous["step"] + step, "clips_total": previous["clips"] + clips,
               "clips_per_s_per_model": round(clips / max(train_seconds, 1e-9), 1), "sign_probe": history}  # fmt: skip
    results["generation_check"] = generation_check(pipe, models, emas, check_phrasings(grid, args), args, device)
    run.log({"event": "generation_check", **results["generation_check"]})
    return results


def save_transformers(run: Run, models, emas, step: int, clips: int, init_from: str | None) -> None:
    """The EMA weights of both transformers in fp16, and the steps and clips reached over all runs."""
    for name, model in models.items():
        shipped = copy.deepcopy(model)
        emas[name].copy_to(shipped.parameters())
        run.save_fp16(shipped, f"transformer_{name}")
    before = previous_state(init_from)
    state = {"step": before["step"] + step, "clips": before["clips"] + clips}
    (run.dir / "dit_state.json").write_text(json.dumps(state) + "\n")
    run.last_save = time.monotonic()


def main(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run = Run(args)
    run.log({"event": "start", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
             "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, type(None)))}})  # fmt: skip
    results = (train_vae if args.stage == "vae" else train_dit)(args, device, run)
    results["wall_seconds"] = round(run.elapsed(), 1)
    run.write_results(results)
    return results


if __name__ == "__main__":
    main(parse_args())
