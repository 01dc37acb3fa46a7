"""The private diffusers names in `diffusers_spacetime.diffusers_internals` still have the shape the package relies
on. A failure here names the diffusers change to adapt to; without these checks it would surface deep inside a Hub
pull, a LoRA load, a cache hook or a push."""

import inspect

from diffusers import DiffusionPipeline, ModelMixin
from diffusers.loaders.lora_base import LoraBaseMixin
from diffusers.models.attention_dispatch import AttentionBackendName
from diffusers.utils import PushToHubMixin

from diffusers_spacetime import SpacetimeDiTModel, SpacetimeVideoPipeline, diffusers_internals
from diffusers_spacetime.models.transformer_spacetime import SpacetimeAttnProcessor, SpacetimeDiTBlock


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_loadable_classes_lists_libraries_by_name_and_holds_the_package():
    loadable = diffusers_internals.LOADABLE_CLASSES
    assert loadable["diffusers"]["ModelMixin"] == ["save_pretrained", "from_pretrained"]
    assert loadable["diffusers_spacetime"] == diffusers_internals.LOADABLE_METHODS


def test_fetch_state_dict_takes_the_arguments_the_lora_loader_passes():
    expected = ["pretrained_model_name_or_path_or_dict", "weight_name", "use_safetensors", "local_files_only",
                "cache_dir", "force_download", "proxies", "token", "revision", "subfolder", "user_agent",
                "allow_pickle"]  # fmt: skip
    assert parameters(diffusers_internals.fetch_lora_state_dict)[: len(expected)] == expected


def test_save_lora_weights_takes_its_first_four_arguments_in_order():
    names = parameters(LoraBaseMixin._save_lora_weights)  # bound classmethod: no `cls`
    assert names[:4] == ["save_directory", "lora_layers", "lora_metadata", "is_main_process"]
    assert {"weight_name", "save_function", "safe_serialization"} <= set(names)


def test_save_pretrained_push_ends_in_upload_folder():
    assert parameters(PushToHubMixin._upload_folder)[1:] == [
        "working_dir", "repo_id", "token", "commit_message", "create_pr", "subfolder"
    ]  # fmt: skip
    for route in (
        ModelMixin.save_pretrained,
        DiffusionPipeline.save_pretrained,
    ):  # `save_pretrained(push_to_hub=True)`
        assert "self._upload_folder(" in inspect.getsource(route), route.__qualname__
    for cls in (SpacetimeVideoPipeline, SpacetimeDiTModel):
        assert cls._upload_folder.__qualname__ == "SpacetimeHubMixin._upload_folder"
        assert cls.push_to_hub.__qualname__ == "SpacetimeHubMixin.push_to_hub"


def test_hook_registries_find_the_dit_block_and_attention_processor():
    block = diffusers_internals.TransformerBlockRegistry.get(SpacetimeDiTBlock)
    assert isinstance(block, diffusers_internals.TransformerBlockMetadata)
    assert block.return_hidden_states_index == 0 and block.return_encoder_hidden_states_index is None
    attention = diffusers_internals.AttentionProcessorRegistry.get(SpacetimeAttnProcessor)
    assert isinstance(attention, diffusers_internals.AttentionProcessorMetadata)
    assert callable(attention.skip_processor_output_fn)


def test_context_parallel_plan_entries_and_the_active_backend():
    split = diffusers_internals.ContextParallelInput(split_dim=1, expected_dims=4, split_output=True)
    gather = diffusers_internals.ContextParallelOutput(gather_dim=1, expected_dims=3)
    assert (split.split_dim, split.expected_dims, split.split_output) == (1, 4, True)
    assert (gather.gather_dim, gather.expected_dims) == (1, 3)
    assert isinstance(diffusers_internals.active_attention_backend(), AttentionBackendName)
