"""What the package says to the Hugging Face Hub: which strings name a repo, model cards, and pushes."""

from .references import is_hub_id

__all__ = ["is_hub_id"]
