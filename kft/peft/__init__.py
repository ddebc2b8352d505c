"""Parameter-efficient fine-tuning: LoRA/DoRA, adapters, soft prompts, adapter files."""

from kft.peft.adapter_files import base_fingerprint
from kft.peft.adapter_files import load_adapter
from kft.peft.adapter_files import read_adapter_config
from kft.peft.adapter_files import save_adapter
from kft.peft.bottleneck import apply_bottleneck_adapters
from kft.model_tree import layer_paths
from kft.peft.lora import active_adapter
from kft.peft.lora import add_adapter
from kft.peft.lora import apply_lora
from kft.peft.lora import combine_adapters
from kft.peft.lora import delete_adapter
from kft.peft.lora import list_adapters
from kft.peft.lora import lora_layers
from kft.peft.lora import merge
from kft.peft.lora import set_adapter
from kft.peft.lora import unmerge
from kft.peft.lora import without_adapters
# The .keras loader lives in kft.saving; this name stays for old code.
from kft.saving import load_model
from kft.peft.prompt_tuning import apply_prompt_tuning
from kft.model_tree import ParameterCount
from kft.model_tree import count_parameters
from kft.peft.trainable import freeze_base
