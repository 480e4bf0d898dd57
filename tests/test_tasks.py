"""Tasks: deterministic batches, correct targets (checked by independent code), model sizing from the task."""
import pytest
import torch

import blockzoo
from blockzoo.registry import registry
from blockzoo.tasks import IGNORE_INDEX, build_task
from blockzoo.tasks.listops import VOCAB
from blockzoo.api import size_model_for_task

TASKS = ["bytes_lm", "copy", "sort", "associative_recall", "listops"]  # token tasks (images: tests/blocks)


def task(name: str, *overrides: str):
    return build_task(blockzoo.compose([f"task={name}", *overrides]))


def test_every_registered_task_has_a_preset():
    assert sorted(registry("task").names()) == sorted([*TASKS, "images"])
    for name in registry("task").names():
        assert blockzoo.compose([f"task={name}"]).task.name == name


@pytest.mark.parametrize("name", TASKS)
def test_batches_are_deterministic_and_vary(name):
    t = task(name)
    a, b = t.batch("train", 7, 4), t.batch("train", 7, 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["tokens"], t.batch("train", 8, 4)["tokens"])
    assert not torch.equal(a["tokens"], t.batch("val", 7, 4)["tokens"])
    reseeded = task(name, "task.seed=1").batch("train", 7, 4)
    assert not torch.equal(a["tokens"], reseeded["tokens"])


@pytest.mark.parametrize("name", TASKS)
def test_lm_format_is_well_formed(name):
    t = task(name)
    b = t.batch("train", 0, 6)
    tokens, targets = b["tokens"], b["targets"]
    assert tokens.dtype == targets.dtype == torch.long and tokens.shape == targets.shape
    assert tokens.shape[1] <= t.cfg.seq_len
    assert 0 <= tokens.min() and tokens.max() < t.vocab_size
    kept = targets[targets != IGNORE_INDEX]
    assert kept.numel() > 0 and 0 <= kept.min() and kept.max() < t.vocab_size
    # every sequence predicts the same number of positions (DDP's mean of means is the global mean)
    counts = (targets != IGNORE_INDEX).sum(1)
    assert (counts == counts[0]).all()


def test_bytes_lm_targets_are_next_bytes_and_splits_differ():
    t = task("bytes_lm", "task.seq_len=64")
    b = t.batch("train", 3, 5)
    assert t.vocab_size == 256 and b["tokens"].shape == (5, 64)
    assert torch.equal(b["tokens"][:, 1:], b["targets"][:, :-1])
    assert 0.02 < len(t.data["val"]) / (len(t.data["train"]) + len(t.data["val"])) < 0.1
    text = t.decode(b["tokens"][0].tolist())
    assert isinstance(text, str) and len(text) > 0
    assert t.decode(t.sample_prompt()).startswith("def ")


@pytest.mark.parametrize("name", ["copy", "sort"])
def test_copy_and_sort_targets(name):
    t = task(name, "task.seq_len=20")
    b = t.batch("train", 1, 8)
    src, n = b["src"], t.cfg.seq_len // 2
    expected = src if name == "copy" else torch.sort(src, dim=1).values
    assert src.shape == (8, n)
    assert torch.equal(b["tgt_targets"], expected)
    assert (b["tgt"][:, 0] == 1).all() and torch.equal(b["tgt"][:, 1:], expected[:, :-1])
    # LM format: x SEP y[:-1] -> predict y, nothing before
    assert torch.equal(b["tokens"][:, :n], src) and (b["tokens"][:, n] == 1).all()
    assert torch.equal(b["targets"][:, n:], expected)
    assert (b["targets"][:, :n] == IGNORE_INDEX).all()
    if name == "sort":
        assert (b["tgt_targets"][:, 1:] >= b["tgt_targets"][:, :-1]).all()


def test_associative_recall_target_is_the_value_of_the_queried_key():
    t = task("associative_recall", "task.seq_len=34", "task.num_keys=20", "task.num_values=10")
    b = t.batch("train", 2, 16)
    for tokens, targets in zip(b["tokens"].tolist(), b["targets"].tolist()):
        pairs, query = tokens[:-2], tokens[-1]
        assert tokens[-2] == 1
        lookup = dict(zip(pairs[0::2], pairs[1::2]))
        assert len(lookup) == len(pairs) // 2 == 16  # keys are distinct
        assert targets[-1] == lookup[query]
        assert all(x == IGNORE_INDEX for x in targets[:-1])


def reference_listops(tokens: list[str]) -> tuple[int, int, int]:
    """(value, depth, widest argument count) of a token list, by an explicit stack machine."""
    stack: list[tuple[str, list[int]]] = []
    depth = width = 0
    result = None
    for tok in tokens:
        if tok.startswith("["):
            stack.append((tok, []))
            depth = max(depth, len(stack))
        elif tok == "]":
            op, args = stack.pop()
            width = max(width, len(args))
            ordered = sorted(args)
            value = {"[MAX": max(args), "[MIN": min(args), "[MED": ordered[len(ordered) // 2],
                     "[SM": sum(args) % 10}[op]
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        else:
            stack[-1][1].append(int(tok))
    assert not stack and result is not None
    return result, depth, width


def test_listops_labels_match_an_independent_evaluator():
    t = task("listops", "task.seq_len=64", "task.max_depth=4", "task.max_args=4")
    b = t.batch("train", 0, 64)
    assert t.num_classes == 10 and t.vocab_size == len(VOCAB)
    labels = set()
    for tokens, label, targets, padding in zip(b["tokens"], b["label"], b["targets"], b["padding"]):
        words = [VOCAB[i] for i in tokens.tolist() if VOCAB[i] != "<pad>"]
        assert words[-1] == "=" and len(words) - 1 <= 63
        value, depth, width = reference_listops(words[:-1])
        assert value == int(label) and depth <= 4 and width <= 4
        eq = len(words) - 1
        assert VOCAB[int(targets[eq])] == str(value)
        assert ((targets != IGNORE_INDEX).nonzero().flatten() == eq).all()
        assert torch.equal(padding, tokens == 0) and not padding[:eq + 1].any()
        labels.add(value)
    assert len(labels) >= 5


def test_listops_respects_max_length():
    t = task("listops", "task.seq_len=32", "task.max_length=12", "task.max_depth=5")
    b = t.batch("val", 4, 32)
    assert b["tokens"].shape == (32, 13)
    assert (b["padding"].logical_not().sum(1) <= 13).all()


@pytest.mark.parametrize("override, match", [
    ("task.max_args=1", "max_args"),
    ("task.max_length=200", "max_length"),
])
def test_bad_listops_config_names_the_field(override, match):
    with pytest.raises(ValueError, match=match):
        task("listops", override)


def test_unknown_task_suggests_close_match():
    with pytest.raises(ValueError, match="did you mean 'listops'"):
        build_task("listop")


def test_bad_split_and_index():
    t = task("copy")
    with pytest.raises(ValueError, match="split"):
        t.batch("test", 0, 2)
    with pytest.raises(ValueError, match="index"):
        t.batch("train", -1, 2)


def test_model_takes_vocab_and_classes_from_the_task():
    cfg = blockzoo.compose(["model=encoder_classifier", "task=listops"])
    t = build_task(cfg)
    sized = size_model_for_task(cfg, t)
    assert sized.model.vocab_size == t.vocab_size and sized.model.num_classes == 10
    model = blockzoo.build_model(sized)
    b = t.batch("train", 0, 3)
    assert torch.isfinite(model.loss(b))


def test_classifier_on_a_task_without_labels_fails_clearly():
    cfg = blockzoo.compose(["model=encoder_classifier", "task=copy"])
    with pytest.raises(ValueError, match="no labels"):
        size_model_for_task(cfg, build_task(cfg))


def test_seq2seq_and_lm_models_train_on_copy():
    for model_name in ("encoder_decoder", "tiny_lm"):
        cfg = blockzoo.compose([f"model={model_name}", "task=copy", "model.dim_model=32", "model.num_layers=1"])
        t = build_task(cfg)
        model = blockzoo.build_model(size_model_for_task(cfg, t))
        assert torch.isfinite(model.loss(t.batch("train", 0, 2)))


def test_image_task_sizes_classes_but_not_vocabulary():
    cfg = blockzoo.compose(["model=hierarchical", "task=images"])
    sized = size_model_for_task(cfg, build_task(cfg))
    assert sized.model.num_classes == 4 and sized.model.vocab_size == cfg.model.vocab_size
