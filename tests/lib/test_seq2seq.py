"""Attention modules, the seq2seq model, greedy and beam decoding, and the date task."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.models.seq2seq_data import (
    BOS_ID,
    DATE_FORMATS,
    EOS_ID,
    PAD_ID,
    CharVocab,
    collate,
    exact_match,
    format_date,
    generate_date_pairs,
    iterate_batches,
    make_date_task,
    translate,
)
from llmcourse.recurrent import (
    AdditiveAttention,
    Decoder,
    DotAttention,
    Encoder,
    GeneralAttention,
    Seq2Seq,
    make_attention,
)
from llmcourse.utils import ShapeError

# ----------------------------------------------------------------------------- attention


def _inputs(seed: int = 0, dq: int = 6, dk: int = 6):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 4, dq, generator=g)
    k = torch.randn(3, 5, dk, generator=g)
    v = torch.randn(3, 5, 7, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return q, k, v, mask


def _manual_scores(attn, q, k):
    if isinstance(attn, AdditiveAttention):
        hidden = torch.tanh(
            (q @ attn.w_q.weight.T).unsqueeze(2)
            + (k @ attn.w_k.weight.T + attn.w_k.bias).unsqueeze(1)
        )
        return (hidden @ attn.v.weight.T).squeeze(-1)
    if isinstance(attn, GeneralAttention):
        return q @ attn.w_a.weight @ k.transpose(1, 2)
    return q @ k.transpose(1, 2)


@pytest.mark.parametrize(
    "attn",
    [AdditiveAttention(6, 8, 5), GeneralAttention(6, 8), DotAttention(6)],
    ids=["additive", "general", "dot"],
)
def test_attention_formula_rows_sum_to_one_and_masks(attn):
    torch.manual_seed(0)
    q, k, v, mask = _inputs(dk=attn.key_size)
    context, weights = attn(q, k, v, mask)
    assert weights.shape == (3, 4, 5), "weights are (B, T_out, T_in): rows are queries"
    assert context.shape == (3, 4, 7)
    scores = _manual_scores(attn, q, k).masked_fill(~mask.unsqueeze(1), float("-inf"))
    expected = torch.softmax(scores, dim=-1)
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4), atol=1e-6, rtol=0)
    assert torch.all(weights[1, :, 2:] == 0) and torch.all(weights[2, :, 1:] == 0)
    torch.testing.assert_close(weights[2, :, 0], torch.ones(4))
    torch.testing.assert_close(context, weights @ v, atol=1e-6, rtol=1e-5)
    # a single query (B, Dq) gives (B, Dv) and (B, Tk); values default to the keys
    c1, w1 = attn(q[:, 0], k, mask=mask)
    assert c1.shape == (3, attn.key_size) and w1.shape == (3, 5)
    torch.testing.assert_close(w1, weights[:, 0])


def test_masked_keys_do_not_influence_the_context():
    attn = AdditiveAttention(6, 6, 4)
    q, k, v, mask = _inputs()
    ctx, _ = attn(q, k, v, mask)
    k2, v2 = k.clone(), v.clone()
    k2[1, 2:] += 100.0
    v2[1, 2:] -= 50.0
    ctx2, _ = attn(q, k2, v2, mask)
    torch.testing.assert_close(ctx, ctx2)


def test_scaled_dot_attention_divides_by_sqrt_dk():
    q, k, v, _ = _inputs()
    _, w = DotAttention(6, scaled=True)(q, k, v)
    expected = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(6), dim=-1)
    torch.testing.assert_close(w, expected)


def test_attention_bad_inputs():
    q, k, v, mask = _inputs()
    attn = AdditiveAttention(6, 6, 4)
    with pytest.raises(ValueError, match="mask every key"):
        attn(q, k, v, torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="expected dtype bool"):
        attn(q, k, v, mask.long())
    with pytest.raises(ShapeError, match=r"mask: expected \(3, 5\), got \(3, 4\)"):
        attn(q, k, v, mask[:, :4])
    with pytest.raises(ShapeError, match=r"query: expected \(B, Tq, 6\)"):
        attn(torch.randn(3, 4, 5), k, v)
    with pytest.raises(ShapeError, match="keys"):
        attn(q, torch.randn(3, 5, 2), v)
    with pytest.raises(ShapeError, match="values"):
        attn(q, k, torch.randn(3, 4, 7))
    with pytest.raises(ValueError, match="query_size == key_size"):
        make_attention("dot", 6, 8)
    with pytest.raises(ValueError, match="attention must be one of"):
        make_attention("multiplicative", 6, 6)


# -------------------------------------------------------------------------- seq2seq model


def _model(attention="additive", cell="gru", seed=0, vocab=9, **kw) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq.build(
        vocab, vocab, embed_dim=8, hidden_size=8, cell=cell, attention=attention, **kw
    ).eval()


def _batch(seed=0, vocab=9):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (3, 6), generator=g)
    src[1, 4:] = PAD_ID
    src[2, 2:] = PAD_ID
    tgt = torch.randint(3, vocab, (3, 5), generator=g)
    tgt[:, 0] = BOS_ID
    tgt[0, 4] = EOS_ID
    tgt[1, 3], tgt[1, 4] = EOS_ID, PAD_ID
    tgt[2, 2], tgt[2, 3:] = EOS_ID, PAD_ID
    return src, tgt


@pytest.mark.parametrize("attention", ["additive", "dot", "general", None])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_forward_shapes_loss_and_padding_independence(attention, cell):
    model = _model(attention, cell)
    src, tgt = _batch()
    out = model(src, tgt)
    assert out.logits.shape == (3, 4, 9)
    if attention is None:
        assert out.attention is None
    else:
        assert out.attention.shape == (3, 4, 6), "attention is (B, T_out, T_in)"
        torch.testing.assert_close(out.attention.sum(-1), torch.ones(3, 4))
        assert torch.all(out.attention[2, :, 2:] == 0), "padded source positions get no weight"
    expected = F.cross_entropy(out.logits.reshape(-1, 9), tgt[:, 1:].reshape(-1), ignore_index=0)
    torch.testing.assert_close(out.loss, expected)
    # an example decoded inside a padded batch equals the same example alone
    alone = model(src[2:3, :2], tgt[2:3, :3])
    torch.testing.assert_close(alone.logits, out.logits[2:3, :2], atol=1e-5, rtol=1e-5)


def test_bidirectional_lstm_encoder_and_gradients_reach_everything():
    model = _model("general", "lstm").train()
    src, tgt = _batch()
    model(src, tgt).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
    assert model.encoder.rnn.bidirectional and model.encoder.output_size == 16


def test_no_attention_decoder_sees_only_the_final_encoder_state():
    model = _model(None)
    src, tgt = _batch()
    enc = model.encode(src)
    state, memory = model.decoder.start(enc)
    logits, _, weights = model.decoder.step(tgt[:, 0], state, memory)
    assert weights is None
    memory.outputs = torch.randn_like(memory.outputs)  # scramble everything but the summary
    logits2, _, _ = model.decoder.step(tgt[:, 0], state, memory)
    assert torch.equal(logits, logits2)


def test_teacher_forcing_ratio_zero_feeds_back_predictions():
    model = _model("additive", seed=3)
    src, tgt = _batch()
    free = model(src, tgt, teacher_forcing_ratio=0.0)
    greedy = model.greedy_decode(src, max_len=4)
    pred = free.logits.argmax(-1)
    for b in range(3):
        n = int(greedy.lengths[b])
        assert torch.equal(pred[b, :n], greedy.tokens[b, :n])
    forced = model(src, tgt, teacher_forcing_ratio=1.0)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    half_a = model(src, tgt, teacher_forcing_ratio=0.5, generator=g1)
    half_b = model(src, tgt, teacher_forcing_ratio=0.5, generator=g2)
    assert torch.equal(half_a.logits, half_b.logits), "same generator, same coin flips"
    torch.testing.assert_close(forced.logits[:, 0], free.logits[:, 0])  # step 1 always reads BOS


@pytest.mark.parametrize("attention", ["additive", None])
def test_beam_size_one_equals_greedy(attention):
    model = _model(attention, seed=4)
    src, _ = _batch()
    greedy = model.greedy_decode(src, max_len=7)
    beam = model.beam_search(src, beam_size=1, max_len=7, length_penalty=0.6)
    assert torch.equal(beam.tokens, greedy.tokens)
    assert torch.equal(beam.lengths, greedy.lengths)
    torch.testing.assert_close(beam.log_probs, greedy.log_probs)
    if attention is not None:
        torch.testing.assert_close(beam.attention, greedy.attention)


def _brute_force_best(model, src, max_len, alpha):
    """Score every output sequence of up to max_len tokens; return the best (score, tokens)."""
    vocab = model.decoder.vocab_size
    enc = model.encode(src)
    best = (-math.inf, None)
    for length in range(1, max_len + 1):
        for seq in itertools.product(range(vocab), repeat=length):
            if EOS_ID in seq[:-1] or (length < max_len and seq[-1] != EOS_ID):
                continue
            state, memory = model.decoder.start(enc)
            y, total = torch.tensor([BOS_ID]), 0.0
            for tok in seq:
                logits, state, _ = model.decoder.step(y, state, memory)
                total += torch.log_softmax(logits, -1)[0, tok].item()
                y = torch.tensor([tok])
            score = total / length**alpha
            if score > best[0]:
                best = (score, list(seq))
    return best


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_exhaustive_beam_finds_the_best_sequence(alpha):
    """A beam as wide as the whole search space must return the exact best hypothesis."""
    vocab, max_len = 4, 3
    model = _model("additive", seed=5, vocab=vocab)
    src = torch.tensor([[3, 3, 3, 3, 3]])
    with torch.no_grad():
        score, seq = _brute_force_best(model, src, max_len, alpha)
        beam = model.beam_search(
            src, beam_size=vocab**max_len, max_len=max_len, length_penalty=alpha
        )
    got = beam.tokens[0, : int(beam.lengths[0])].tolist()
    assert got == seq
    assert beam.beam_scores[0, 0].item() == pytest.approx(score, abs=1e-5)
    assert torch.all(beam.beam_scores[0, :-1] >= beam.beam_scores[0, 1:]), "sorted best first"
    assert beam.log_probs[0].item() == pytest.approx(score * len(seq) ** alpha, abs=1e-5)


def test_beam_search_shapes_and_padding_after_eos():
    model = _model("dot", seed=6)
    src, _ = _batch()
    out = model.beam_search(src, beam_size=3, max_len=6)
    assert out.beam_tokens.shape[:2] == (3, 3) and out.beam_scores.shape == (3, 3)
    assert out.attention.shape == (3, out.tokens.shape[1], 6)
    for b in range(3):
        n = int(out.lengths[b])
        if n < out.tokens.shape[1]:
            assert out.tokens[b, n - 1] == EOS_ID and torch.all(out.tokens[b, n:] == PAD_ID)
            assert torch.all(out.attention[b, n:] == 0)


def test_seq2seq_bad_inputs():
    model = _model()
    src, tgt = _batch()
    with pytest.raises(ShapeError, match="at least"):
        model(src, tgt[:, :1])
    with pytest.raises(ShapeError, match="batch sizes differ"):
        model(src, tgt[:2])
    with pytest.raises(ValueError, match="teacher_forcing_ratio"):
        model(src, tgt, teacher_forcing_ratio=1.5)
    with pytest.raises(TypeError, match="dtype float32"):
        model(src.float(), tgt)
    with pytest.raises(ValueError, match="padding must be on the right"):
        model(src, tgt, src_mask=src.flip(1) != PAD_ID)
    with pytest.raises(ValueError, match="max_len"):
        model.greedy_decode(src, max_len=0)
    with pytest.raises(ValueError, match="beam_size"):
        model.beam_search(src, beam_size=0)
    with pytest.raises(ValueError, match="must differ"):
        Seq2Seq(model.encoder, model.decoder, bos_id=1, eos_id=1)
    enc = Encoder(9, 8, 8, bidirectional=True)
    with pytest.raises(ValueError, match="encoder output size 16"):
        Seq2Seq(enc, Decoder(9, 8, 8, context_size=8), bos_id=1, eos_id=2)
    with pytest.raises(ValueError, match="attention expects"):
        Decoder(9, 8, 8, context_size=16, attention=DotAttention(8))


# ------------------------------------------------------------------------------ date task


def test_date_formats_render_one_date_every_way():
    rendered = {name: format_date(dt.date(2021, 3, 3), name) for name in DATE_FORMATS}
    assert rendered["d_month_yyyy"] == "3 March 2021"
    assert rendered["month_d_yyyy"] == "March 3, 2021"
    assert rendered["dd/mm/yy"] == "03/03/21"
    assert rendered["weekday_d_month_yyyy"] == "Wednesday, 3 March 2021"
    assert rendered["ordinal_of_month"] == "the 3rd of March 2021"
    assert format_date(dt.date(1999, 12, 11), "ordinal_of_month") == "the 11th of December 1999"
    assert format_date(dt.date(1962, 1, 22), "mon_d_yy_lower") == "jan 22 '62"
    assert len(set(rendered.values())) == len(DATE_FORMATS)
    with pytest.raises(ValueError, match="unknown date format"):
        format_date(dt.date(2021, 3, 3), "yyyymmdd")


STRPTIME = {
    "d_month_yyyy": "%d %B %Y",
    "month_d_yyyy": "%B %d, %Y",
    "d_mon_yyyy": "%d %b %Y",
    "weekday_d_month_yyyy": "%A, %d %B %Y",
    "dd-mm-yyyy": "%d-%m-%Y",
    "d.m.yyyy": "%d.%m.%Y",
}


def test_targets_are_the_iso_form_of_the_source():
    pairs = generate_date_pairs(400, seed=1)
    checked = 0
    for p in pairs:
        fmt = p.formats[0]
        if fmt in STRPTIME:
            assert dt.datetime.strptime(p.source, STRPTIME[fmt]).date().isoformat() == p.target
            checked += 1
        elif fmt == "dd/mm/yy":
            day, month, yy = (int(x) for x in p.source.split("/"))
            year = 1900 + yy if yy >= 50 else 2000 + yy
            assert dt.date(year, month, day).isoformat() == p.target
            checked += 1
    assert checked > 200
    assert {p.formats[0] for p in pairs} == set(DATE_FORMATS)


def test_task_is_seeded_and_splits_hold_out_dates():
    a = make_date_task(300, 50, 60, seed=3)
    b = make_date_task(300, 50, 60, seed=3)
    c = make_date_task(300, 50, 60, seed=4)
    assert a.train == b.train and a.test == b.test and a.train != c.train
    assert (len(a.train), len(a.val), len(a.test)) == (300, 50, 60)
    train_dates = {p.target for p in a.train}
    assert not train_dates & {p.target for p in a.test}
    assert not train_dates & {p.target for p in a.val}
    assert not {p.target for p in a.val} & {p.target for p in a.test}
    lengths = {len(p.source) for p in a.train}
    assert max(lengths) - min(lengths) >= 10, "inputs of varying length"


def test_long_inputs_with_filler_and_date_lists():
    plain = generate_date_pairs(200, seed=5)
    padded = generate_date_pairs(200, seed=5, filler=(8, 12))
    mean = lambda ps: sum(len(p.source) for p in ps) / len(ps)
    assert mean(padded) > mean(plain) + 30
    for p in padded:
        assert format_date(dt.date.fromisoformat(p.target), p.formats[0]) in p.source
        assert 8 <= len(p.source.split()) - len(
            format_date(dt.date(2000, 1, 1), p.formats[0]).split()
        )
    lists = generate_date_pairs(50, seed=6, n_dates=(2, 4))
    for p in lists:
        isos = p.target.split(";")
        assert 2 <= len(isos) <= 4 and len(p.formats) == len(isos)
        assert p.source.count("; ") == len(isos) - 1
        assert all(dt.date.fromisoformat(x) for x in isos)
    with pytest.raises(ValueError, match="n_dates"):
        generate_date_pairs(5, n_dates=0)
    with pytest.raises(ValueError, match="unknown date format"):
        generate_date_pairs(5, formats=["nope"])
    with pytest.raises(ValueError, match="split sizes"):
        make_date_task(-1, 1, 1)


def test_vocab_collate_and_batches():
    vocab = CharVocab()
    text = "March 3, 2021; 03/03/21 'x'"
    assert vocab.decode(vocab.encode(text)) == text
    ids = vocab.encode("ab", add_bos=True, add_eos=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert vocab.decode(ids + vocab.encode("zz")) == "ab", "decode stops at EOS"
    assert vocab.decode(vocab.encode("a\u00e9b")) == "a?b", "unknown characters"
    pairs = generate_date_pairs(10, seed=0)
    batch = collate(pairs, vocab)
    assert batch.src.shape == (10, max(len(p.source) for p in pairs))
    assert torch.equal(batch.src_mask, batch.src != PAD_ID)
    assert torch.all(batch.tgt[:, 0] == BOS_ID) and batch.tgt.shape == (10, 12)
    assert [vocab.decode(r) for r in batch.tgt] == [p.target for p in pairs]
    seen = [s for b in iterate_batches(pairs, vocab, 3, seed=1) for s in b.sources]
    assert sorted(seen) == sorted(p.source for p in pairs) and len(seen) == 10
    assert exact_match(["a", "b"], ["a", "c"]) == 0.5
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        exact_match(["a", "b"], ["a"])


@pytest.fixture
def one_thread():
    """Tiny matmuls run fastest on one thread; on a busy 2-core machine, far faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_attention_seq2seq_learns_the_date_task(one_thread):
    """Short training (about 10 s on an idle CPU core) reaches > 90% exact match on unseen dates."""
    torch.manual_seed(0)
    task = make_date_task(4000, 0, 300, seed=0)
    vocab = task.vocab
    model = Seq2Seq.build(
        vocab.vocab_size, vocab.vocab_size, embed_dim=16, hidden_size=32, attention="additive"
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(3):
        model.train()
        for batch in iterate_batches(task.train, vocab, 64, seed=epoch):
            loss = model(batch.src, batch.tgt, batch.src_mask).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    sources, targets = [p.source for p in task.test], [p.target for p in task.test]
    greedy = translate(model, sources, vocab)
    accuracy = exact_match(greedy, targets)
    assert accuracy > 0.9, f"exact match {accuracy:.3f} after 3 epochs"
    assert translate(model, sources[:50], vocab, beam_size=1) == greedy[:50]
    beam = translate(model, sources, vocab, beam_size=3)
    assert exact_match(beam, targets) > 0.9
    # the alignment is sensible: while writing the year, dd-mm-yyyy inputs attend to the year
    rows = [p for p in task.test if p.formats[0] == "dd-mm-yyyy"]
    batch = collate(rows, vocab)
    weights = model.greedy_decode(batch.src, max_len=11).attention  # (B, 11, 10)
    year_mass = weights[:, :4, 6:10].sum(-1).mean().item()
    assert year_mass > 0.5, f"only {year_mass:.2f} of the attention is on the year digits"


def test_translate_decodes_strings_and_keeps_the_training_mode():
    vocab = CharVocab()
    model = _model("additive", vocab=vocab.vocab_size).train()
    sources = ["3 March 2021", "12/05/98; 1 Jan 2000"]
    out = translate(model, sources, vocab)
    assert model.training, "translate restores the mode it found"
    assert len(out) == 2 and all(isinstance(s, str) for s in out)
    assert len(out[1]) <= 22, "max_len defaults to 11 tokens per date (21 characters + EOS for 2)"
    assert translate(model, sources, vocab, beam_size=2) is not None
