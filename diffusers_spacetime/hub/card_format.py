"""How facts read on a model card: counts, durations, values and the rows of the card's tables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# Labels and order for the training facts that scripts usually record; other keys follow, in the order given.
TRAINING_LABELS = {
    "steps": "Optimizer steps",
    "epochs": "Epochs",
    "batch_size": "Batch size (per device)",
    "gradient_accumulation_steps": "Gradient accumulation steps",
    "total_batch_size": "Effective batch size",
    "learning_rate": "Learning rate",
    "lr_scheduler": "LR schedule",
    "lr_warmup_steps": "LR warm-up steps",
    "optimizer": "Optimizer",
    "mixed_precision": "Mixed precision",
    "gradient_checkpointing": "Gradient checkpointing",
    "resolution": "Resolution",
    "num_frames": "Frames per clip",
    "dataset": "Data",
    "num_clips": "Training clips",
    "hardware": "Hardware",
    "wall_time_s": "Wall-clock time",
    "seed": "Seed",
    "final_loss": "Final training loss",
}


def format_count(count: int) -> str:
    """12345678 -> '12.35 M (12,345,678)'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit} ({count:,})"
    return f"{count:,}"


def format_duration(seconds: float) -> str:
    """42 -> '42 s', 600 -> '10 min', 9000 -> '2 h 30 min'."""
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


def format_value(value: Any) -> str:
    """One table cell: booleans as yes/no, floats to 4 digits, sequences in parentheses, no `|` or newlines."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(format_value(item) for item in value) + ")"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {format_value(item)}" for key, item in value.items())
    if value is None:
        return "none"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _humanize(key: str) -> str:
    return key.replace("_", " ").strip().capitalize()


def training_rows(training: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Training facts -> (label, value) rows, known keys first in a fixed order."""
    if not training:
        return []
    rows = []
    for key in [
        *[key for key in TRAINING_LABELS if key in training],
        *[key for key in training if key not in TRAINING_LABELS],
    ]:
        value = training[key]
        if value is None:
            continue
        if key == "wall_time_s" or key.endswith(("_seconds", "_time_s")):
            text = format_duration(value)
        elif key == "learning_rate" and isinstance(value, float):
            text = f"{value:.2e}"
        else:
            text = format_value(value)
        rows.append((TRAINING_LABELS.get(key, _humanize(key)), text))
    return rows


def result_rows(results: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """Measured results -> (metric, value, how it was measured) rows.

    A value may be a number or a string, or a dict `{"value": ..., "note": "on what, how"}`.
    """
    rows = []
    for metric, value in (results or {}).items():
        note = ""
        if isinstance(value, Mapping):
            note = format_value(value.get("note", ""))
            value = value.get("value")
        rows.append((metric, format_value(value), note))
    return rows


def config_rows(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The full public config (keys without a leading underscore) as it reads in config.json, for the card's table."""
    return [
        (key, json.dumps(value, default=str).replace("|", "\\|"))
        for key, value in config.items()
        if not key.startswith("_")
    ]
