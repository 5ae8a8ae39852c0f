"""MQAR data (Zoology's layout and docstring example) and a tiny training run that learns."""

import pytest
import torch

from tessera.eval.mqar import IGNORE, answer_accuracy, multiquery_ar, mqar_layout, train_mqar


def test_zoology_docstring_example():
    # multiquery_ar(vocab_size=12, num_kv_pairs=2, input_seq_len=16, random_non_queries=False):
    #         Key   Val  Key  Val            Query                         Query
    # Inputs: 2     8    4    7    0    0    4    0    0    0    0    0    2    0    0
    # Labels: -100 -100 -100 -100 -100 -100  7    -100 -100 -100 -100 -100 8    -100 -100
    inputs, labels = mqar_layout(keys=[2, 4], values=[8, 7], gaps=[4, 1], input_seq_len=16)
    assert inputs[:15].tolist() == [2, 8, 4, 7, 0, 0, 4, 0, 0, 0, 0, 0, 2, 0, 0]
    assert labels[:15].tolist() == [-100] * 6 + [7] + [-100] * 5 + [8, -100, -100]


@pytest.mark.parametrize("seed", [0, 1])
def test_generated_sequences_follow_the_rules(seed):
    vocab, length, pairs = 64, 32, 4
    inputs, labels = multiquery_ar(vocab, 50, length, pairs, random_non_queries=False, seed=seed)
    for x, y in zip(inputs, labels):
        keys, values = x[0:2 * pairs:2], x[1:2 * pairs:2]
        assert ((keys >= 1) & (keys < vocab // 2)).all() and keys.unique().numel() == pairs
        assert ((values >= vocab // 2) & (values < vocab)).all() and values.unique().numel() == pairs
        scored = (y != IGNORE).nonzero().flatten()
        assert scored.numel() == pairs and (scored >= 2 * pairs).all() and (scored % 2 == 0).all()
        answer = dict(zip(keys.tolist(), values.tolist()))
        for pos in scored.tolist():
            assert y[pos].item() == answer[x[pos].item()]


def test_power_law_prefers_short_gaps():
    _, labels = multiquery_ar(512, 400, 256, 4, random_non_queries=False, seed=0)
    positions = (labels != IGNORE).nonzero()[:, 1].float()
    assert positions.median() < 8 + 2 * 62   # well below the middle of the query region


def test_random_non_queries_fill_zeros_only():
    plain, labels = multiquery_ar(64, 20, 32, 4, random_non_queries=False, seed=3)
    noisy, labels2 = multiquery_ar(64, 20, 32, 4, random_non_queries=True, seed=3)
    assert torch.equal(labels, labels2)
    assert torch.equal(noisy[plain != 0], plain[plain != 0])


@pytest.mark.parametrize("kwargs, name", [
    (dict(vocab_size=64, num_examples=1, input_seq_len=31, num_kv_pairs=2), "input_seq_len"),
    (dict(vocab_size=16, num_examples=1, input_seq_len=32, num_kv_pairs=2), "vocab_size"),
    (dict(vocab_size=64, num_examples=1, input_seq_len=32, num_kv_pairs=9), "num_kv_pairs"),
    (dict(vocab_size=64, num_examples=1, input_seq_len=32, num_kv_pairs=2, power_a=0.0), "power_a"),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        multiquery_ar(**kwargs)


def test_tiny_attention_model_learns():
    result = train_mqar(seq_len=32, num_kv_pairs=2, d_model=32, vocab_size=64, num_train=3000,
                        num_test=200, epochs=6, batch_size=64, lr=3e-3, seed=0)
    # chance is 1/32 over the value half of the vocabulary
    assert result.accuracy > 0.3, result
