"""The pipelines' LoRA loader: diffusers' `LoraBaseMixin` for a pipeline whose only LoRA target is `transformer`.

Modelled on diffusers' `CogVideoXLoraLoaderMixin` (diffusers/loaders/lora_pipeline.py), with two additions:
- key layouts: files with diffusers keys (`transformer.blocks.0.attn1.to_q.lora_A.weight`), bare peft keys
  (`base_model.model.blocks.0...` from `PeftModel.save_pretrained`, or `blocks.0...` from `save_lora_adapter`), and
  keys that still carry an adapter name (`...lora_A.default.weight`) all load; a peft folder's `adapter_config.json`
  is read when the weights file carries no LoRA metadata;
- errors that say what is wrong: a missing file or folder, keys that match no module of the transformer, an unknown
  adapter name.
`set_adapters`, `disable_lora`, `enable_lora`, `get_active_adapters`, `get_list_adapters` and `unload_lora_weights`
come from `LoraBaseMixin` unchanged.
"""

import dataclasses
import json
import os
import pickle
import re
from collections.abc import Callable

import torch
from diffusers.loaders.lora_base import LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_SAFE, LoraBaseMixin
from diffusers.utils import USE_PEFT_BACKEND, logging
from huggingface_hub.utils import validate_hf_hub_args

from ..diffusers_internals import fetch_lora_state_dict
from ..hub.references import is_hub_id

logger = logging.get_logger(__name__)

TRANSFORMER_NAME = "transformer"
# What `PeftModel.save_pretrained` writes.
PEFT_WEIGHT_NAME_SAFE = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
# `...lora_A.<adapter>.weight` (a raw model state dict) -> `...lora_A.weight` (the saved layout).
_ADAPTER_NAME_IN_KEY = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector)\.[^.]+\.(weight|bias)$")
_LORA_SUFFIX = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector)(\.weight|\.bias)?$")


def _module_name(key: str) -> str:
    """`transformer.blocks.0.attn1.to_q.lora_A.weight` -> `blocks.0.attn1.to_q`."""
    return _LORA_SUFFIX.sub("", key.removeprefix(f"{TRANSFORMER_NAME}."))


class SpacetimeLoraLoaderMixin(LoraBaseMixin):
    r"""
    Load, save, fuse and mix LoRA adapters of the pipeline's [`SpacetimeDiTModel`] (the `transformer` component).

    Files written by [`~SpacetimeLoraLoaderMixin.save_lora_weights`] are diffusers' standard
    `pytorch_lora_weights.safetensors` with keys prefixed `transformer.`.
    """

    _lora_loadable_modules = [TRANSFORMER_NAME]
    transformer_name = TRANSFORMER_NAME

    @classmethod
    @validate_hf_hub_args
    def lora_state_dict(
        cls, pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor], **kwargs
    ):
        r"""
        Read a LoRA state dict and return it in the diffusers layout (keys `transformer.<module>.lora_A.weight`).

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`):
                A folder, a `.safetensors`/`.bin` file, a Hub repo id, or a state dict in any supported layout.
            weight_name (`str`, *optional*):
                File name inside the folder or repo; guessed when there is one candidate.
            return_lora_metadata (`bool`, defaults to False):
                Also return the LoRA config metadata (keys prefixed `transformer.`), or None when there is none.
            kwargs:
                Hub arguments: `cache_dir`, `force_download`, `proxies`, `local_files_only`, `token`, `revision`,
                `subfolder`, `use_safetensors`.
        """
        cache_dir = kwargs.pop("cache_dir", None)
        force_download = kwargs.pop("force_download", False)
        proxies = kwargs.pop("proxies", None)
        local_files_only = kwargs.pop("local_files_only", None)
        token = kwargs.pop("token", None)
        revision = kwargs.pop("revision", None)
        subfolder = kwargs.pop("subfolder", None)
        weight_name = kwargs.pop("weight_name", None)
        use_safetensors = kwargs.pop("use_safetensors", None)
        return_lora_metadata = kwargs.pop("return_lora_metadata", False)
        if kwargs:
            raise TypeError(f"Unexpected arguments: {sorted(kwargs)}.")

        allow_pickle = False
        if use_safetensors is None:
            use_safetensors = True
            allow_pickle = True

        source = pretrained_model_name_or_path_or_dict
        peft_config_metadata = None
        if not isinstance(source, dict):
            source = os.fspath(source)
            weight_name, peft_config_metadata = cls._check_local_source(source, subfolder, weight_name)
            if not allow_pickle:
                cls._refuse_pickle(source, subfolder, weight_name)

        try:
            state_dict, metadata = fetch_lora_state_dict(
                pretrained_model_name_or_path_or_dict=source,
                weight_name=weight_name,
                use_safetensors=use_safetensors,
                local_files_only=local_files_only,
                cache_dir=cache_dir,
                force_download=force_download,
                proxies=proxies,
                token=token,
                revision=revision,
                subfolder=subfolder,
                user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
                allow_pickle=allow_pickle,
            )
        except OSError as error:
            # diffusers reports a pickle that torch's weights-only loader refused as "Unable to load weights from
            # checkpoint file": say why (nothing in it ran; the refusal is what keeps its code from running).
            refusal = error
            while refusal is not None and not isinstance(refusal, pickle.UnpicklingError):
                refusal = refusal.__cause__ or refusal.__context__
            if refusal is None:
                raise
            # torch's message starts with advice to retry with weights_only=False: keep only what it refused
            lines = [line.strip() for line in str(refusal).splitlines() if "GLOBAL" in line or "Unsupported" in line]
            reason = lines[0] if lines else type(refusal).__name__
            raise OSError(
                f"Refused to load the LoRA pickle {weight_name or source!r}: it holds more than tensors, and torch's "
                f"weights-only loader stopped before running any of it ({reason}). Use a .safetensors file."
            ) from error
        if metadata is None:
            metadata = peft_config_metadata

        if any("dora_scale" in key for key in state_dict):
            logger.warning("Dropping `dora_scale` keys: DoRA checkpoints in that layout are not supported.")
            state_dict = {k: v for k, v in state_dict.items() if "dora_scale" not in k}

        state_dict, metadata = cls._to_diffusers_layout(state_dict, metadata)
        return (state_dict, metadata) if return_lora_metadata else state_dict

    @staticmethod
    def _check_local_source(source: str, subfolder: str | None, weight_name: str | None):
        """Clear errors for missing local files; pick a peft folder's weights and read its `adapter_config.json`."""
        if is_hub_id(source):
            # A Hub repo id: default to the file `save_lora_weights` writes. diffusers would otherwise guess the name
            # through `model_info`, which fails offline and, without the token, on private repos.
            return weight_name or LORA_WEIGHT_NAME_SAFE, None
        if not os.path.exists(source):
            raise FileNotFoundError(
                f"LoRA weights not found: {source!r} is neither a file, a folder nor a Hub repo id."
            )
        if os.path.isfile(source):
            return weight_name, None
        folder = os.path.join(source, subfolder) if subfolder else source
        if weight_name is not None:
            if not os.path.isfile(os.path.join(folder, weight_name)):
                raise FileNotFoundError(f"LoRA weights not found: no file {weight_name!r} in {folder!r}.")
            chosen = weight_name
        else:
            candidates = [f for f in sorted(os.listdir(folder)) if f.endswith((".safetensors", ".bin"))]
            if not candidates:
                raise FileNotFoundError(
                    f"LoRA weights not found: {folder!r} has no .safetensors or .bin file "
                    f"(expected {LORA_WEIGHT_NAME_SAFE!r})."
                )
            for preferred in (LORA_WEIGHT_NAME_SAFE, LORA_WEIGHT_NAME, PEFT_WEIGHT_NAME_SAFE):
                if preferred in candidates:
                    chosen = weight_name = preferred
                    break
            else:
                chosen = None  # let diffusers guess (and warn if several files compete)
        peft_config_metadata = None
        config_path = os.path.join(folder, PEFT_CONFIG_NAME)
        if chosen == PEFT_WEIGHT_NAME_SAFE and os.path.isfile(config_path):
            from peft import LoraConfig

            with open(config_path) as f:
                config = json.load(f)
            fields = {field.name for field in dataclasses.fields(LoraConfig)}
            peft_config_metadata = {k: v for k, v in config.items() if k in fields}
        return weight_name, peft_config_metadata

    @staticmethod
    def _refuse_pickle(source: str, subfolder: str | None, weight_name: str | None) -> None:
        """`use_safetensors=True` was passed: a local pickle file (`.bin`, `.pt`, ...) is not read at all."""
        if is_hub_id(source):
            return
        path = source if os.path.isfile(source) else os.path.join(source, subfolder or "", weight_name or "")
        if os.path.isfile(path) and not path.endswith(".safetensors"):
            raise ValueError(
                f"use_safetensors=True, but the LoRA weights {path!r} are not a .safetensors file (pickles can run "
                "code when loaded): convert them, or leave `use_safetensors` unset to allow torch's weights-only load."
            )

    @staticmethod
    def _to_diffusers_layout(state_dict: dict[str, torch.Tensor], metadata: dict | None):
        """Normalise any supported key layout to `transformer.<module>.lora_{A,B}.weight`."""
        if not state_dict:
            raise ValueError("The LoRA state dict is empty.")
        not_lora = [k for k in state_dict if "lora" not in k]
        if not_lora:
            raise ValueError(
                f"Not a LoRA state dict: {len(not_lora)} keys without 'lora' in their name, e.g. {not_lora[0]!r}."
            )
        prefix = f"{TRANSFORMER_NAME}."
        prefixed = [k for k in state_dict if k.startswith(prefix)]
        if prefixed and len(prefixed) != len(state_dict):
            others = sorted({k.split(".")[0] for k in state_dict if not k.startswith(prefix)})
            raise ValueError(
                f"This pipeline loads LoRA weights into `transformer` only; the file also has keys for {others}."
            )
        if not prefixed:
            state_dict = {f"{prefix}{k.removeprefix(_PEFT_PREFIX)}": v for k, v in state_dict.items()}
            if metadata is not None and not any(k.startswith(prefix) for k in metadata):
                metadata = {f"{prefix}{k}": v for k, v in metadata.items()}
        state_dict = {_ADAPTER_NAME_IN_KEY.sub(r".\1.\2", k): v for k, v in state_dict.items()}
        return state_dict, metadata

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        hotswap: bool = False,
        **kwargs,
    ):
        r"""
        Load a LoRA adapter into `self.transformer`.

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`):
                A folder, a weights file, a Hub repo id, or a state dict; diffusers (`transformer.`-prefixed) and bare
                peft key layouts both load.
            adapter_name (`str`, *optional*):
                Name to load the adapter under (`default_0`, `default_1`, ... when None); must be new unless
                `hotswap=True`.
            hotswap (`bool`, defaults to False):
                Replace the weights of the already loaded adapter `adapter_name` in place (see diffusers'
                `enable_lora_hotswap`).
            kwargs:
                `weight_name`, `low_cpu_mem_usage` and the Hub arguments of [`~SpacetimeLoraLoaderMixin.lora_state_dict`].
        """
        if not USE_PEFT_BACKEND:
            raise ValueError("LoRA loading needs the `peft` package: `pip install peft`.")
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = pretrained_model_name_or_path_or_dict.copy()
        kwargs["return_lora_metadata"] = True
        state_dict, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)

        transformer = getattr(self, self.transformer_name)
        self._check_keys_match(state_dict, transformer)
        loaded = getattr(transformer, "peft_config", {})
        if adapter_name is not None and adapter_name in loaded and not hotswap:
            raise ValueError(
                f"An adapter named {adapter_name!r} is already loaded (loaded: {sorted(loaded)}): pick another "
                "`adapter_name`, or pass `hotswap=True` to replace its weights."
            )
        adapter = {"adapter_name": adapter_name, "metadata": metadata, "hotswap": hotswap}
        self.load_lora_into_transformer(
            state_dict, transformer, _pipeline=self, low_cpu_mem_usage=low_cpu_mem_usage, **adapter
        )

    @staticmethod
    def _check_keys_match(state_dict: dict[str, torch.Tensor], transformer: torch.nn.Module) -> None:
        """Every LoRA key must name a module of the transformer; a partial match would load a different adapter."""
        module_names = {name for name, _ in transformer.named_modules()}
        wanted = sorted({_module_name(k) for k in state_dict})
        missing = [name for name in wanted if name not in module_names]
        if missing:
            examples = [n for n in sorted(module_names) if n.endswith(("to_q", "to_k", "to_v"))][:2]
            what = "none" if len(missing) == len(wanted) else f"{len(missing)} of {len(wanted)}"
            raise ValueError(
                f"LoRA keys do not match the transformer: {what} of the targeted modules exist in "
                f"{type(transformer).__name__} (e.g. {missing[0]!r}). Expected module names like {examples}, keyed "
                f"as 'transformer.<module>.lora_A.weight'."
            )

    @classmethod
    def load_lora_into_transformer(
        cls,
        state_dict,
        transformer,
        adapter_name=None,
        _pipeline=None,
        low_cpu_mem_usage=False,
        hotswap: bool = False,
        metadata=None,
    ):
        """Inject a `transformer.`-prefixed LoRA state dict into `transformer` (diffusers' `load_lora_adapter`)."""
        logger.info(f"Loading {cls.transformer_name}.")
        adapter = {"adapter_name": adapter_name, "metadata": metadata, "hotswap": hotswap}
        transformer.load_lora_adapter(
            state_dict,
            prefix=cls.transformer_name,
            _pipeline=_pipeline,
            low_cpu_mem_usage=low_cpu_mem_usage,
            **adapter,
        )

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        transformer_lora_layers: dict[str, torch.nn.Module | torch.Tensor] | None = None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function: Callable | None = None,
        safe_serialization: bool = True,
        transformer_lora_adapter_metadata: dict | None = None,
        base_model: str | None = None,
        repo_id: str | None = None,
        **card_kwargs,
    ):
        r"""
        Save transformer LoRA layers as `pytorch_lora_weights.safetensors` with keys prefixed `transformer.`.

        With `base_model`, the adapter's model card goes beside the weights as `README.md`; `push_lora_to_hub` then
        publishes the folder with the same `base_model`.

        Args:
            save_directory (`str` or `os.PathLike`): Folder to write to (created if needed).
            transformer_lora_layers (`dict`):
                The LoRA state dict, e.g. `peft.utils.get_peft_model_state_dict(pipe.transformer, adapter_name=...)`.
            is_main_process (`bool`, defaults to True): Only the main process writes (distributed training).
            weight_name (`str`, *optional*): File name; `pytorch_lora_weights.safetensors` by default.
            save_function (`Callable`, *optional*): Replaces the default writer.
            safe_serialization (`bool`, defaults to True): safetensors rather than pickle.
            transformer_lora_adapter_metadata (`dict`, *optional*):
                The adapter's `LoraConfig` as a dict (`pipe.transformer.peft_config[name].to_dict()`), stored in the
                file so that loading restores `lora_alpha` and the targets exactly.
            base_model (`str`, *optional*): The pipeline repo the adapter works on; writes the model card.
            repo_id (`str`, *optional*): Where the adapter will live, for the card's snippet (default: the folder).
            card_kwargs: `trigger` and the card's facts ([`~diffusers_spacetime.hub.cards.CardText`] fields).
        """
        if not transformer_lora_layers:
            raise ValueError("Pass `transformer_lora_layers`: there is nothing to save.")
        if base_model is not None and not safe_serialization:
            raise ValueError("The adapter's model card describes a .safetensors file: keep `safe_serialization=True`.")
        layers = {cls.transformer_name: transformer_lora_layers}
        metadata = {cls.transformer_name: transformer_lora_adapter_metadata}
        options = {
            "weight_name": weight_name,
            "save_function": save_function,
            "safe_serialization": safe_serialization,
        }
        cls._save_lora_weights(save_directory, layers, metadata, is_main_process, **options)
        if base_model is not None and is_main_process:
            from ..hub.cards import lora_card

            weights = os.path.join(save_directory, weight_name or LORA_WEIGHT_NAME_SAFE)
            card = lora_card(weights, repo_id or os.fspath(save_directory), base_model=base_model, **card_kwargs)
            card.save(os.path.join(save_directory, "README.md"))

    def fuse_lora(
        self,
        components: list[str] = (TRANSFORMER_NAME,),
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
        **kwargs,
    ):
        r"""
        Merge the active (or the named) adapters into the transformer's weights, scaled by `lora_scale`.

        Args:
            components (`list[str]`, defaults to `("transformer",)`): Components to fuse into.
            lora_scale (`float`, defaults to 1.0): Strength of the fused adapters.
            safe_fusing (`bool`, defaults to False): Check the fused weights for NaN first.
            adapter_names (`list[str]`, *optional*): Adapters to fuse; all active ones by default.
        """
        if adapter_names is not None:
            self._check_adapter_names(adapter_names)
        super().fuse_lora(
            components=list(components),
            lora_scale=lora_scale,
            safe_fusing=safe_fusing,
            adapter_names=adapter_names,
            **kwargs,
        )

    def unfuse_lora(self, components: list[str] = (TRANSFORMER_NAME,), **kwargs):
        r"""Undo [`~SpacetimeLoraLoaderMixin.fuse_lora`]."""
        super().unfuse_lora(components=list(components), **kwargs)

    def delete_adapters(self, adapter_names: list[str] | str):
        r"""Delete adapters by name; unknown names raise instead of being ignored."""
        self._check_adapter_names(adapter_names)
        super().delete_adapters(adapter_names)

    def _check_adapter_names(self, adapter_names: list[str] | str) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        loaded = {name for names_ in self.get_list_adapters().values() for name in names_}
        unknown = [name for name in names if name not in loaded]
        if unknown:
            raise ValueError(f"Unknown adapter name(s) {unknown}; loaded adapters: {sorted(loaded)}.")
