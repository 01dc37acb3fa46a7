"""Image-to-video and video continuation with the text-to-video weights: per-frame noise levels.

The conditioning frames (an image, or the last `1 + k*r` frames of a clip) are encoded by the causal VAE into the
first latent frames, which then stay clean: timestep 0 for those frames in every transformer call (the DiT takes a
`(B, F_latent)` timestep) and written back after every scheduler step. The other latent frames are denoised as in
text-to-video. No second model, no extra input channels: the same checkpoint serves all three tasks when it was
trained with clean leading frames (`train_text_to_video.py`'s conditioning option).

Output: all `num_frames` frames, the first `num_conditioning_frames` being the VAE's reconstruction of the
conditioning, then the generated continuation.

Resizing rule (`resize_mode`, diffusers' `VaeImageProcessor` modes): `"default"` resizes to exactly `height x width`
and so changes the aspect ratio when it differs (a warning says so); `"crop"` scales to cover the size and cuts the
overflow from the centre; `"fill"` scales to fit and fills the margins from the image's edges. Nothing is cropped
unless `"crop"` is asked for. `height`/`width` default to the checkpoint's size, not the image's.
"""

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import load_video, logging, replace_example_docstring
from diffusers.utils.torch_utils import get_module_execution_device

from .pipeline_output import SpacetimeVideoPipelineOutput
from .pipeline_spacetime import GenerationInputs, SpacetimeVideoPipeline, shared_arguments_docstring

logger = logging.get_logger(__name__)

RESIZE_MODES = ("default", "crop", "fill")

EXAMPLE_DOC_STRING = """
    Examples:
        ```python
        >>> import torch
        >>> import PIL.Image
        >>> import diffusers_spacetime  # registers the package's classes with diffusers
        >>> from diffusers.utils import export_to_video
        >>> from diffusers_spacetime import SpacetimeImageToVideoPipeline

        >>> pipe = SpacetimeImageToVideoPipeline.from_pretrained("checkpoints/spacetime-shapes")
        >>> image = PIL.Image.open("first_frame.png")
        >>> video = pipe(image, "the red circle moves to the right", generator=torch.Generator().manual_seed(0)).frames[0]
        >>> export_to_video(video, "animated.mp4", fps=8)

        >>> # Continue a clip: condition on its last 5 frames, generate 16 more (21 frames returned in all).
        >>> video = pipe(video="clip.mp4", prompt="the circle keeps moving", num_frames=21, num_conditioning_frames=5)
        ```
"""


class SpacetimeImageToVideoPipeline(SpacetimeVideoPipeline):
    r"""
    Image-to-video and video continuation with [`SpacetimeDiTModel`] and [`AutoencoderKLSpacetime`].

    Same components, config and LoRA methods as [`SpacetimeVideoPipeline`] (build one from the other with
    `SpacetimeImageToVideoPipeline(**pipe.components, **defaults)` or `SpacetimeImageToVideoPipeline.from_pipe(pipe)`);
    `__call__` adds `image` / `video`, `num_conditioning_frames` and `resize_mode`.
    """

    # ------------------------------------------------------------------------------------------------ conditioning

    @staticmethod
    def _to_pil(frame: Any, name: str) -> PIL.Image.Image:
        """One frame (PIL, array (H, W, 3), tensor (3, H, W); uint8 or floats in [0, 1]) -> an RGB PIL image."""
        if isinstance(frame, PIL.Image.Image):
            return frame.convert("RGB")
        if isinstance(frame, torch.Tensor):
            if frame.ndim != 3 or frame.shape[0] != 3:
                raise ValueError(f"`{name}` frames as tensors must be (3, H, W), got {tuple(frame.shape)}.")
            frame = frame.detach().cpu().permute(1, 2, 0).numpy()  # (H, W, 3)
        if not isinstance(frame, np.ndarray):
            raise ValueError(
                f"`{name}` must be PIL images, numpy arrays or torch tensors, got {type(frame).__name__}."
            )
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"`{name}` frames as arrays must be (H, W, 3) RGB, got shape {frame.shape}.")
        if frame.shape[0] == 0 or frame.shape[1] == 0:
            raise ValueError(f"`{name}` has an empty frame of shape {frame.shape}.")
        if frame.dtype == np.uint8:
            return PIL.Image.fromarray(frame)
        if not np.issubdtype(frame.dtype, np.floating):
            raise ValueError(f"`{name}` arrays must be uint8 or floats in [0, 1], got dtype {frame.dtype}.")
        if not np.isfinite(frame).all() or frame.min() < 0.0 or frame.max() > 1.0:
            raise ValueError(
                f"`{name}` float values must lie in [0, 1], got [{float(np.nanmin(frame)):.3g}, "
                f"{float(np.nanmax(frame)):.3g}] (NaN or inf included)."
            )
        return PIL.Image.fromarray((frame.astype(np.float32) * 255).round().astype(np.uint8))

    def _conditioning_frames(self, image, video) -> list[PIL.Image.Image]:
        """`image` -> [frame]; `video` (path, list of frames, array (F, H, W, 3), tensor (F, 3, H, W)) -> frames."""
        if image is not None:
            if isinstance(image, (list, tuple, str, os.PathLike)):
                raise ValueError(
                    f"`image` must be one PIL image, numpy array or tensor, got {type(image).__name__}; for a clip "
                    "use `video=`."
                )
            if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
                if image.shape[0] != 1:
                    raise ValueError(f"`image` must be a single image, got a batch of shape {tuple(image.shape)}.")
                image = image[0]
            return [self._to_pil(image, "image")]
        if isinstance(video, (str, os.PathLike)):
            path = os.fspath(video)
            if not os.path.isfile(path):
                raise ValueError(f"`video` file not found: {path!r}.")
            try:
                frames = load_video(path)
            except Exception as error:  # any decoder failure is a bad input file, reported as such
                raise ValueError(f"`video` file {path!r} could not be read as a video: {error}") from error
            return [frame.convert("RGB") for frame in frames]
        if isinstance(video, (np.ndarray, torch.Tensor)):
            if video.ndim != 4:
                raise ValueError(
                    f"`video` as an array must be (F, H, W, 3) or a tensor (F, 3, H, W), got {tuple(video.shape)}."
                )
            return [self._to_pil(frame, "video") for frame in video]
        if isinstance(video, (list, tuple)):
            return [self._to_pil(frame, "video") for frame in video]
        raise ValueError(
            f"`video` must be a file path, a list of frames, an array or a tensor, got {type(video).__name__}."
        )

    def _resize(self, frames: list[PIL.Image.Image], height: int, width: int, resize_mode: str) -> torch.Tensor:
        """Frames -> (1, 3, F, height, width) in [-1, 1], by the module docstring's rule."""
        source_width, source_height = frames[0].size
        if resize_mode == "default" and not math.isclose(source_width / source_height, width / height, rel_tol=0.01):
            logger.warning(
                f"Conditioning frames of {source_width}x{source_height} are resized to {width}x{height}, changing "
                "the aspect ratio; pass resize_mode='crop' or 'fill' to keep it."
            )
        pixels = self.video_processor.preprocess(frames, height=height, width=width, resize_mode=resize_mode)
        return pixels.permute(1, 0, 2, 3).unsqueeze(0)  # (F, 3, H, W) -> (1, 3, F, H, W)

    def encode_conditioning(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (1, 3, 1 + k*r, H, W) in [-1, 1] -> normalised clean latents (1, C, 1 + k, h, w) (posterior mode)."""
        vae_device = get_module_execution_device(self.vae)
        pixels = pixels.to(device=vae_device, dtype=self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.mode()
        return self.normalize_latents(latents.float())

    # ------------------------------------------------------------------------------------------------ call

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    @shared_arguments_docstring
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        video: str | os.PathLike | list | np.ndarray | torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_conditioning_frames: int | None = None,
        resize_mode: str = "default",
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
    ) -> SpacetimeVideoPipelineOutput | tuple:
        r"""
        Animate an image, or continue a clip, as the prompt says.

        Args:
            image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`, *optional*):
                The first frame: PIL (any mode, converted to RGB), an array `(H, W, 3)` or a tensor `(3, H, W)`,
                uint8 or floats in [0, 1]. Resized to `height x width` by `resize_mode`. Pass this or `video`.
            prompt (`str` or `list[str]`, *optional*): What happens; or pass `prompt_embeds`.
            negative_prompt (`str` or `list[str]`, *optional*): What to steer away from when guidance is on.
            video (`str`, `os.PathLike`, list of frames, `np.ndarray` or `torch.Tensor`, *optional*):
                A clip to continue: a video file, a list of frames (as for `image`), an array `(F, H, W, 3)` or a
                tensor `(F, 3, H, W)`. Its last `num_conditioning_frames` frames condition the generation.
            height (`int`, *optional*): Output height; the checkpoint's `default_height` by default.
            width (`int`, *optional*): Output width; the checkpoint's `default_width` by default.
            num_frames (`int`, *optional*):
                Frames returned, conditioning frames included: `1 + k * r`, the checkpoint's default by default.
            num_conditioning_frames (`int`, *optional*):
                Clean leading frames, `1 + k * r` and fewer latent frames than the output: 1 for `image` (the only
                value), `1 + r` (two latent frames) by default for `video`.
            resize_mode (`str`, defaults to `"default"`):
                `"default"` (exact size, aspect may change, with a warning), `"crop"` (cover, centre crop) or
                `"fill"` (fit, fill the margins from the edges).
            {shared_arguments}

        Examples:

        Returns:
            [`SpacetimeVideoPipelineOutput`] or `tuple`: the videos; their first `num_conditioning_frames` frames
            reconstruct the conditioning.
        """
        # 1. The text-to-video checks (with the checkpoint's size defaults), then the conditioning checks
        inputs = GenerationInputs(
            prompt=prompt,
            negative_prompt=negative_prompt,
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            num_videos_per_prompt=num_videos_per_prompt,
            generator=generator,
            latents=latents,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            output_type=output_type,
            return_dict=return_dict,
            attention_kwargs=attention_kwargs,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            max_sequence_length=max_sequence_length,
            prompt_attention_mask=prompt_attention_mask,
            negative_prompt_attention_mask=negative_prompt_attention_mask,
        )
        inputs = self._check_call(inputs)
        num_conditioning_frames = self._check_conditioning(
            image, video, inputs.num_frames, num_conditioning_frames, resize_mode
        )

        # 2. The shared sampling loop, holding the conditioning latent frames clean
        condition_latents = self._condition_latents(image, video, num_conditioning_frames, inputs, resize_mode)
        return self._generate(inputs, condition_latents=condition_latents)

    def _condition_latents(
        self, image, video, num_conditioning_frames: int, inputs: GenerationInputs, resize_mode: str
    ) -> torch.Tensor:
        """Conditioning frames -> (1, 3, n, H, W) in [-1, 1] -> clean normalised latents (1, C, n_latent, h, w)."""
        frames = self._conditioning_frames(image, video)
        if len(frames) < num_conditioning_frames:
            raise ValueError(
                f"`video` has {len(frames)} frames, fewer than `num_conditioning_frames` ({num_conditioning_frames})."
            )
        pixels = self._resize(frames[-num_conditioning_frames:], inputs.height, inputs.width, resize_mode)
        return self.encode_conditioning(pixels)

    def _check_conditioning(self, image, video, num_frames, num_conditioning_frames, resize_mode) -> int:
        """Validate the conditioning arguments; returns the number of conditioning frames."""
        if (image is None) == (video is None):
            raise ValueError("Pass exactly one of `image` (image-to-video) and `video` (continuation).")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"`resize_mode` must be one of {list(RESIZE_MODES)}, got {resize_mode!r}.")
        temporal = self.vae_scale_factor_temporal
        if image is not None:
            if num_conditioning_frames not in (None, 1):
                raise ValueError(
                    f"`num_conditioning_frames` is 1 for an `image`, got {num_conditioning_frames}; use `video=` for more."
                )
            num_conditioning_frames = 1
        elif num_conditioning_frames is None:
            num_conditioning_frames = 1 + temporal
        if (
            not isinstance(num_conditioning_frames, int)
            or isinstance(num_conditioning_frames, bool)
            or num_conditioning_frames <= 0
            or (num_conditioning_frames - 1) % temporal != 0
        ):
            raise ValueError(
                f"`num_conditioning_frames` must be 1 + k * {temporal} (the VAE's temporal compression), got "
                f"{num_conditioning_frames!r}."
            )
        condition_latent_frames = (num_conditioning_frames - 1) // temporal + 1
        latent_frames = (num_frames - 1) // temporal + 1
        if condition_latent_frames >= latent_frames:
            raise ValueError(
                f"`num_frames` ({num_frames}) leaves nothing to generate after {num_conditioning_frames} conditioning "
                f"frame(s): use at least {num_conditioning_frames + temporal}."
            )
        patch_frames = self.transformer.config.patch_size[0]
        if condition_latent_frames % patch_frames != 0:
            raise ValueError(
                f"`num_conditioning_frames` ({num_conditioning_frames}) gives {condition_latent_frames} latent frames, "
                f"which the transformer's temporal patch size {patch_frames} does not divide."
            )
        return num_conditioning_frames
