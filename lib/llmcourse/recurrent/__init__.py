"""llmcourse.recurrent: RNN / LSTM / GRU cells and layers, attention, and seq2seq models.

Cells and layers match ``torch.nn`` (same parameter names, gate orders, values and gradients);
:func:`from_torch` / :func:`to_torch` / :func:`copy_weights` move weights across.
"""

from llmcourse.recurrent.attention import (
    AdditiveAttention,
    Attention,
    DotAttention,
    GeneralAttention,
    masked_softmax,
)
from llmcourse.recurrent.cells import GRUCell, LSTMCell, RNNCell, gru_step, lstm_step, rnn_step
from llmcourse.recurrent.decoding import DecodeResult, beam_search, greedy_decode
from llmcourse.recurrent.interop import copy_weights, from_torch, to_torch
from llmcourse.recurrent.layers import (
    CELL_TYPES,
    GRU,
    LSTM,
    RNN,
    RecurrentLayer,
    State,
    detach_state,
    layer_class,
    select_state,
)
from llmcourse.recurrent.seq2seq import (
    Decoder,
    DecoderMemory,
    Encoder,
    EncoderOutput,
    Seq2Seq,
    Seq2SeqOutput,
    make_attention,
)

__all__ = [
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "rnn_step",
    "lstm_step",
    "gru_step",
    "RNN",
    "LSTM",
    "GRU",
    "RecurrentLayer",
    "State",
    "select_state",
    "detach_state",
    "CELL_TYPES",
    "layer_class",
    "copy_weights",
    "from_torch",
    "to_torch",
    "Attention",
    "AdditiveAttention",
    "DotAttention",
    "GeneralAttention",
    "masked_softmax",
    "Encoder",
    "EncoderOutput",
    "Decoder",
    "DecoderMemory",
    "Seq2Seq",
    "Seq2SeqOutput",
    "make_attention",
    "DecodeResult",
    "greedy_decode",
    "beam_search",
]
