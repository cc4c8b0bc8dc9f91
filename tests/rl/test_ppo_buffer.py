"""The PPO rollout buffer: layout, episode order, formula-key weights."""

import numpy as np
import pytest

from rotax.rl import rollout
from rotax.tasks.points import CompactRenderer, JsonChatRenderer
from rotax.tasks.points import environment
from rotax.tasks.points.episodes import Turn
from rotax.tasks.points.toy_tokenizer import build_toy_tokenizer


def turn(episode, attempt, prompt, response, reward, done):
    return Turn(episode, attempt, np.asarray(prompt, np.int32), np.asarray(response, np.int32),
                -np.arange(1, len(response) + 1, dtype=np.float32), "", reward, reward == 5, done,
                False, "wrong", "")


def test_build_buffer_layout_episode_major():
    turns = [turn(1, 0, [5, 6], [7], -1.0, False), turn(0, 0, [3, 4, 5], [9, 9, 2], 5.0, True),
             turn(1, 1, [5, 6, 7, 8], [2], -3.0, True)]
    buf = rollout.build_buffer(turns, rows=8, pad_id=0, max_new_tokens=4)
    p = buf.prompt_length
    assert p == 16 and buf.response_mask.shape == (8, 8) and buf.tokens.shape == (8, 24)
    # episode 0 first, then episode 1's two attempts in order; padding rows last
    np.testing.assert_array_equal(buf.rewards[:3], [5.0, -1.0, -3.0])
    np.testing.assert_array_equal(buf.dones, [True, False, True] + [True] * 5)
    np.testing.assert_array_equal(buf.row_mask, [1, 1, 1, 0, 0, 0, 0, 0])
    # prompt right-aligned at slot p - 1, response from slot p
    np.testing.assert_array_equal(buf.tokens[0, p - 3:p + 3], [3, 4, 5, 9, 9, 2])
    assert not buf.attention_mask[0, :p - 3].any() and not buf.attention_mask[0, p + 3:].any()
    np.testing.assert_array_equal(buf.response_mask[0], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(buf.sampler_logprob[0, :3], [-1, -2, -3])
    assert buf.token_weight.sum() == 5 and buf.response_mask[3:].sum() == 0


def test_episode_without_done_is_rejected():
    with pytest.raises(ValueError, match="without done"):
        rollout.episode_major([turn(0, 0, [1], [2], -1.0, False)])
    with pytest.raises(ValueError, match="do not fit"):
        rollout.build_buffer([turn(0, 0, [1], [2], -1.0, True)] * 1, rows=0, pad_id=0, max_new_tokens=4)


def test_formula_position_and_weights():
    tok = build_toy_tokenizer()
    answer = "1 7 10 13 : ( 10 - 7 ) * 8"
    ids = tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]
    assert environment.formula_position(tok, ids, ":") == 4
    assert environment.formula_position(tok, ids, '"formula"') is None
    np.testing.assert_array_equal(environment.token_weights(6, 4, 0.5), [0.5] * 4 + [1, 1])
    np.testing.assert_array_equal(environment.token_weights(3, None, 0.5), [1, 1, 1])
    assert environment.formula_marker_for(CompactRenderer()) == ":"
    assert environment.formula_marker_for(JsonChatRenderer()) == '"formula"'
    assert environment.formula_marker_for(CompactRenderer(), "=") == "="
    weighed = environment.weigh_turn(turn(0, 0, [1, 2], ids, 5.0, True), tok, 0.5, ":")
    buf = rollout.build_buffer([weighed], rows=2, pad_id=0, max_new_tokens=16)
    np.testing.assert_array_equal(buf.token_weight[0, :len(ids)], [0.5] * 4 + [1] * (len(ids) - 4))
    assert buf.token_weight[0, len(ids):].sum() == 0 and buf.token_weight[1].sum() == 0
    # weight 1 leaves every token at 1, and turns without weights count 1 per token
    unweighed = environment.weigh_turn(turn(0, 0, [1, 2], ids, 5.0, True), tok, 1.0, ":")
    np.testing.assert_array_equal(unweighed.token_weight, np.ones(len(ids)))
