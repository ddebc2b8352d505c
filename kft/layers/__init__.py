"""kft's Keras layers: LoRA projections, bottleneck adapters, soft prompts,
image preprocessing. Each works inside any Keras model and survives `.keras`
save/load."""

from kft.layers.bottleneck_adapter import BottleneckAdapter
from kft.layers.image_preprocessing import ImagePreprocessing
from kft.layers.lora_adapters import AdapterSpec
from kft.layers.lora_dense import LoRADense
from kft.layers.lora_einsum_dense import EinsumFactorization
from kft.layers.lora_einsum_dense import LoRAEinsumDense
from kft.layers.soft_prompt import PrefixPadding
from kft.layers.soft_prompt import SoftPrompt
