"""A causal-LM run's model for other stacks: a keras-hub preset folder or Hugging Face format.

LoRA adapters are merged into the kernels and the LoRA layers turned back
into keras-hub's own, and the instruction preprocessor (a kft class) is
replaced by the architecture's own keras-hub preprocessor with the same
tokenizer and sequence length, so the export holds nothing kft-specific
except, for models read from GGUF files, the tokenizer
(`ChatBytePairTokenizer`, which keeps the chat template: `import kft`
before `keras_hub.models.CausalLM.from_preset`). The Hugging Face format
is keras-hub's `export_to_transformers` (GPT-2, Llama 3, Gemma, Mistral and
Qwen in keras-hub 0.32); what keras-hub cannot convert is one error naming
the architecture.
"""

import json

from kft.errors import KftError
from kft.export import versions

FORMATS = ("keras-hub", "transformers")
# transformers' class per `model_type`, what its `save_pretrained` records as
# `architectures`; keras-hub 0.32's exporter leaves it out, and keras-hub's
# own Hugging Face reader needs it.
_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                  "mistral": "MistralForCausalLM", "gemma": "GemmaForCausalLM",
                  "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def export_run_causal_lm(run_dir, to, export_format="keras-hub", name=None, version=None):
    """Exports a causal-LM run's final model, adapters merged, as `to/name/version/`.

    Args:
        run_dir: a finished causal-LM run directory.
        to: the base folder.
        export_format: `"keras-hub"` (a preset folder:
            `keras_hub.models.CausalLM.from_preset(folder)`) or
            `"transformers"` (config.json, model.safetensors and tokenizer
            files for `transformers.AutoModelForCausalLM.from_pretrained`).
        name: the model name (default: the run's recipe name).
        version: a positive integer; `None` takes the next free one.

    Returns:
        The published version folder, a `pathlib.Path`.

    Raises:
        KftError: the run is not a causal-LM run, or keras-hub cannot write
            its architecture in Hugging Face format (nothing is published).

    Example:
    ```python
    folder = kft.export.export_run_causal_lm("runs/gpt2_domain-20261203-120000", "models")
    keras_hub.models.CausalLM.from_preset(str(folder)).generate("The patient was")
    ```
    """
    from kft.export.run_export import recipe_name
    from kft.inference.run_model import load

    if export_format not in FORMATS:
        raise KftError(f"format must be one of {', '.join(FORMATS)}, got {export_format!r}.")
    run = load(run_dir)
    if run.kind != "causal_lm":
        raise KftError(f"{run.run_dir} holds a {run.kind} model; --format {export_format} "
                       "exports causal-LM runs (use --format serving or onnx).")
    model = plain_causal_lm(run.model)
    folder = versions.model_dir(to, name or recipe_name(run.run_dir) or model.name)

    def write(path):
        if export_format == "keras-hub":
            model.save_to_preset(str(path))
            return
        try:
            model.export_to_transformers(str(path))
        except (ValueError, KeyError, NotImplementedError) as error:
            raise KftError(
                f"keras-hub cannot write a {type(model.backbone).__name__} with a "
                f"{type(model.preprocessor.tokenizer).__name__} in Hugging Face format "
                f"({error}); export --format keras-hub instead.") from None
        _name_architecture(path / "config.json")

    return versions.publish_version(folder, version, write)


def _name_architecture(config_file):
    config = json.loads(config_file.read_text())
    architecture = _ARCHITECTURES.get(config.get("model_type"))
    if "architectures" not in config and architecture:
        config["architectures"] = [architecture]
        config_file.write_text(json.dumps(config, indent=2))


def plain_causal_lm(model):
    """`model` with its adapters merged and keras-hub's own preprocessor (in place).

    Args:
        model: a keras-hub `CausalLM`, maybe with kft LoRA layers and an
            `InstructionCausalLMPreprocessor`.

    Returns:
        The same model.
    """
    from kft import peft

    if peft.lora_layers(model):
        peft.merge(model, unload=True)
    preprocessor = model.preprocessor
    own = getattr(type(model), "preprocessor_cls", None)
    if preprocessor is not None and own is not None and type(preprocessor) is not own:
        model.preprocessor = own(
            tokenizer=preprocessor.tokenizer, sequence_length=preprocessor.sequence_length,
            add_start_token=preprocessor.add_start_token,
            add_end_token=preprocessor.add_end_token)
    return model

