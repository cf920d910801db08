"""llmcourse.finetune: parameter-efficient fine-tuning, quantization, SFT data, distillation.

- :mod:`~llmcourse.finetune.lora`: :class:`LoRALinear`, :func:`apply_lora`, merge/unmerge,
  :func:`count_trainable`, :func:`save_adapter` / :func:`load_adapter`
- :mod:`~llmcourse.finetune.quantization`: int8 absmax, affine uint8, NF4 with double
  quantization, :class:`Linear8bit` / :class:`Linear4bit`, :func:`quantize_model`
- :mod:`~llmcourse.finetune.qlora`: :func:`prepare_qlora` (frozen NF4 base + LoRA)
- :mod:`~llmcourse.finetune.sft`: chat template, prompt-masked batches
- :mod:`~llmcourse.finetune.distill`: knowledge-distillation loss with the T^2 factor
- :mod:`~llmcourse.finetune.memory`: bytes of a model, training-memory estimate
- :mod:`~llmcourse.finetune.targets`: choosing modules by name pattern
"""

from llmcourse.finetune.distill import distillation_loss, soft_target_loss
from llmcourse.finetune.lora import (
    LoRALinear,
    ParamCount,
    apply_lora,
    count_trainable,
    load_adapter,
    lora_modules,
    lora_param_count,
    mark_only_lora_trainable,
    merge_lora,
    save_adapter,
    unload_lora,
    unmerge_lora,
)
from llmcourse.finetune.memory import (
    format_bytes,
    model_nbytes,
    trainable_nbytes,
    training_memory_bytes,
)
from llmcourse.finetune.qlora import QLoRAModules, prepare_qlora, qlora_linear
from llmcourse.finetune.quantization import (
    NF4_CODE,
    AffineQuantized,
    Int8Quantized,
    Linear4bit,
    Linear8bit,
    NF4Quantized,
    affine_qparams,
    nf4_bits_per_param,
    pack_4bit,
    quantize_affine_uint8,
    quantize_int8_absmax,
    quantize_model,
    quantize_nf4,
    unpack_4bit,
)
from llmcourse.finetune.sft import (
    END,
    IGNORE_INDEX,
    SFTBatch,
    SFTExample,
    build_sft_batch,
    collate_sft,
    format_example,
    render_chat,
    tokenize_chat,
    tokenize_prompt_response,
)
from llmcourse.finetune.targets import LINEAR_TYPES, find_modules

__all__ = [
    "LoRALinear",
    "ParamCount",
    "apply_lora",
    "count_trainable",
    "load_adapter",
    "lora_modules",
    "lora_param_count",
    "mark_only_lora_trainable",
    "merge_lora",
    "save_adapter",
    "unload_lora",
    "unmerge_lora",
    "NF4_CODE",
    "AffineQuantized",
    "Int8Quantized",
    "NF4Quantized",
    "Linear4bit",
    "Linear8bit",
    "affine_qparams",
    "nf4_bits_per_param",
    "pack_4bit",
    "unpack_4bit",
    "quantize_affine_uint8",
    "quantize_int8_absmax",
    "quantize_nf4",
    "quantize_model",
    "QLoRAModules",
    "prepare_qlora",
    "qlora_linear",
    "END",
    "IGNORE_INDEX",
    "SFTBatch",
    "SFTExample",
    "build_sft_batch",
    "collate_sft",
    "format_example",
    "render_chat",
    "tokenize_chat",
    "tokenize_prompt_response",
    "distillation_loss",
    "soft_target_loss",
    "format_bytes",
    "model_nbytes",
    "trainable_nbytes",
    "training_memory_bytes",
    "LINEAR_TYPES",
    "find_modules",
]
