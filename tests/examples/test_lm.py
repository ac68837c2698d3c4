"""examples/lm: the docstring corpus and its tokenizer are deterministic, the windows are next-token pairs with eval
held out, the decoder's cache path equals its plain forward, and decoder pruning removes whole heads and MLP
channels (per layer, so head counts may differ) while forward and forward_with_cache still agree."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from pipeline.recipe.usercode import load_user_module
from pipeline.stages.heads import head_counts
from pipeline.stages.prune import structured_prune
from tests.examples.conftest import EXAMPLES

LM = EXAMPLES / "lm"
tk = load_user_module("tokenizer", LM)
lm_data = load_user_module("data", LM)
lm_models = load_user_module("models", LM)
BUDGET = 40_000   # a small corpus: seconds, and a cache file of its own name


def test_corpus_is_the_same_text_in_a_process_that_imported_torch_and_the_pipeline(tmp_path):
    """The text is built in a clean interpreter: this process (torch, pytest, the pipeline loaded) and a fresh
    cache folder must give the same documents, in the same order, as the tokenizer's cache name says."""
    a = tk.documents(BUDGET, tmp_path / "a")
    b = tk.documents(BUDGET, tmp_path / "b")
    assert a == b and len(a) > 20
    assert BUDGET - 5000 < sum(map(len, a)) <= BUDGET
    assert len(set(a)) == len(a)   # no docstring twice (re-exported names)


def test_tokenizer_training_is_deterministic_and_round_trips_text(tmp_path):
    texts = tk.documents(BUDGET, tmp_path)
    one, two = tk.train_tokenizer(texts, 512), tk.train_tokenizer(texts, 512)
    assert one.get_vocab() == two.get_vocab()
    sample = "Return a new array of given shape and type, filled with zeros.\n    >>> np.zeros(5)"
    assert one.encode(sample).ids == two.encode(sample).ids
    assert one.decode(one.encode(sample).ids) == sample        # byte-level: every text encodes losslessly
    tok, again = tk.load(BUDGET, 512, cache=tmp_path)
    assert again == texts and tok.encode(sample).ids == one.encode(sample).ids   # the cached file is the same BPE
    assert tok.token_to_id(tk.EOT) == 0


def test_windows_are_next_token_pairs_of_int64_and_eval_documents_are_never_trained_on():
    stream = torch.arange(1, 200, dtype=torch.int64)
    w = lm_data.Windows(stream, 8)
    assert len(w) == (199 - 1) // 8
    x, y = w[3]
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (8,)
    assert torch.equal(y, x + 1) and int(x[0]) == 25                # targets: the inputs shifted by one
    train, held, vocab = lm_data.streams(BUDGET)
    assert vocab == 1024 and int(train.max()) < vocab and int(held.max()) < vocab
    assert 0.05 < len(held) / (len(train) + len(held)) < 0.2       # every tenth document
    texts = tk.documents(BUDGET)
    tok = tk.load(BUDGET)[0]
    eval_doc = tok.encode(texts[lm_data.EVAL_EVERY - 1]).ids
    assert held[: len(eval_doc)].tolist() == eval_doc
    first = tok.encode(texts[0]).ids
    assert train[: len(first)].tolist() == first
    # the held-out document's ids do not occur as a run in the training stream
    probe = eval_doc[:12]
    joined = ",".join(map(str, train.tolist()))
    assert ",".join(map(str, probe)) not in joined
    sp = lm_data.splits(BUDGET)
    assert len(sp["calib"]) == min(lm_data.CALIB, len(sp["train"])) and len(sp["eval"]) > 0


def _decoder(**kw: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = {"dim": 32, "depth": 2, "num_heads": 4, "hidden": 64, "max_positions": 16, **kw}
    return lm_models.Decoder(50, **cfg).eval()


def _ids(b: int = 2, t: int = 12) -> torch.Tensor:
    return torch.randint(0, 50, (b, t), generator=torch.Generator().manual_seed(1))


def _cache_matches_forward(model: torch.nn.Module) -> None:
    x = _ids()
    with torch.no_grad():
        full = model(x)
        out = model.forward_with_cache(x[:, :7], *model.empty_past(2))     # prefill, P = 0
        step = model.forward_with_cache(x[:, 7:8], *out[1:])               # one decode step, P = 7
        rest = model.forward_with_cache(x[:, 8:], *step[1:])               # S = 4 more, P = 8
    torch.testing.assert_close(out[0], full[:, :7], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(step[0][:, 0], full[:, 7], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rest[0], full[:, 8:], rtol=1e-4, atol=1e-5)
    for i, block in enumerate(model.blocks):
        k, v = rest[1 + 2 * i], rest[2 + 2 * i]
        assert k.shape == v.shape == (2, block.attn.num_heads, 12, block.attn.head_dim)


def test_forward_with_cache_equals_forward_at_every_position():
    model = _decoder()
    assert model(_ids()).shape == (2, 12, 50) and model.max_positions == 16
    assert model.head.weight is model.embed.weight                          # tied embeddings
    _cache_matches_forward(model)
    with pytest.raises(ValueError, match="expected 4"):
        model.forward_with_cache(_ids(), *model.empty_past(2)[:2])


def test_the_output_is_causal():
    model = _decoder()
    x = _ids()
    y = x.clone()
    y[:, 9:] = (y[:, 9:] + 1) % 50
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :9], model(y)[:, :9])
        assert not torch.allclose(model(x)[:, 9:], model(y)[:, 9:])


def test_pruning_a_decoder_removes_whole_heads_and_mlp_channels_and_keeps_the_residual_and_tied_embedding():
    parent = _decoder()
    pruned = structured_prune(copy.deepcopy(parent), (_ids(1),), ratio=0.5, head_ratio=0.5, round_to=None,
                              ignore=["embed", "pos"])
    assert head_counts(pruned) == {"blocks.0.attn": 2, "blocks.1.attn": 2}
    assert [b.fc1.out_features for b in pruned.blocks] == [32, 32]
    assert all(b.attn.head_dim == 8 and b.attn.q_proj.out_features == 16 for b in pruned.blocks)
    assert pruned.embed.weight.shape == (50, 32) and pruned.head.weight is pruned.embed.weight
    assert pruned(_ids()).shape == (2, 12, 50)
    _cache_matches_forward(pruned)


def test_layers_may_end_with_different_head_counts_and_the_cache_follows_each():
    parent = _decoder()
    keep = [f"blocks.1.attn.{p}_proj" for p in "qkv"]       # block 1 keeps its heads, block 0 loses half
    pruned = structured_prune(copy.deepcopy(parent), (_ids(1),), ratio=0.0, head_ratio=0.5, round_to=None,
                              ignore=keep)
    assert head_counts(pruned) == {"blocks.0.attn": 2, "blocks.1.attn": 4}
    past = pruned.empty_past(1)
    assert [tuple(p.shape) for p in past] == [(1, 2, 0, 8)] * 2 + [(1, 4, 0, 8)] * 2
    _cache_matches_forward(pruned)


def test_student_has_fewer_layers_and_starts_from_the_teacher_blocks(tmp_path, monkeypatch):
    teacher = _decoder(depth=4)
    monkeypatch.setattr(lm_models, "trained_teacher", lambda: teacher)
    s = lm_models.student()
    assert len(s.blocks) == 2 < len(teacher.blocks)
    assert torch.equal(s.blocks[1].fc1.weight, teacher.blocks[2].fc1.weight)
    assert torch.equal(s.embed.weight, teacher.embed.weight) and s.head.weight is s.embed.weight


def test_the_recipe_declares_task_lm_with_generation(tmp_path):
    from pipeline.recipe.config import load_recipe

    recipe = load_recipe(Path(LM / "recipe.yaml"))
    assert recipe.task.metric == "perplexity" and recipe.task.language_model
    assert recipe.task.generate is not None and recipe.task.generate.model_dump() == {"prompt_len": 16,
                                                                                       "new_tokens": 32}
    assert recipe.gate.max_metric_drop.endswith("%")
