"""Training: the Trainer, safetensors checkpoints with exact resume, data-parallel helpers."""

from llmcourse.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_checkpoint_tokenizer,
    load_model_weights,
    model_config_dict,
    read_checkpoint_meta,
    save_checkpoint,
    unwrap_model,
)
from llmcourse.train.distributed import (
    DistInfo,
    all_reduce_mean,
    cleanup_distributed,
    dist_info,
    init_distributed,
)
from llmcourse.train.state import capture_rng_state, restore_rng_state
from llmcourse.train.trainer import (
    BatchSource,
    NonFiniteLossError,
    Trainer,
    TrainerConfig,
    TrainHistory,
    default_loss,
)

__all__ = [
    "Trainer",
    "TrainerConfig",
    "TrainHistory",
    "NonFiniteLossError",
    "BatchSource",
    "default_loss",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_checkpoint_tokenizer",
    "load_model_weights",
    "read_checkpoint_meta",
    "model_config_dict",
    "unwrap_model",
    "capture_rng_state",
    "restore_rng_state",
    "DistInfo",
    "init_distributed",
    "cleanup_distributed",
    "dist_info",
    "all_reduce_mean",
]
