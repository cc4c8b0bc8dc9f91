"""Reference replay: rotax's ``reference`` recipe against a small numpy port of the study's
code, written from reading xiaodanguoguo/RL_Heals_SFT (not copied):

* ``rl/trainer/storage_tz.py`` ``RolloutStorage.compute_returns`` with ``use_gae=True``,
  ``use_proper_time_limits=False`` (masks = 1 − done), fed step by step as
  ``rl/trainer/llama_trainer.py`` ``collect_trajectories`` does with the environment of
  ``gym/gym_cards/envs/general_points_oneline.py`` (5 graded steps, then a step-limit step with
  reward −1 that is truncated, not terminated), and ``rl/trainer/algo/ppo.py``'s advantage
  normalization;
* ``rl/trainer/model_tz_llama.py`` ``VLMPolicy.evaluate``: the action log-prob
  ``0.5 · thought + action`` over the response tokens, for an answer with the marker ids
  (Llama-3's ``' "formula":'``) and without them (the Qwen case: fallback split).

The same turn records (rotax's episode engine in ``step_limit_answer`` mode with a scripted
model) go through both; advantages, returns and action log-probs must agree.
"""

import jax
import numpy as np
import pytest

from rotax.io.tokenizer import encode_answer
from rotax.rl import advantages, rollout
from rotax.sampling.sampler import Generation
from rotax.tasks.points import CompactRenderer, Rule, canonical_solution, card_values
from rotax.tasks.points import environment
from rotax.tasks.points.episodes import run_episodes
from rotax.tasks.points.toy_tokenizer import build_toy_tokenizer

GAMMA, LAM = 0.9, 0.95
LLAMA_MARKER = (330, 60599, 794)  # the reference's hard-coded ids


# ------------------------------------------------------------------ the numpy port


def port_env_records(turns_in_order):
    """(reward, done, truncated) per step as the reference's environment reports them."""
    records = []
    for t in turns_in_order:
        if t.attempt == 5:  # remaining_step hits -1: reward -1, terminated False, truncated True
            assert t.reward == -1.0
            records.append((-1.0, False, True))
        else:
            records.append((t.reward, t.reward == 5.0, False))
    return records


def port_storage_returns(records, values, next_value):
    """RolloutStorage.insert + compute_returns(use_gae, use_proper_time_limits=False)."""
    steps = len(records)
    rewards = np.zeros(steps)
    value_preds = np.zeros(steps + 1)
    returns = np.zeros(steps + 1)
    masks = np.ones(steps + 1)
    for step, (reward, done, _truncated) in enumerate(records):
        rewards[step], value_preds[step] = reward, values[step]
        masks[step + 1] = 1.0 - done  # bad_masks (1 - truncated) are not read on this path
    value_preds[-1] = next_value
    gae = 0.0
    for step in reversed(range(steps)):
        delta = rewards[step] + GAMMA * value_preds[step + 1] * masks[step + 1] - value_preds[step]
        gae = delta + GAMMA * LAM * masks[step + 1] * gae
        returns[step] = gae + value_preds[step]
    adv = returns[:-1] - value_preds[:-1]
    normalized = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-5)  # torch.std is unbiased
    return adv, returns[:-1], normalized


def port_action_logprob(output_ids, token_logprob, marker=LLAMA_MARKER, coef=0.5):
    """VLMPolicy.evaluate's sum_log_prob for one answer; token_logprob[t] = log p(output t)."""
    output_ids = np.asarray(output_ids)
    if len(output_ids) < 3:  # unfold(size=3) raises: the except branch returns zeros
        return 0.0
    mask = (output_ids != 0)[1:]
    selected = mask * token_logprob[1:]  # log_probs[input_len:-1] gathered at output_ids[1:]
    windows = np.lib.stride_tricks.sliding_window_view(output_ids, 3)
    matches = np.flatnonzero((windows == np.asarray(marker)).all(axis=-1))
    if len(matches):
        m = int(matches[-1])
    else:
        nonzero = np.flatnonzero(mask)
        if len(nonzero) < 4:  # IndexError: constant log-prob, no gradient
            return "constant"
        m = int(nonzero[-4])
    thought = selected[1:m - 1].sum()
    action = selected[m - 1:].sum()
    return coef * thought + action


# ------------------------------------------------------------------ rotax side


class Script:
    """Answers hand i's k-th call with script[i][k] (text)."""

    def __init__(self, tok, script):
        self.tok, self.script, self.calls = tok, script, {}

    def __call__(self, prompts, row_ids, key):
        out = []
        for i in row_ids:
            k = self.calls.get(i, 0)
            self.calls[i] = k + 1
            ids = encode_answer(self.tok, self.script[i][k])
            out.append(Generation(np.asarray(ids, np.int32), np.zeros(len(ids), np.float32), False))
        return out


HANDS = [("2", "3", "4", "6"), ("5", "5", "5", "A"), ("A", "2", "3", "4"), ("3", "3", "8", "8")]


def _correct(hand):
    return CompactRenderer().render_answer(hand, Rule.ID, canonical_solution(card_values(hand, Rule.ID)))


def _script():
    wrong = "1 7 10 13 : 1 + 7 + 10 + 6"
    junk = "1 2 3"
    return {0: [wrong, _correct(HANDS[0])],
            1: [junk, wrong, junk, wrong, junk, wrong],        # 5 failures + the step-limit answer
            2: [_correct(HANDS[2])],
            3: [wrong, junk, wrong, wrong, junk, junk]}        # ends the buffer unsolved


@pytest.fixture(scope="module")
def played():
    tok = build_toy_tokenizer()
    batch = run_episodes(None, None, tok, CompactRenderer(), HANDS, Rule.ID, jax.random.key(0),
                         generator=Script(tok, _script()), progress=False, step_limit_answer=True)
    return tok, batch


def test_step_limit_answers_are_stored(played):
    _, batch = played
    by_hand = {h: [(t.attempt, t.reward, t.done, t.terminal) for t in batch.turns_of(h)] for h in range(4)}
    assert [a for a, *_ in by_hand[1]] == [0, 1, 2, 3, 4, 5]
    assert by_hand[1][-1][1:] == (-1.0, True, False)  # ends the episode, returns run on
    assert by_hand[0][-1][1:] == (5.0, True, True) and len(by_hand[2]) == 1
    assert batch.attempts_used.tolist() == [2, 5, 1, 5]  # statistics ignore the extra answer
    assert batch.solved.tolist() == [True, False, True, False]


def test_advantages_and_returns_match_the_reference_storage(played):
    tok, batch = played
    ordered = rollout.episode_major(batch.turns)
    rng = np.random.default_rng(0)
    values = {(t.hand_index, t.attempt): rng.normal() for t in ordered}
    rows = rollout.buffer_rows(len(HANDS), 6, 8)
    buf = rollout.build_buffer(batch.turns, rows=rows, pad_id=0, max_new_tokens=16)
    row_values = np.full(rows, 123.0, np.float32)  # padding rows: junk the code must ignore
    row_values[:len(ordered)] = [values[(t.hand_index, t.attempt)] for t in ordered]
    raw, returns, normalized = map(np.asarray, advantages.buffer_advantages(
        buf.rewards, row_values, buf.dones, buf.row_mask, GAMMA, LAM))

    records = port_env_records(ordered)
    # rotax's buffer has no state after its last row: the port bootstraps from 0 there
    want_adv, want_ret, want_norm = port_storage_returns(
        records, [values[(t.hand_index, t.attempt)] for t in ordered], next_value=0.0)
    n = len(ordered)
    np.testing.assert_allclose(raw[:n], want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns[:n], want_ret, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normalized[:n], want_norm, rtol=1e-4, atol=1e-4)
    assert not raw[n:].any() and not returns[n:].any()
    # the case tests the difference: rotax's own recipe (returns stop at every episode end)
    # gives other advantages on the same records
    rotax_dones = np.array([t.done for t in ordered] + [True] * (rows - n))
    own, _, _ = map(np.asarray, advantages.buffer_advantages(
        buf.rewards, row_values, rotax_dones, buf.row_mask, GAMMA, LAM))
    assert np.abs(own[:n] - want_adv).max() > 0.1


ANSWERS = {
    # Llama-3: ' "formula":' as the reference's ids, twice (the last occurrence counts), a 0 id
    "marker present": [17, 9, 330, 60599, 794, 5, 0, 12, 330, 60599, 794, 44, 45, 128009],
    # Qwen-like: the ids never occur, the split falls before the 4th-last counted token
    "marker absent": [17, 9, 21, 22, 0, 23, 24, 25, 26, 27, 28, 151645],
    "marker at 1": [17, 330, 60599, 794, 40, 151645],
    "short fallback": [5, 0, 0, 6, 7],
    "two tokens": [5, 6],
}


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_token_weights_give_the_reference_action_logprob(case):
    ids = ANSWERS[case]
    logp = -np.random.default_rng(len(ids)).uniform(0.1, 3.0, len(ids))
    want = port_action_logprob(ids, logp)
    weights = environment.reference_token_weights(ids, LLAMA_MARKER, 0.5)
    assert weights.shape == (len(ids),) and weights[:1].sum() == 0
    if want == "constant":
        assert not weights.any()  # no gradient either way
    else:
        np.testing.assert_allclose(float(np.sum(weights * logp)), want, rtol=1e-6)
    if case == "marker present":  # tokens 2 .. 7 at 0.5 (the 0 id at 6 dropped), 8 .. on at 1
        np.testing.assert_array_equal(weights, [0, 0, .5, .5, .5, .5, 0, .5, 1, 1, 1, 1, 1, 1])
