"""llmcourse.nn: the Transformer building blocks, written out.

Layers (same parameter names and outputs as their ``torch.nn`` counterparts): :class:`Linear`,
:class:`Embedding`, :class:`LayerNorm`, :class:`RMSNorm`, :class:`GELU`, :class:`SiLU`,
:class:`Dropout`; :class:`FeedForward` (ReLU/GELU MLP or SwiGLU); positions
(:class:`SinusoidalPositions`, :class:`LearnedPositions`, :class:`RotaryEmbedding`); attention
(:func:`scaled_dot_product_attention`, :class:`MultiHeadAttention`) and :class:`KVCache`.
"""

from llmcourse.nn.attention import (
    MultiHeadAttention,
    attention_weights,
    scaled_dot_product_attention,
)
from llmcourse.nn.feedforward import ACTIVATIONS, FeedForward
from llmcourse.nn.kv_cache import KVCache, LayerKVCache
from llmcourse.nn.layers import (
    GELU,
    Dropout,
    Embedding,
    LayerNorm,
    Linear,
    RMSNorm,
    SiLU,
    gelu,
    silu,
)
from llmcourse.nn.moe import MoEFeedForward, Routing, load_balancing_loss, top_k_gating
from llmcourse.nn.positions import (
    LearnedPositions,
    RotaryEmbedding,
    SinusoidalPositions,
    sinusoidal_encoding,
)

__all__ = [
    "Linear",
    "Embedding",
    "LayerNorm",
    "RMSNorm",
    "GELU",
    "SiLU",
    "gelu",
    "silu",
    "Dropout",
    "FeedForward",
    "ACTIVATIONS",
    "SinusoidalPositions",
    "LearnedPositions",
    "RotaryEmbedding",
    "sinusoidal_encoding",
    "scaled_dot_product_attention",
    "attention_weights",
    "MultiHeadAttention",
    "KVCache",
    "LayerKVCache",
    "MoEFeedForward",
    "Routing",
    "top_k_gating",
    "load_balancing_loss",
]
