"""Packed documents: a packed batch gives each document's per-token losses and gradients as if it ran alone
(float64, CPU), for every attention that can honour a mask; the others refuse packing, naming the attention."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.blocks.documents import refusal

VOCAB, L = 23, 24
TINY = dict(dim_model=32, num_layers=2, num_heads=4, vocab_size=VOCAB, max_seq_len=L, dropout=0.0)
ROWS = [[7, 1, 9, 4, 3], [13, 11]]  # document lengths of each packed row (sums <= L; the rest is padding)
# registered attention configs that need a field to fit the tiny model
EXTRA = {"local": {"window_size": 6}, "blocksparse": {"block_size": 4}}


def attention_names() -> list[str]:
    return blockzoo.registry("attention").names()


def build(attention: str, embedding: str = "vocab", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = {"name": "decoder_lm", **TINY, "attention": {"name": attention, **EXTRA.get(attention, {})},
           "embedding": {"name": embedding}}
    return blockzoo.build_model(cfg).double().eval()


def packed_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[list[tuple[int, int]]]]:
    """(tokens (B, L), doc_ids (B, L), per row the (start, length) of each document); padding is its own doc."""
    tokens = torch.randint(0, VOCAB, (len(ROWS), L), generator=gen)
    ids = torch.empty(len(ROWS), L, dtype=torch.long)
    spans = []
    for b, lengths in enumerate(ROWS):
        start, row = 0, []
        for d, n in enumerate(lengths):
            ids[b, start:start + n] = d
            row.append((start, n))
            start += n
        ids[b, start:] = len(lengths)  # padding: one more document nobody reads
        spans.append(row)
    return tokens, ids, spans


def token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token next-token loss inside one sequence (the last token predicts nothing)."""
    return F.cross_entropy(logits[:-1], tokens[1:], reduction="none")


def run(model, attention: str, gen: torch.Generator) -> None:
    tokens, ids, spans = packed_batch(gen)
    logits = model(tokens, doc_ids=ids)
    packed = [token_losses(logits[b, s:s + n], tokens[b, s:s + n]) for b, row in enumerate(spans) for s, n in row]
    g_packed = torch.autograd.grad(torch.cat(packed).sum(), list(model.parameters()), allow_unused=True)
    alone = [token_losses(model(tokens[b:b + 1, s:s + n])[0], tokens[b, s:s + n])
             for b, row in enumerate(spans) for s, n in row]
    g_alone = torch.autograd.grad(torch.cat(alone).sum(), list(model.parameters()), allow_unused=True)
    for p, a in zip(packed, alone):
        torch.testing.assert_close(p, a, rtol=1e-9, atol=1e-10, msg=f"{attention}: per-token losses differ")
    for (name, _), gp, ga in zip(model.named_parameters(), g_packed, g_alone):
        if gp is None or ga is None:
            assert gp is None and ga is None, name
            continue
        torch.testing.assert_close(gp, ga, rtol=1e-8, atol=1e-10, msg=f"{attention}: gradient of {name} differs")


@pytest.mark.parametrize("attention", attention_names())
def test_packed_equals_separate_for_every_attention(attention):
    try:
        model = build(attention)
    except ValueError as e:  # cannot be a causal LM at all (e.g. needs a grid or cannot mask causally)
        pytest.skip(f"{attention} does not build a decoder_lm: {e}")
    gen = torch.Generator().manual_seed(1)
    if refusal(model.blocks[0].self_attn.attention) is not None:
        tokens, ids, _ = packed_batch(gen)
        with pytest.raises(ValueError, match=f"attention {attention!r} cannot run packed documents"):
            model(tokens, doc_ids=ids)
        with pytest.raises(ValueError, match=attention):
            model.check_packable()
        return
    run(model, attention, gen)


@pytest.mark.parametrize("embedding,attention", [("rotary", "scaled_dot_product"), ("vocab", "scaled_dot_product"),
                                                 ("sine", "scaled_dot_product"), ("learnable", "local"),
                                                 ("alibi", "alibi"), ("rotary", "local")])
def test_positions_restart_at_each_document(embedding, attention):
    run(build(attention, embedding, seed=3), attention, torch.Generator().manual_seed(2))


def test_a_shared_positions_mistake_would_fail():
    """The check can fail: without restarting positions (mask alone), a learned table gives other losses."""
    model = build("scaled_dot_product", "vocab")
    tokens, ids, spans = packed_batch(torch.Generator().manual_seed(4))
    mask = blockzoo.ops.document_mask(ids)
    x = model.embedding(tokens)  # positions 0..L-1 across documents: wrong
    for block in model.blocks:
        x = block(x, mask=mask)
    wrong = torch.nn.functional.linear(model.norm(x), model.head_weight)
    right = model(tokens, doc_ids=ids)
    s, n = spans[0][1]
    assert not torch.allclose(wrong[0, s:s + n], right[0, s:s + n])


def test_cu_seqlens_equals_doc_ids():
    model = build("scaled_dot_product", "rotary")
    tokens = torch.randint(0, VOCAB, (2, L), generator=torch.Generator().manual_seed(5))
    cu = torch.tensor([0, 5, 6, 17, L])
    ids = blockzoo.ops.doc_ids_from_cu_seqlens(cu, L).expand(2, L)
    torch.testing.assert_close(model(tokens, cu_seqlens=cu), model(tokens, doc_ids=ids))


def test_loss_reads_doc_ids_from_the_batch():
    model = build("scaled_dot_product", "rotary")
    tokens, ids, _ = packed_batch(torch.Generator().manual_seed(6))
    targets = torch.randint(0, VOCAB, tokens.shape)
    with_ids = model.loss({"tokens": tokens, "targets": targets, "doc_ids": ids})
    without = model.loss({"tokens": tokens, "targets": targets})
    assert not torch.allclose(with_ids, without)
    logits = model(tokens, doc_ids=ids)
    torch.testing.assert_close(with_ids.double(), F.cross_entropy(logits.flatten(0, 1), targets.flatten()),
                               rtol=1e-5, atol=1e-6)  # the fused loss returns float32


def test_bad_doc_ids_are_refused():
    model = build("scaled_dot_product")
    tokens = torch.randint(0, VOCAB, (2, L))
    with pytest.raises(ValueError, match="nondecreasing"):
        model(tokens, doc_ids=torch.arange(L).flip(0).expand(2, L))
    with pytest.raises(ValueError, match="L=24"):
        model(tokens, doc_ids=torch.zeros(2, L - 1, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        model(tokens, doc_ids=torch.zeros(2, L))


def test_reversible_lm_refuses_packed_documents():
    torch.manual_seed(0)
    model = blockzoo.build_model({"name": "reversible_lm", **TINY})
    tokens, ids, _ = packed_batch(torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match="reversible_lm' cannot run packed documents"):
        model.loss({"tokens": tokens, "targets": tokens, "doc_ids": ids})
    model.loss({"tokens": tokens, "targets": tokens})  # unpacked batches still run
