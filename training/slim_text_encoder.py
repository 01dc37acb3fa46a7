"""The shipped MiniLM text encoder with only the word embeddings that the shapes captions use, for the GPU run.

The device that runs `ship_on_gpu.sh` refuses a working tree over 64 MiB. Half of MiniLM's 45 MB is its word-embedding
table (30,522 x 384), of which the shapes captions use about a hundred rows; the rest of the network is needed whole.
`write_slim` keeps every other weight and only those rows, `load_slim` rebuilds the full model with the other rows
at zero, and `check_vocabulary` refuses any text with a token outside the kept rows, so the slim encoder gives the
full one's states for every text it accepts (tested) and never silently a wrong one.

    python training/slim_text_encoder.py checkpoints/spacetime-shapes .gpu_text_encoder
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

if __package__ in (None, ""):  # run as a file: find `training`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoConfig, AutoModel, AutoTokenizer

from training import make_shapes_dataset as shapes

TABLE = "embeddings.word_embeddings.weight"


def shapes_texts(draws: int = 40, seed: int = 0) -> list[str]:
    """Every kind of text the GPU run encodes: the empty prompt, canonical captions and `draws` phrasings per
    combination and phrasing set (hold-outs included: the evaluation prompts them)."""
    rng = np.random.default_rng(seed)
    texts = [""]
    for attributes in shapes.combination_grid():
        texts.append(shapes.caption(attributes))
        texts += [shapes.varied_caption(attributes, rng, phrasing) for phrasing in ("train", "held_out")
                  for _ in range(draws)]  # fmt: skip
    return texts


def write_slim(base_model: str | Path, output: str | Path, texts: list[str]) -> int:
    """Writes the slim encoder of `base_model`'s text encoder to `output`; returns the number of kept rows."""
    base_model, output = Path(base_model), Path(output)
    tokenizer = AutoTokenizer.from_pretrained(base_model / "tokenizer")
    ids = sorted({i for ids in tokenizer(texts).input_ids for i in ids} | set(tokenizer.all_special_ids))
    weights = load_file(base_model / "text_encoder" / "model.safetensors")
    table = weights.pop(TABLE)
    shutil.rmtree(output, ignore_errors=True)
    (output / "text_encoder").mkdir(parents=True)
    save_file(weights, output / "text_encoder" / "model.safetensors")
    save_file(
        {"ids": torch.tensor(ids), "rows": table[ids].clone()}, output / "text_encoder" / "word_rows.safetensors"
    )
    shutil.copy(base_model / "text_encoder" / "config.json", output / "text_encoder" / "config.json")
    shutil.copytree(base_model / "tokenizer", output / "tokenizer")
    (output / "slim.json").write_text(json.dumps({"kept_rows": len(ids), "of": table.shape[0]}) + "\n")
    return len(ids)


def load_slim(folder: str | Path, dtype: torch.dtype = torch.float32):
    """The full-size text encoder with the kept word-embedding rows (others zero) and its tokenizer."""
    folder = Path(folder)
    model = AutoModel.from_config(AutoConfig.from_pretrained(folder / "text_encoder"))
    weights = load_file(folder / "text_encoder" / "model.safetensors")
    rows = load_file(folder / "text_encoder" / "word_rows.safetensors")
    table = torch.zeros_like(model.get_input_embeddings().weight, dtype=rows["rows"].dtype)
    table[rows["ids"]] = rows["rows"]
    missing, unexpected = model.load_state_dict({**weights, TABLE: table}, strict=False)
    if unexpected or any(not name.endswith("position_ids") for name in missing):
        raise ValueError(f"{folder} does not match its config: missing {missing}, unexpected {unexpected}")
    model.kept_token_ids = set(rows["ids"].tolist())
    return model.to(dtype).eval(), AutoTokenizer.from_pretrained(folder / "tokenizer")


def check_vocabulary(tokenizer, text_encoder, texts: list[str]) -> None:
    """Raises ValueError if a text uses a token whose embedding the slim encoder dropped (no-op for a full one)."""
    kept = getattr(text_encoder, "kept_token_ids", None)
    if kept is None:
        return
    for text, ids in zip(texts, tokenizer(texts).input_ids):
        lost = [tokenizer.convert_ids_to_tokens(i) for i in ids if i not in kept]
        if lost:
            raise ValueError(f"text {text!r} uses tokens {lost} that the slim text encoder does not keep")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_model", help="Pipeline folder with text_encoder/ and tokenizer/.")
    parser.add_argument("output", help="Folder to write the slim encoder and tokenizer to.")
    args = parser.parse_args(argv)
    kept = write_slim(args.base_model, args.output, shapes_texts())
    size = sum(path.stat().st_size for path in Path(args.output).rglob("*") if path.is_file())
    print(f"kept {kept} word-embedding rows; {args.output}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
