"""Data: pinned, verified downloads (with mirror and cache) and memory-mapped token batches."""

from llmcourse.data.download import (
    DATASETS,
    DataFile,
    DataIntegrityError,
    DataUnavailableError,
    cache_dir,
    download,
    fetch,
    load_text,
    sha256_file,
)
from llmcourse.data.tokens import (
    RandomBatches,
    TokenSplits,
    get_batch,
    load_tokens,
    prepare_tokens,
    token_dtype,
    write_tokens,
)

__all__ = [
    "DATASETS",
    "DataFile",
    "DataIntegrityError",
    "DataUnavailableError",
    "cache_dir",
    "fetch",
    "download",
    "load_text",
    "sha256_file",
    "RandomBatches",
    "TokenSplits",
    "get_batch",
    "load_tokens",
    "prepare_tokens",
    "token_dtype",
    "write_tokens",
]
