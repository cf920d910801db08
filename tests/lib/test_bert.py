"""BERT against transformers (random weights) and sentence-transformers (real MiniLM weights),
plus the 80/10/10 masking statistics."""

from __future__ import annotations

import math
import os

import pytest
import torch

from llmcourse.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    SentenceEncoder,
    load_minilm,
    mask_tokens,
    mean_pool,
    minilm_path,
)
from llmcourse.utils import ShapeError

SMALL = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    type_vocab_size=2,
)

SENTENCES = [
    "The cat sits on the mat.",
    "A dog is running through the park!",
    "Quantum chromodynamics describes the strong interaction.",
    "I love pizza with extra cheese",
    "Paris is the capital of France.",
    "What's the weather like tomorrow?",
    "ÉLÈVE naïve café résumé",
    "日本語の文章です。",
    "emoji 😀🎉 party",
    "Привет, как дела?",
    "def square(x): return x ** 2",
    "12345 67890",
    "The capital is [MASK].",
    "Short.",
    "   spaces   everywhere   ",
    "A much longer sentence that goes on and on, with commas, clauses, and more words to embed.",
    "Machine learning models learn patterns from data.",
    "The stock market fell sharply on Monday.",
    "She sells sea shells by the sea shore.",
    "word " * 300,  # longer than the 256-token limit: truncated
]


def _hf_config(**overrides):
    from transformers import BertConfig as HFBertConfig

    args = dict(SMALL, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args.update(overrides)
    return HFBertConfig(**args)


def _batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, SMALL["vocab_size"], (3, 11), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return ids, mask, types


def test_parameter_counts() -> None:
    from transformers import BertModel as HFBertModel

    with torch.device("meta"):
        base = BertModel(BertConfig())  # bert-base-uncased, without allocating memory
    assert base.num_parameters() == 109_482_240
    small = BertModel(BertConfig(**SMALL))
    assert small.num_parameters() == sum(p.numel() for p in HFBertModel(_hf_config()).parameters())


def test_encoder_matches_transformers() -> None:
    from transformers import BertModel as HFBertModel

    torch.manual_seed(0)
    hf = HFBertModel(_hf_config()).eval()
    ours = BertModel.from_hf_state_dict(hf.state_dict(), BertConfig(**SMALL, dropout=0.0)).eval()
    ids, mask, types = _batch(torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, types)
    real = mask.bool()
    torch.testing.assert_close(
        got.last_hidden_state[real], want.last_hidden_state[real], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=1e-5, rtol=1e-5)


def test_masked_lm_matches_transformers() -> None:
    from transformers import BertForMaskedLM as HFBertForMaskedLM

    torch.manual_seed(0)
    hf = HFBertForMaskedLM(_hf_config()).eval()
    ours = BertForMaskedLM.from_hf_state_dict(
        hf.state_dict(), BertConfig(**SMALL, dropout=0.0)
    ).eval()
    assert ours.bert.pooler is None  # HF's masked-LM model has no pooler
    ids, mask, types = _batch(torch.Generator().manual_seed(2))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 4], labels[2, 1] = 5, 17, 99
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = ours(ids, mask, types, labels=labels)
    real = mask.bool()
    torch.testing.assert_close(got.logits[real], want.logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)
    # the output layer is tied to the word embeddings
    assert ours.head._word[0].weight is ours.bert.embeddings.word.weight


def test_sequence_classification_matches_transformers() -> None:
    from transformers import BertForSequenceClassification as HFClassifier

    torch.manual_seed(0)
    hf = HFClassifier(_hf_config(num_labels=3)).eval()
    config = BertConfig(**SMALL, dropout=0.0)
    ours = BertForSequenceClassification.from_hf_state_dict(hf.state_dict(), config, 3).eval()
    ids, mask, types = _batch(torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = ours(ids, mask, types, labels=labels)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)


def test_mean_pooling_classifier_trains() -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertModel(BertConfig(**SMALL, dropout=0.0)), 2, pooling="mean"
    )
    ids, mask, _ = _batch(torch.Generator().manual_seed(4))
    labels = torch.tensor([0, 1, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(20):
        loss = model(ids, mask, labels=labels).loss
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert (model(ids, mask).logits.argmax(-1) == labels).all()


def test_padding_does_not_change_real_tokens() -> None:
    torch.manual_seed(0)
    model = BertModel(BertConfig(**SMALL, dropout=0.0)).eval()
    ids = torch.randint(1, 120, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        alone = model(ids).last_hidden_state
        batch = model(padded, mask).last_hidden_state
    torch.testing.assert_close(batch[:, :6], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean_pool(batch, mask), alone.mean(dim=1), atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise() -> None:
    model = BertModel(BertConfig(**SMALL))
    with pytest.raises(IndexError, match="ids in"):
        model(torch.tensor([[1, 500]]))
    with pytest.raises(ShapeError, match="max_position_embeddings=40"):
        model(torch.ones(1, 41, dtype=torch.long))
    with pytest.raises(ShapeError, match="attention_mask"):
        model(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(TypeError, match="long"):
        model(torch.ones(1, 4))
    no_pooler = BertModel(BertConfig(**SMALL, add_pooler=False))
    with pytest.raises(ValueError, match="pooling='mean'"):
        BertForSequenceClassification(no_pooler, 2, pooling="cls")
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(KeyError, match="missing weights"):
        BertModel.from_hf_state_dict(
            {"embeddings.word_embeddings.weight": torch.zeros(120, 32)}, BertConfig(**SMALL)
        )


# ---------------------------------------------------------------------- real MiniLM weights
@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def test_minilm_matches_sentence_transformers(minilm) -> None:
    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, tok = minilm
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    ours = SentenceEncoder(model, tok).encode(SENTENCES, batch_size=8)
    ref = SentenceTransformer(str(minilm_path()), device="cpu").encode(
        SENTENCES, batch_size=8, convert_to_tensor=True
    )
    assert ours.shape == (20, 384)
    cos = torch.nn.functional.cosine_similarity(ours, ref.cpu(), dim=-1)
    assert cos.min() > 0.9999, f"lowest cosine {cos.min():.6f} (sentence {int(cos.argmin())})"
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(20))


def test_minilm_similarity_is_sensible(minilm) -> None:
    enc = SentenceEncoder(*minilm)
    emb = enc.encode(
        ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market crashed."]
    )
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    single = enc.encode("A man is playing a guitar.")
    torch.testing.assert_close(single[0], emb[0], atol=1e-5, rtol=1e-5)
    assert enc.encode([]).shape == (0, 384)


# ---------------------------------------------------------------------- 80/10/10 masking
def test_mask_tokens_statistics() -> None:
    vocab, mask_id, specials = 1000, 3, [0, 1, 2, 3]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (400, 512), generator=gen)
    ids[:, 0], ids[:, -1], ids[::3, -40:] = 1, 2, 0  # [CLS], [SEP], padding
    inputs, labels = mask_tokens(
        ids, mask_id, vocab, mask_prob=0.15, special_ids=specials, generator=gen
    )

    special = torch.isin(ids, torch.tensor(specials))
    selected = labels != -100
    assert not (selected & special).any(), "special tokens must never be selected"
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # unselected tokens untouched
    n = int((~special).sum())
    p = selected.sum().item() / n
    assert abs(p - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    # per 512-token row without padding: 15% of the 510 selectable tokens ~ 76.5 on average
    full_rows = selected[1::3].sum(dim=1).float()
    assert abs(full_rows.mean().item() - 0.15 * 510) < 1.0

    k = int(selected.sum())
    masked = (inputs == mask_id) & selected
    kept = (inputs == ids) & selected
    replaced = selected & ~masked & ~kept
    for observed, expected in ((masked, 0.8), (replaced, 0.1), (kept, 0.1)):
        frac = observed.sum().item() / k
        assert abs(frac - expected) < 4 * math.sqrt(expected * (1 - expected) / k) + 0.002, (
            frac,
            expected,
        )
    assert not torch.isin(inputs[replaced], torch.tensor(specials)).any(), (
        "random tokens are never special"
    )


def test_mask_tokens_is_reproducible_and_validates() -> None:
    ids = torch.randint(5, 50, (4, 30))
    a = mask_tokens(ids, 4, 50, special_ids=[0, 4], generator=torch.Generator().manual_seed(7))
    b = mask_tokens(ids, 4, 50, special_ids=[0, 4], generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].dtype == torch.long
    none, labels = mask_tokens(ids, 4, 50, mask_prob=0.0)
    assert torch.equal(none, ids) and (labels == -100).all()
    with pytest.raises(TypeError, match="integer"):
        mask_tokens(ids.float(), 4, 50)
    with pytest.raises(ValueError, match="mask_prob"):
        mask_tokens(ids, 4, 50, mask_prob=1.5)
    with pytest.raises(ValueError, match="mask_id=60"):
        mask_tokens(ids, 60, 50)
