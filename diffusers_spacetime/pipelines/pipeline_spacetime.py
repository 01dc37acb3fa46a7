"""Text-to-video with the spacetime DiT: text encoder -> flow-matching denoising in the VAE's latent space -> video.

Decisions worth knowing (the README repeats them):
- Default `height`, `width` and `num_frames` come from the checkpoint: they are pipeline init arguments
  (`default_height`, `default_width`, `default_num_frames`) that `register_to_config` writes into `model_index.json`,
  as `StableDiffusionPipeline` does with `requires_safety_checker`. The training script saves the size it trained at.
- Classifier-free guidance runs the conditional and unconditional passes as two calls, not one batch: each runs in its
  own `transformer.cache_context("cond")` / `("uncond")`, so diffusers' cache hooks keep separate state per branch;
  the two prompts may have different token lengths and masks; peak activation memory is that of one batch. The cost:
  on a GPU with spare capacity two calls are slower than one doubled batch, and diffusers' FasterCache (which expects
  a batched [uncond, cond] input) does not apply; `batched_guidance=True` runs them as one batch instead (both
  prompts padded to one length, padding masked), in `cache_context("cond_uncond")`, which FasterCache needs.
  FirstBlockCache and TaylorSeer keep state per cache context and work with guidance; diffusers 0.42's
  PyramidAttentionBroadcast keeps one state per attention module, so with guidance > 1 the unconditional pass reuses
  the conditional pass's attention: use it without guidance (benchmarks/README.md measures the drift).
- The transformer works in a normalised latent space: `z_norm = (z - latents_mean) / latents_std` with the VAE's
  per-channel statistics, and the pipeline decodes `z_norm * latents_std + latents_mean`.
- Schedulers are driven only through the generic API (`set_timesteps`, `timesteps`, `init_noise_sigma`,
  `scale_model_input`, `step`), so flow-matching and classic schedulers swap in without special cases.
- Inputs are checked once per call, in `check_inputs` and `_check_call_options`, before any model runs; the
  components are checked when they are set (`__init__`, or an assignment such as `pipe.vae = ...`).
"""

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import get_module_execution_device, randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..hub.push import SpacetimeHubMixin
from ..loaders.lora import SpacetimeLoraLoaderMixin
from ..models.nearest_sizes import nearest_valid_sizes
from ..models.transformer_spacetime import SpacetimeDiTModel
from .pipeline_output import SpacetimeVideoPipelineOutput
from .video_vae import VideoVAE, vae_decode_kwargs, vae_latent_space

logger = logging.get_logger(__name__)

# Token budget when `max_sequence_length` is not given (capped by the tokenizer's own limit): video captions are
# short, and padded tokens are masked out of cross-attention anyway.
DEFAULT_MAX_SEQUENCE_LENGTH = 128

OUTPUT_TYPES = ("np", "pt", "pil", "latent")

# The text tensors a step-end callback may replace (besides `latents`).
CALLBACK_TEXT_INPUTS = ("prompt_embeds", "negative_prompt_embeds")

# The components whose sizes must agree (`_check_components`); setting one of them checks them again.
CHECKED_COMPONENTS = ("text_encoder", "transformer", "vae")

EXAMPLE_DOC_STRING = """
    Examples:
        ```python
        >>> import torch
        >>> import diffusers_spacetime  # registers the package's classes with diffusers
        >>> from diffusers import UniPCMultistepScheduler
        >>> from diffusers.utils import export_to_video
        >>> from diffusers_spacetime import SpacetimeVideoPipeline

        >>> pipe = SpacetimeVideoPipeline.from_pretrained("checkpoints/spacetime-shapes", dtype=torch.float32)
        >>> # Optional: any flow scheduler swaps in from the checkpoint's scheduler config.
        >>> pipe.scheduler = UniPCMultistepScheduler.from_config(
        ...     pipe.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True
        ... )
        >>> video = pipe(
        ...     "a red circle moves from left to right",
        ...     num_inference_steps=25,
        ...     guidance_scale=5.0,
        ...     generator=torch.Generator().manual_seed(0),
        ... ).frames[0]
        >>> export_to_video(video, "circle.mp4", fps=8)
        ```
"""

# The `__call__` arguments both pipelines share, documented once: `shared_arguments_docstring` puts them where a
# `__call__` docstring has the line `{shared_arguments}`.
SHARED_ARGUMENTS_DOC = """
            num_inference_steps (`int`, defaults to 50):
                Number of scheduler steps.
            guidance_scale (`float`, defaults to 5.0):
                Classifier-free guidance weight `w`: `v = v_uncond + w * (v_cond - v_uncond)`. Guidance (and the
                second transformer pass per step) is on when `guidance_scale > 1`.
            num_videos_per_prompt (`int`, defaults to 1):
                Videos per prompt.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Makes generation deterministic; a list needs one generator per video.
            latents (`torch.Tensor` of shape `(B, C, F_latent, H_latent, W_latent)`, *optional*):
                Unit-variance starting noise with `B = prompts x num_videos_per_prompt`, covering every latent frame
                (conditioning frames, where there are any, are overwritten by their clean latents); drawn from
                `generator` when not given. It is scaled by the scheduler's `init_noise_sigma` like drawn noise.
            prompt_embeds (`torch.Tensor` of shape `(B, L, text_embed_dim)`, *optional*):
                Precomputed text embeddings instead of `prompt`.
            negative_prompt_embeds (`torch.Tensor` of shape `(B, L', text_embed_dim)`, *optional*):
                Precomputed negative text embeddings instead of `negative_prompt`.
            output_type (`str`, defaults to `"np"`):
                `"np"` (B, F, H, W, 3) in [0, 1]; `"pt"` (B, F, 3, H, W) in [0, 1]; `"pil"` lists of PIL images;
                `"latent"` the normalised latents, not decoded.
            return_dict (`bool`, defaults to `True`):
                Return a [`SpacetimeVideoPipelineOutput`] rather than a tuple.
            attention_kwargs (`dict`, *optional*):
                Passed to the transformer; `{"scale": s}` scales loaded LoRA adapters for this call.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called after each step as `callback_on_step_end(pipe, step, timestep, callback_kwargs)`; the tensors
                it returns (`latents`, `prompt_embeds`, `negative_prompt_embeds`) replace the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `("latents",)`):
                Which of `_callback_tensor_inputs` go into `callback_kwargs`.
            max_sequence_length (`int`, *optional*):
                Token budget for the prompt; `min(128, tokenizer.model_max_length)` by default.
            prompt_attention_mask (`torch.Tensor` of shape `(B, L)`, *optional*):
                Mask for `prompt_embeds` (1 keep, 0 padding); all ones by default.
            negative_prompt_attention_mask (`torch.Tensor` of shape `(B, L')`, *optional*):
                Mask for `negative_prompt_embeds`."""


def shared_arguments_docstring(function: Callable) -> Callable:
    """Insert `SHARED_ARGUMENTS_DOC` at the `{shared_arguments}` line of `function`'s docstring (as diffusers'
    `replace_example_docstring` inserts examples)."""
    function.__doc__ = function.__doc__.replace("\n            {shared_arguments}", SHARED_ARGUMENTS_DOC)
    return function


def text_hidden_size(text_encoder: torch.nn.Module) -> int | None:
    """Width of `last_hidden_state` for BERT/CLIP (`hidden_size`) and T5/UMT5 (`d_model`) configs; None if unknown."""
    config = getattr(text_encoder, "config", None)
    for name in ("hidden_size", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def load_text_encoder(path: str, **kwargs) -> PreTrainedModel:
    """The text encoder of a transformers folder or Hub id, encoder only: `T5EncoderModel`, `UMT5EncoderModel` or
    `MT5EncoderModel` for T5-family checkpoints (whose `AutoModel` is the encoder-decoder, whose forward needs decoder
    inputs), `CLIPTextModel` for a whole CLIP checkpoint, `AutoModel` for the rest (BERT/MiniLM, CLIP text, ...).

    `kwargs` go to `from_pretrained` (`subfolder`, `revision`, `torch_dtype`, ...).
    """
    from transformers import (
        AutoConfig,
        AutoModel,
        CLIPConfig,
        CLIPTextModel,
        MT5Config,
        MT5EncoderModel,
        T5Config,
        T5EncoderModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    encoder_only = {
        T5Config: T5EncoderModel,
        UMT5Config: UMT5EncoderModel,
        MT5Config: MT5EncoderModel,
        CLIPConfig: CLIPTextModel,
    }
    config_kwargs = {
        key: value for key, value in kwargs.items() if key in ("subfolder", "revision", "cache_dir", "token")
    }
    config = AutoConfig.from_pretrained(path, **config_kwargs)
    model_class = encoder_only.get(type(config), AutoModel)
    return model_class.from_pretrained(path, **kwargs)


def transformer_prediction(
    transformer: SpacetimeDiTModel,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_attention_mask: torch.Tensor | None = None,
    attention_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """One denoiser pass, as sampling and training both run it: latents `(B, C, F, H, W)`, timestep `(B,)` or
    `(B, F)`, text `(B, L, D)` and mask `(B, L)` -> the prediction `(B, C, F, H, W)` in float32, where the scheduler
    step and the loss do their arithmetic. Keyword arguments: diffusers' hooks (FasterCache, the LoRA scale) read them.
    """
    return transformer(
        return_dict=False,
        hidden_states=hidden_states,
        timestep=timestep,
        encoder_hidden_states=encoder_hidden_states,
        encoder_attention_mask=encoder_attention_mask,
        attention_kwargs=attention_kwargs,
    )[0].float()


def _concat_padded(*pairs: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(embeds (B, L_i, D), mask (B, L_i) or None)` pairs -> one batch `(sum B, max L_i, D)` and its mask, zero-padded
    at the end with the padding masked out."""
    length = max(embeds.shape[1] for embeds, _ in pairs)
    all_embeds, all_masks = [], []
    for embeds, mask in pairs:
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        extra = length - embeds.shape[1]
        all_embeds.append(torch.nn.functional.pad(embeds, (0, 0, 0, extra)))  # (B, L_max, D)
        all_masks.append(torch.nn.functional.pad(mask.to(embeds.device), (0, extra)))  # (B, L_max)
    return torch.cat(all_embeds), torch.cat(all_masks)


# ------------------------------------------------------------------------------------------------ input rules


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _is_positive_int_or_none(value: Any) -> bool:
    return value is None or _is_positive_int(value)


def _is_finite_non_negative(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")  # NaN: False


def _is_prompt(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(item, str) for item in value))


def _batch_size(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> int:
    """Prompts in the call (before `num_videos_per_prompt`), from whichever of the two was given."""
    if prompt is None:
        return prompt_embeds.shape[0]
    return 1 if isinstance(prompt, str) else len(prompt)


def _check_text_embeds(name: str, embeds: Any, mask_name: str, mask: Any, text_embed_dim: int) -> None:
    """Text embeddings `(B, L, text_embed_dim)`, floating point and finite, with a mask `(B, L)` if any."""
    if embeds is None:
        if mask is not None:
            raise ValueError(f"`{mask_name}` was given without `{name}`.")
        return
    if not torch.is_tensor(embeds) or embeds.ndim != 3 or embeds.shape[-1] != text_embed_dim:
        shape = tuple(embeds.shape) if torch.is_tensor(embeds) else type(embeds).__name__
        raise ValueError(f"`{name}` must be a tensor (batch, tokens, {text_embed_dim}), got {shape}.")
    if not embeds.dtype.is_floating_point:
        raise ValueError(f"`{name}` must be floating point (text encoder states), got dtype {embeds.dtype}.")
    if not torch.isfinite(embeds).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    if mask is not None and (not torch.is_tensor(mask) or tuple(mask.shape) != tuple(embeds.shape[:2])):
        shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"`{mask_name}` must have shape {tuple(embeds.shape[:2])} like `{name}`, got {shape}.")


def _check_negative_batch(
    prompt: str | list[str] | None,
    negative_prompt: str | list[str] | None,
    prompt_embeds: torch.Tensor | None,
    negative_prompt_embeds: torch.Tensor | None,
) -> None:
    """Each negative (a prompt list or embeddings) has the batch of the positive it goes with."""
    prompts = None if prompt is None else _batch_size(prompt, None)
    negatives = len(negative_prompt) if isinstance(negative_prompt, list) else None
    embeds = prompt_embeds.shape[0] if prompt_embeds is not None else None
    negative_embeds = negative_prompt_embeds.shape[0] if negative_prompt_embeds is not None else None
    rules = (  # (negative, positive, message)
        (
            negatives,
            prompts,
            f"`negative_prompt` has {negatives} entries but `prompt` has {prompts}: pass one negative prompt per "
            "prompt, or a single string.",
        ),
        (
            negative_embeds,
            embeds,
            f"`negative_prompt_embeds` has batch {negative_embeds} but `prompt_embeds` has {embeds}.",
        ),
        (
            negative_embeds,
            prompts,
            f"`negative_prompt_embeds` has batch {negative_embeds} but `prompt` has {prompts} entries.",
        ),
        (negatives, embeds, f"`negative_prompt` has {negatives} entries but `prompt_embeds` has batch {embeds}."),
    )
    for negative, positive, message in rules:
        if negative is not None and positive is not None and negative != positive:
            raise ValueError(message)


@dataclasses.dataclass
class GenerationInputs:
    """The arguments of [`SpacetimeVideoPipeline.__call__`], in its order and with its defaults (its docstring says
    what each one is); the image-to-video pipeline fills the same fields. `_check_call` hands `_generate` a checked
    copy with the size defaults filled in and the callback's tensor names as a list."""

    prompt: str | list[str] | None = None
    negative_prompt: str | list[str] | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    num_videos_per_prompt: int = 1
    generator: torch.Generator | list[torch.Generator] | None = None
    latents: torch.Tensor | None = None  # (B, C, F_latent, H_latent, W_latent)
    prompt_embeds: torch.Tensor | None = None  # (B, L, text_embed_dim)
    negative_prompt_embeds: torch.Tensor | None = None  # (B, L', text_embed_dim)
    output_type: str = "np"
    return_dict: bool = True
    attention_kwargs: dict[str, Any] | None = None
    callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None
    callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",)
    max_sequence_length: int | None = None
    prompt_attention_mask: torch.Tensor | None = None  # (B, L)
    negative_prompt_attention_mask: torch.Tensor | None = None  # (B, L')
    batched_guidance: bool = False

    # The fields `check_inputs` and `encode_prompt` take, named here rather than read from their signatures so that
    # a wrapped or overridden method still gets them all.
    CHECKED_FIELDS = (
        "prompt",
        "negative_prompt",
        "height",
        "width",
        "num_frames",
        "num_inference_steps",
        "guidance_scale",
        "num_videos_per_prompt",
        "prompt_embeds",
        "negative_prompt_embeds",
        "prompt_attention_mask",
        "negative_prompt_attention_mask",
        "output_type",
        "callback_on_step_end_tensor_inputs",
        "max_sequence_length",
    )
    PROMPT_FIELDS = (
        "prompt",
        "negative_prompt",
        "num_videos_per_prompt",
        "prompt_embeds",
        "negative_prompt_embeds",
        "prompt_attention_mask",
        "negative_prompt_attention_mask",
        "max_sequence_length",
    )

    def select(self, names: tuple[str, ...]) -> dict[str, Any]:
        """`{name: value}` of the named fields."""
        return {name: getattr(self, name) for name in names}


class TextConditioning(NamedTuple):
    """`encode_prompt`'s output, each with batch `B * num_videos_per_prompt`; the negative pair is None without
    guidance."""

    prompt_embeds: torch.Tensor  # (B, L, D)
    prompt_attention_mask: torch.Tensor  # (B, L)
    negative_prompt_embeds: torch.Tensor | None  # (B, L', D)
    negative_prompt_attention_mask: torch.Tensor | None  # (B, L')


class SpacetimeVideoPipeline(DiffusionPipeline, SpacetimeLoraLoaderMixin, SpacetimeHubMixin):
    r"""
    Text-to-video generation with [`SpacetimeDiTModel`] and [`AutoencoderKLSpacetime`].

    This model inherits from [`DiffusionPipeline`] (downloading, saving, devices, offloading) and
    [`SpacetimeLoraLoaderMixin`] (LoRA loading, fusing and mixing).

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer of `text_encoder`.
        text_encoder ([`~transformers.PreTrainedModel`]):
            Any transformers text encoder whose output has `last_hidden_state` (BERT/MiniLM, T5, UMT5, CLIP text).
            Its hidden size must equal `transformer.config.text_embed_dim`.
        transformer ([`SpacetimeDiTModel`]):
            The spacetime diffusion transformer; predicts the flow velocity in the normalised latent space.
        vae ([`AutoencoderKLSpacetime`], [`~diffusers.AutoencoderKLWan`], [`~diffusers.AutoencoderKLLTXVideo`] or
            [`~diffusers.AutoencoderKLCogVideoX`]):
            The video autoencoder; its latent channels, compression ratios and latent normalisation are read from it
            by `video_vae.vae_latent_space` (e.g. per-channel `latents_mean` / `latents_std` in its config).
        scheduler ([`~diffusers.SchedulerMixin`]):
            Any diffusers scheduler; the default is [`~diffusers.FlowMatchEulerDiscreteScheduler`].
        default_height (`int`, *optional*):
            Height used when `__call__` gets none; saved in `model_index.json` (the training script stores the
            trained size here).
        default_width (`int`, *optional*):
            Width used when `__call__` gets none; saved in `model_index.json`.
        default_num_frames (`int`, *optional*):
            Frame count used when `__call__` gets none; saved in `model_index.json`.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: PreTrainedModel,
        transformer: SpacetimeDiTModel,
        vae: VideoVAE,
        scheduler: SchedulerMixin,
        default_height: int | None = None,
        default_width: int | None = None,
        default_num_frames: int | None = None,
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler
        )
        self.register_to_config(
            default_height=default_height, default_width=default_width, default_num_frames=default_num_frames
        )
        self._check_components()
        spatial = self.vae_scale_factor_spatial
        self.video_processor = VideoProcessor(vae_scale_factor=spatial if spatial is not None else 8)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in CHECKED_COMPONENTS:
            # A component swapped after init (`pipe.text_encoder = ...`) is checked against the others before the next
            # call rather than here, so that components can be swapped one at a time.
            super().__setattr__("_components_checked", False)

    # ------------------------------------------------------------------------------------------------ properties

    @property
    def vae_scale_factor_spatial(self) -> int | None:
        vae = getattr(self, "vae", None)
        return vae_latent_space(vae).spatial_compression_ratio if vae is not None else None

    @property
    def vae_scale_factor_temporal(self) -> int | None:
        vae = getattr(self, "vae", None)
        return vae_latent_space(vae).temporal_compression_ratio if vae is not None else None

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def attention_kwargs(self) -> dict[str, Any] | None:
        return self._attention_kwargs

    # ------------------------------------------------------------------------------------------------ checks

    def _check_components(self) -> None:
        """Fail early, with the numbers, when components that cannot work together are combined."""
        text_encoder, transformer, vae = (getattr(self, name, None) for name in CHECKED_COMPONENTS)
        if transformer is not None:
            text_embed_dim = transformer.config.text_embed_dim
            hidden_size = text_hidden_size(text_encoder) if text_encoder is not None else None
            if hidden_size is not None and hidden_size != text_embed_dim:
                raise ValueError(
                    f"`text_encoder` produces {hidden_size}-d hidden states but `transformer.config.text_embed_dim` "
                    f"is {text_embed_dim}: use the text encoder the transformer was trained with."
                )
            latent_channels = vae_latent_space(vae).latent_channels if vae is not None else None
            if latent_channels is not None and latent_channels != transformer.config.in_channels:
                raise ValueError(
                    f"The VAE's latent channels ({latent_channels}, {type(vae).__name__}) must equal "
                    f"`transformer.config.in_channels` ({transformer.config.in_channels})."
                )
        super().__setattr__("_components_checked", True)

    def check_inputs(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None,
        height: int,
        width: int,
        num_frames: int,
        num_inference_steps: int,
        guidance_scale: float,
        num_videos_per_prompt: int,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "np",
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int | None = None,
    ) -> None:
        """Raise a `ValueError` naming the first bad argument; never adjust a value silently. The arguments are
        `__call__`'s, after the size defaults are filled in."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")
        unknown = [
            name for name in callback_on_step_end_tensor_inputs or () if name not in self._callback_tensor_inputs
        ]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {unknown}."
            )
        self._check_video_size(height, width, num_frames)
        numbers = (  # (name, value, test, rule)
            ("num_inference_steps", num_inference_steps, _is_positive_int, "a positive int"),
            ("guidance_scale", guidance_scale, _is_finite_non_negative, "a number >= 0 and finite"),
            ("num_videos_per_prompt", num_videos_per_prompt, _is_positive_int, "a positive int"),
            ("max_sequence_length", max_sequence_length, _is_positive_int_or_none, "a positive int"),
        )
        for name, value, is_valid, rule in numbers:
            if not is_valid(value):
                raise ValueError(f"`{name}` must be {rule}, got {value!r}.")
        self._check_prompts(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        text_embed_dim = self.transformer.config.text_embed_dim
        _check_text_embeds(
            "prompt_embeds", prompt_embeds, "prompt_attention_mask", prompt_attention_mask, text_embed_dim
        )
        _check_text_embeds(
            "negative_prompt_embeds",
            negative_prompt_embeds,
            "negative_prompt_attention_mask",
            negative_prompt_attention_mask,
            text_embed_dim,
        )
        _check_negative_batch(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)

    def _check_video_size(self, height: Any, width: Any, num_frames: Any) -> None:
        """Sizes: the VAE downsamples space by `s` and time by `r`; the transformer patchifies by (p_t, p_h, p_w)."""
        spatial, temporal = self.vae_scale_factor_spatial, self.vae_scale_factor_temporal
        patch_t, patch_h, patch_w = self.transformer.config.patch_size
        for name, value, patch in (("height", height, patch_h), ("width", width, patch_w)):
            multiple = spatial * patch
            if not _is_positive_int(value):
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
            if value % multiple != 0:
                raise ValueError(
                    f"`{name}` ({value}) must be divisible by {multiple} (VAE spatial compression {spatial} x "
                    f"transformer patch size {patch}); nearest valid values: {nearest_valid_sizes(value, multiple)}."
                )
        if not _is_positive_int(num_frames) or (num_frames - 1) % temporal != 0:
            raise ValueError(
                f"`num_frames` must be 1 + k * {temporal} (the VAE's temporal compression) for an int k >= 0, "
                f"e.g. {1 + temporal}, {1 + 2 * temporal} or {1 + 4 * temporal}; got {num_frames!r}."
            )
        num_latent_frames = (num_frames - 1) // temporal + 1
        if num_latent_frames % patch_t != 0:
            raise ValueError(
                f"`num_frames` ({num_frames}) gives {num_latent_frames} latent frames, which the transformer's "
                f"temporal patch size {patch_t} does not divide."
            )

    def _check_prompts(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds) -> None:
        """Exactly one of `prompt` / `prompt_embeds`, at most one of the negative pair; prompts are str or list[str]."""
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
        if prompt is None and prompt_embeds is None:
            raise ValueError("Pass `prompt` or `prompt_embeds`; both are None.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not _is_prompt(value):
                raise ValueError(f"`{name}` must be a str or a list of str, got {type(value).__name__}.")
            if value == []:
                raise ValueError(f"`{name}` is an empty list.")
        if prompt is not None and (self.tokenizer is None or self.text_encoder is None):
            raise ValueError(
                "`prompt` needs a `tokenizer` and a `text_encoder`; this pipeline has none: pass `prompt_embeds`."
            )

    def _check_call_options(self, inputs: GenerationInputs) -> None:
        """The `__call__` arguments `check_inputs` does not take: starting noise, generators, callback, options."""
        if not isinstance(inputs.batched_guidance, bool):
            raise ValueError(f"`batched_guidance` must be a bool, got {inputs.batched_guidance!r}.")
        if inputs.attention_kwargs is not None and not isinstance(inputs.attention_kwargs, dict):
            raise ValueError(
                f"`attention_kwargs` must be a dict or None, got {type(inputs.attention_kwargs).__name__}."
            )
        if inputs.callback_on_step_end is not None and not callable(inputs.callback_on_step_end):
            raise ValueError(
                f"`callback_on_step_end` must be callable (pipe, step, timestep, callback_kwargs) -> dict, got "
                f"{type(inputs.callback_on_step_end).__name__}."
            )
        generator, latents = inputs.generator, inputs.latents
        batch_size = _batch_size(inputs.prompt, inputs.prompt_embeds) * inputs.num_videos_per_prompt
        generators = generator if isinstance(generator, list) else [generator]
        if not all(item is None or isinstance(item, torch.Generator) for item in generators):
            raise ValueError(
                f"`generator` must be a torch.Generator or a list of them, got {type(generator).__name__}: for a "
                "seed, pass torch.Generator().manual_seed(seed)."
            )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators but the batch has {batch_size} videos "
                "(prompts x num_videos_per_prompt): pass one generator per video, or a single one."
            )
        if latents is None:
            return
        shape = (
            batch_size,
            self.transformer.config.in_channels,
            *self._latent_grid(inputs.height, inputs.width, inputs.num_frames),
        )
        if not torch.is_tensor(latents) or tuple(latents.shape) != shape:
            got = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
            raise ValueError(f"`latents` must have shape {shape} for these settings, got {got}.")
        if not latents.dtype.is_floating_point:
            raise ValueError(f"`latents` must be floating point (unit Gaussian noise), got dtype {latents.dtype}.")
        if not torch.isfinite(latents).all():
            raise ValueError("`latents` contains NaN or infinite values.")

    def _check_call(self, inputs: GenerationInputs) -> GenerationInputs:
        """The per-call validation of both pipelines' `__call__`: `inputs` with the checkpoint's size defaults and
        the callback's tensor names filled in, once every argument has been checked."""
        if not self._components_checked:
            self._check_components()
        callback = inputs.callback_on_step_end
        tensor_inputs = inputs.callback_on_step_end_tensor_inputs
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            tensor_inputs = callback.tensor_inputs
        inputs = dataclasses.replace(
            inputs,
            height=self._config_default("height", inputs.height),
            width=self._config_default("width", inputs.width),
            num_frames=self._config_default("num_frames", inputs.num_frames),
            callback_on_step_end_tensor_inputs=list(tensor_inputs),
        )
        self.check_inputs(**inputs.select(GenerationInputs.CHECKED_FIELDS))
        self._check_call_options(inputs)
        return inputs

    def _config_default(self, name: str, value: int | None) -> int:
        if value is not None:
            return value
        default = self.config.get(f"default_{name}")
        if default is None:
            raise ValueError(
                f"`{name}` was not given and the pipeline config has no `default_{name}`: pass `{name}=`, or set "
                f"the default with `pipe.register_to_config(default_{name}=...)` before saving."
            )
        return default

    # ------------------------------------------------------------------------------------------------ text

    def _resolve_max_sequence_length(self, max_sequence_length: int | None) -> int:
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        # Tokenizers without a limit report a huge sentinel (int(1e30)); treat it as none.
        tokenizer_limit = tokenizer_limit if _is_int(tokenizer_limit) and tokenizer_limit < 1_000_000 else None
        # Encoders with learned positions (BERT, CLIP) cannot read past them, whatever the tokenizer allows.
        positions = getattr(getattr(self.text_encoder, "config", None), "max_position_embeddings", None)
        if _is_int(positions):
            tokenizer_limit = min(tokenizer_limit or positions, positions)
        if max_sequence_length is None:
            return min(DEFAULT_MAX_SEQUENCE_LENGTH, tokenizer_limit or DEFAULT_MAX_SEQUENCE_LENGTH)
        if tokenizer_limit is not None and max_sequence_length > tokenizer_limit:
            raise ValueError(
                f"`max_sequence_length` ({max_sequence_length}) exceeds the tokenizer's limit ({tokenizer_limit}) "
                "(the smaller of its `model_max_length` and the text encoder's `max_position_embeddings`)."
            )
        return max_sequence_length

    def _encode_text(
        self, prompt: list[str], max_sequence_length: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise and encode; returns `(embeds (B, L, D), mask (B, L))` with padded positions zeroed."""
        text_inputs = self.tokenizer(
            prompt,
            padding="max_length",
            max_length=max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        input_ids, attention_mask = text_inputs.input_ids, text_inputs.attention_mask  # (B, L)
        untruncated_length = max(len(ids) for ids in self.tokenizer(prompt, add_special_tokens=True).input_ids)
        if untruncated_length > max_sequence_length:
            logger.warning(
                f"A prompt is {untruncated_length} tokens long; only the first {max_sequence_length} are used "
                "(raise `max_sequence_length` to keep more)."
            )

        encoder_device = get_module_execution_device(self.text_encoder)
        embeds = self.text_encoder(
            input_ids=input_ids.to(encoder_device), attention_mask=attention_mask.to(encoder_device)
        ).last_hidden_state  # (B, L, D)
        # Padded positions are masked out of cross-attention; zeroing them keeps them inert whatever the encoder wrote.
        embeds = embeds * attention_mask.to(embeds.device, embeds.dtype).unsqueeze(-1)
        return embeds.to(device=device, dtype=dtype), attention_mask.to(device)

    def _text_or_embeds(
        self,
        prompt: list[str] | None,
        embeds: torch.Tensor | None,
        mask: torch.Tensor | None,
        max_sequence_length: int | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode `prompt`, or move the given `embeds (B, L, D)` and `mask (B, L)` (all ones if None) into place."""
        if prompt is not None:
            max_sequence_length = self._resolve_max_sequence_length(max_sequence_length)
            return self._encode_text(prompt, max_sequence_length, device, dtype)
        embeds = embeds.to(device=device, dtype=dtype)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long) if mask is None else mask
        return embeds, mask.to(device)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        r"""
        Encode the prompt (and, with guidance, the negative prompt) into text encoder hidden states.

        Args:
            prompt (`str` or `list[str]`, *optional*): The prompt(s); or pass `prompt_embeds`.
            negative_prompt (`str` or `list[str]`, *optional*):
                The prompt(s) to steer away from; an empty string when guidance is on and none is given.
            do_classifier_free_guidance (`bool`): Whether to also return negative embeddings.
            num_videos_per_prompt (`int`): Videos per prompt; each prompt's rows are repeated next to each other.
            prompt_embeds (`torch.Tensor` of shape `(B, L, text_embed_dim)`, *optional*): Precomputed embeddings.
            negative_prompt_embeds (`torch.Tensor` of shape `(B, L', text_embed_dim)`, *optional*):
                Precomputed negative embeddings.
            prompt_attention_mask (`torch.Tensor` of shape `(B, L)`, *optional*):
                1 for tokens to attend to, 0 for padding; all ones when `prompt_embeds` comes without one.
            negative_prompt_attention_mask (`torch.Tensor` of shape `(B, L')`, *optional*): Same for the negative.
            max_sequence_length (`int`, *optional*):
                Token budget; defaults to `min(128, tokenizer.model_max_length)`.
            device (`torch.device`, *optional*): Where the embeddings go; the execution device by default.
            dtype (`torch.dtype`, *optional*): Their dtype; the transformer's by default.

        Returns:
            `(prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)`, each with
            batch `B * num_videos_per_prompt`; the negative pair is None without guidance.
        """
        device = device or self._execution_device
        dtype = dtype or self.transformer.dtype
        prompt = [prompt] if isinstance(prompt, str) else prompt
        prompt_embeds, prompt_attention_mask = self._text_or_embeds(
            prompt, prompt_embeds, prompt_attention_mask, max_sequence_length, device, dtype
        )
        batch_size = prompt_embeds.shape[0]
        negative = (None, None)
        if do_classifier_free_guidance:
            if negative_prompt_embeds is None:
                negative_prompt = "" if negative_prompt is None else negative_prompt
                negative_prompt = (
                    [negative_prompt] * batch_size if isinstance(negative_prompt, str) else negative_prompt
                )
                if len(negative_prompt) != batch_size:
                    raise ValueError(
                        f"`negative_prompt` has {len(negative_prompt)} entries but the batch has {batch_size}."
                    )
                if self.tokenizer is None or self.text_encoder is None:
                    raise ValueError(
                        "Guidance needs `negative_prompt_embeds` when the pipeline has no `tokenizer`/`text_encoder`."
                    )
            negative = self._text_or_embeds(
                negative_prompt if negative_prompt_embeds is None else None,
                negative_prompt_embeds,
                negative_prompt_attention_mask,
                max_sequence_length,
                device,
                dtype,
            )
        # (B, L, D) -> (B * n, L, D), each prompt's copies adjacent.
        return tuple(
            None if x is None else x.repeat_interleave(num_videos_per_prompt, dim=0)
            for x in (prompt_embeds, prompt_attention_mask, *negative)
        )

    # ------------------------------------------------------------------------------------------------ latents

    def _latents_statistics(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latent mean and std (divided by its scaling factor) as (1, C, 1, 1, 1) tensors."""
        return vae_latent_space(self.vae).statistics(device, dtype)

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the transformer's normalised space: `(z - mean) / std` (std: the VAE's latent std divided
        by its scaling factor; see `video_vae`)."""
        mean, std = self._latents_statistics(latents.device, latents.dtype)
        return (latents - mean) / std

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The transformer's normalised latents -> VAE latents: `z_norm * std + mean`."""
        mean, std = self._latents_statistics(latents.device, latents.dtype)
        return latents * std + mean

    def _latent_grid(self, height: int, width: int, num_frames: int) -> tuple[int, int, int]:
        """`(F_latent, H_latent, W_latent)` of a video of this size."""
        spatial = self.vae_scale_factor_spatial
        return ((num_frames - 1) // self.vae_scale_factor_temporal + 1, height // spatial, width // spatial)

    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        num_frames: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unit Gaussian noise (B, C, F_latent, H_latent, W_latent), or the user's `latents` (checked by `__call__`),
        times `init_noise_sigma`."""
        if latents is None:
            shape = (batch_size, num_channels_latents, *self._latent_grid(height, width, num_frames))
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        # Flow-matching schedulers start from unit noise and have no `init_noise_sigma`; Karras-style ones need it.
        return latents.to(device=device, dtype=dtype) * getattr(self.scheduler, "init_noise_sigma", 1.0)

    def _scheduler_step_kwargs(self, generator) -> dict[str, Any]:
        # Stochastic schedulers (DDIM with eta, Euler with churn, SDE solvers) draw noise in `step`: hand them the
        # generator so the same seed gives the same video.
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            return {"generator": generator}
        return {}

    # ------------------------------------------------------------------------------------------------ call

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    @shared_arguments_docstring
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
        max_sequence_length: int | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        batched_guidance: bool = False,
    ) -> SpacetimeVideoPipelineOutput | tuple:
        r"""
        Generate videos from text.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                The prompt(s) to guide generation; or pass `prompt_embeds`.
            negative_prompt (`str` or `list[str]`, *optional*):
                The prompt(s) to steer away from when `guidance_scale > 1`; an empty string by default. A list needs
                one entry per prompt.
            height (`int`, *optional*):
                Frame height in pixels; `config.default_height` (from the checkpoint) by default. Must be divisible
                by the VAE's spatial compression times the transformer's patch height.
            width (`int`, *optional*):
                Frame width in pixels; `config.default_width` by default. Same divisibility rule.
            num_frames (`int`, *optional*):
                Number of frames; `config.default_num_frames` by default. Must be `1 + k * r` with `r` the VAE's
                temporal compression.
            {shared_arguments}
            batched_guidance (`bool`, defaults to `False`):
                With guidance, run the unconditional and conditional passes as one batch `[uncond, cond]` of twice
                the size (one call per step, twice the activation memory; diffusers' FasterCache needs it) instead
                of two calls. Same videos within float tolerance.

        Examples:

        Returns:
            [`SpacetimeVideoPipelineOutput`] or `tuple`: the videos in `frames`, or `(frames,)` when `return_dict`
            is False.
        """
        # Positional: `GenerationInputs` lists this signature's arguments in this order.
        inputs = GenerationInputs(
            prompt,
            negative_prompt,
            height,
            width,
            num_frames,
            num_inference_steps,
            guidance_scale,
            num_videos_per_prompt,
            generator,
            latents,
            prompt_embeds,
            negative_prompt_embeds,
            output_type,
            return_dict,
            attention_kwargs,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            max_sequence_length,
            prompt_attention_mask,
            negative_prompt_attention_mask,
            batched_guidance,
        )
        return self._generate(self._check_call(inputs))

    def _generate(
        self, inputs: GenerationInputs, condition_latents: torch.Tensor | None = None
    ) -> SpacetimeVideoPipelineOutput | tuple:
        """The sampling both pipelines share.

        Args:
            inputs (`GenerationInputs`): The call's arguments, as `_check_call` returns them.
            condition_latents (`torch.Tensor` of shape `(1 or B, C, n, h, w)`, *optional*):
                Normalised clean first `n` latent frames (image-to-video, continuation): they get timestep 0 and are
                written back after every scheduler step.
        """
        self._guidance_scale = inputs.guidance_scale
        self._attention_kwargs = inputs.attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device

        # 2. Text embeddings (B * n, L, D) and masks (B * n, L)
        text = self.encode_prompt(
            **inputs.select(GenerationInputs.PROMPT_FIELDS),
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            device=device,
            dtype=self.transformer.dtype,
        )

        # 3. Timesteps
        self.scheduler.set_timesteps(inputs.num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)

        # 4. Starting noise (B * n, C, F_latent, H_latent, W_latent), kept in float32 for the scheduler's arithmetic
        latents = self.prepare_latents(
            text[0].shape[0],
            self.transformer.config.in_channels,
            inputs.height,
            inputs.width,
            inputs.num_frames,
            torch.float32,
            device,
            inputs.generator,
            inputs.latents,
        )

        # 5. Denoising loop
        latents = self._denoise(latents, TextConditioning(*text), inputs, condition_latents)
        self._current_timestep = None

        # 6. Decode: normalised latents -> VAE latents -> (B, 3, F, H, W) in [-1, 1] -> output_type
        video = latents if inputs.output_type == "latent" else self.decode_latents(latents, inputs.output_type)
        self.maybe_free_model_hooks()
        if not inputs.return_dict:
            return (video,)
        return SpacetimeVideoPipelineOutput(frames=video)

    def _denoise(
        self,
        latents: torch.Tensor,
        text: TextConditioning,
        inputs: GenerationInputs,
        condition_latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """Run the scheduler's steps from `latents` (B, C, F_latent, h, w) in float32 to the clean latents."""
        if condition_latents is not None:
            # Conditioning frames start (and stay) clean: noise level 0, where every scheduler's sample is the clean
            # latent, whatever its parameterisation (flow, VE sigmas or VP alphas).
            condition_latents = condition_latents.to(device=latents.device, dtype=latents.dtype)
            condition_latents = condition_latents.expand(latents.shape[0], -1, -1, -1, -1)  # (B, C, n, h, w)
            latents[:, :, : condition_latents.shape[2]] = condition_latents
        step_kwargs = self._scheduler_step_kwargs(inputs.generator)
        timesteps, sigmas = self.scheduler.timesteps, getattr(self.scheduler, "sigmas", None)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                model_input, timestep = self._model_input(latents, t, condition_latents)
                cache_kwargs = {
                    "step_index": i,
                    "num_inference_steps": len(timesteps),
                    "timestep": t,
                    "sigma": float(sigmas[i]) if sigmas is not None and i < len(sigmas) else None,
                }
                noise_pred = self._guided_prediction(
                    model_input, timestep, text, cache_kwargs, inputs.batched_guidance
                )
                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
                if condition_latents is not None:
                    latents[:, :, : condition_latents.shape[2]] = condition_latents  # held clean through every step
                if inputs.callback_on_step_end is not None:
                    tensors = {"latents": latents, **text._asdict()}
                    callback_kwargs = {name: tensors[name] for name in inputs.callback_on_step_end_tensor_inputs}
                    outputs = inputs.callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = outputs.pop("latents", latents)
                    text = text._replace(**{name: outputs[name] for name in CALLBACK_TEXT_INPUTS if name in outputs})
                progress_bar.update()
        return latents

    def _model_input(
        self, latents: torch.Tensor, t: torch.Tensor, condition_latents: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's input at step `t` and its timestep: `(B,)`, or `(B, F_latent)` with conditioning frames."""
        model_input = latents
        if hasattr(self.scheduler, "scale_model_input"):  # flow schedulers have none: input is the sample
            model_input = self.scheduler.scale_model_input(model_input, t)
        batch_size, _, num_latent_frames = latents.shape[:3]
        if condition_latents is None:
            return model_input.to(self.transformer.dtype), t.expand(batch_size)  # (B,)
        # The model input at noise level 0 is the clean latent for every scheduler (no sigma scaling).
        num_condition = condition_latents.shape[2]
        model_input = model_input.clone()
        model_input[:, :, :num_condition] = condition_latents
        timestep = t.expand(batch_size, num_latent_frames).clone()  # (B, F_latent): one level per frame
        timestep[:, :num_condition] = 0
        return model_input.to(self.transformer.dtype), timestep

    def _guided_prediction(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        text: TextConditioning,
        cache_kwargs: dict[str, Any],
        batched_guidance: bool,
    ) -> torch.Tensor:
        """The (guided) prediction (B, C, F_latent, h, w) in float32; each pass in its own cache context."""

        def predict(context, hidden_states, timestep, embeds, mask):
            with self.transformer.cache_context(context, **cache_kwargs):
                return transformer_prediction(
                    self.transformer, hidden_states, timestep, embeds, mask, self._attention_kwargs
                )

        if not (self.do_classifier_free_guidance and text.negative_prompt_embeds is not None):
            return predict("cond", model_input, timestep, text.prompt_embeds, text.prompt_attention_mask)
        if batched_guidance:
            # One call on [uncond, cond] (2B, ...), the order diffusers' FasterCache splits.
            embeds, mask = _concat_padded(
                (text.negative_prompt_embeds, text.negative_prompt_attention_mask),
                (text.prompt_embeds, text.prompt_attention_mask),
            )  # (2B, L_max, D), (2B, L_max)
            both = predict("cond_uncond", torch.cat([model_input] * 2), torch.cat([timestep] * 2), embeds, mask)
            noise_uncond, noise_pred = both.chunk(2)
        else:
            # Two calls rather than one doubled batch by default: see the module docstring.
            noise_pred = predict("cond", model_input, timestep, text.prompt_embeds, text.prompt_attention_mask)
            noise_uncond = predict(
                "uncond", model_input, timestep, text.negative_prompt_embeds, text.negative_prompt_attention_mask
            )
        return noise_uncond + self._guidance_scale * (noise_pred - noise_uncond)

    def decode_latents(self, latents: torch.Tensor, output_type: str = "np"):
        """Decode normalised latents (B, C, F_latent, h, w) into videos of `output_type` ("np", "pt" or "pil")."""
        vae_device = get_module_execution_device(self.vae)
        latents = self.denormalize_latents(latents.to(device=vae_device, dtype=self.vae.dtype))
        decode_kwargs = vae_decode_kwargs(self.vae, latents.shape[0], vae_device)
        video = self.vae.decode(latents, **decode_kwargs).sample  # (B, 3, F, H, W)
        return self.video_processor.postprocess_video(video, output_type=output_type)
