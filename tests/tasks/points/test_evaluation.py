"""The episode engine and evaluation on a scripted fake model; Wilson intervals vs scipy; the
`rotax eval` command end to end on a tiny random model."""

import json
import math

import jax
import numpy as np
import pytest

from rotax.stats import intervals
from rotax.tasks.points import evaluation
from rotax.tasks.points.episodes import run_episodes
from rotax.sampling.sampler import Generation
from rotax.tasks.points import CompactRenderer, Rule, canonical_solution, card_values, grade_response
from rotax.io.tokenizer import encode_answer, encode_prompt
from rotax.tasks.points.toy_tokenizer import build_toy_tokenizer

HANDS = [("A", "7", "10", "K"), ("2", "3", "4", "6"), ("Q", "Q", "2", "A")]  # under Rule.OOD


def _correct(hand, rule=Rule.OOD):
    renderer = CompactRenderer()
    return renderer.render_answer(hand, rule, canonical_solution(card_values(hand, rule)))


class ScriptedModel:
    """A generator answering hand ``i``'s attempt ``k`` with ``script[i][k]`` (text)."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script = tokenizer, script
        self.calls, self.attempt = [], {}

    def __call__(self, prompts, row_ids, key):
        self.calls.append(list(row_ids))
        out = []
        for prompt, i in zip(prompts, row_ids):
            k = self.attempt.get(i, 0)
            self.attempt[i] = k + 1
            ids = encode_answer(self.tokenizer, self.script[i][k])
            out.append(Generation(np.asarray(ids, np.int32), -0.5 * np.ones(len(ids), np.float32), False))
        return out


@pytest.fixture(scope="module")
def tok():
    return build_toy_tokenizer()


def _script():
    wrong_numbers = "1 7 10 13 : 1 + 7 + 10 + 6"     # -2 invalid (6), -2 unused (13)
    partial = "1 2 12 12 : ( 12 + 12 ) * ( 2 - 1"      # +1: an unclosed prefix of a solution
    return {
        0: [wrong_numbers, _correct(HANDS[0])],          # solved at attempt 2
        1: [_correct(HANDS[1])],                         # solved at once
        2: ["1 2 3", partial, wrong_numbers, "12 12 2 1 : 12 + 12 ) ", partial],
    }


def test_episode_dialogue_rewards_and_records(tok):
    renderer = CompactRenderer()
    model = ScriptedModel(tok, _script())
    batch = run_episodes(None, None, tok, renderer, HANDS, Rule.OOD, jax.random.key(0),
                         batch_size=2, generator=model, progress=False)
    # all active episodes are batched, in chunks of batch_size, attempt by attempt
    assert model.calls == [[0, 1], [2], [0, 2], [2], [2], [2]]
    assert batch.attempts_used.tolist() == [2, 1, 5]
    assert batch.solved.tolist() == [True, True, False]
    assert batch.solved_first_attempt.tolist() == [False, True, False]

    turns = batch.turns_of(0)
    assert [t.attempt for t in turns] == [0, 1]
    first_prompt = renderer.render_prompt(HANDS[0], Rule.OOD)
    assert turns[0].prompt_ids.tolist() == encode_prompt(tok, [{"role": "user", "content": first_prompt}])
    verdict = grade_response(_script()[0][0], HANDS[0], Rule.OOD, renderer)
    assert turns[0].reward == verdict.reward == -4.0 and not turns[0].solved and not turns[0].done
    assert turns[0].reasons == "you used invalid numbers: [6], you didn't use numbers: [13]."
    dialogue = [{"role": "user", "content": first_prompt},
                {"role": "assistant", "content": _script()[0][0]},
                {"role": "user", "content": "You failed this trial because you used invalid numbers: "
                                            "[6], you didn't use numbers: [13]."}]
    assert turns[1].prompt_ids.tolist() == encode_prompt(tok, dialogue)
    assert turns[1].reward == 5.0 and turns[1].solved and turns[1].done
    assert turns[1].response_ids.tolist() == encode_answer(tok, _script()[0][1])
    assert turns[1].response_text == _script()[0][1]
    assert np.allclose(turns[1].response_logprobs, -0.5)

    failing = batch.turns_of(2)
    assert [t.done for t in failing] == [False] * 4 + [True]
    assert [t.kind for t in failing] == ["missing", "partial", "numbers", "grammar", "partial"]
    assert [t.reward for t in failing] == [-3.0, 1.0, -4.0, -3.0 - 2.0, 1.0]
    # every later prompt extends the previous one by answer + EOS + feedback + <sep>
    for before, after in zip(failing, failing[1:]):
        head = before.prompt_ids.tolist() + before.response_ids.tolist()
        assert after.prompt_ids.tolist()[:len(head)] == head
    assert batch.episodes[2].messages()[-1]["content"].startswith("You failed this trial because ")


def test_summary_metrics(tok):
    model = ScriptedModel(tok, _script())
    batch = run_episodes(None, None, tok, CompactRenderer(), HANDS, Rule.OOD, jax.random.key(0),
                         generator=model, progress=False)
    summary = evaluation.summarize(batch)
    assert summary["hands"] == 3 and summary["attempts"] == 8
    assert (summary["within"].count, summary["within"].n) == (2, 3)
    assert (summary["first_attempt"].count, summary["first_attempt"].n) == (1, 3)
    rewards = [-4, 5, 5, -3, 1, -4, -5, 1]
    assert summary["mean_reward"].value == pytest.approx(np.mean(rewards))
    assert summary["mean_reward"].low < np.mean(rewards) < summary["mean_reward"].high
    assert summary["format_error"].count == 1  # "1 2 3" has no ":"
    counts = {k: p.count for k, p in summary["kinds"].items()}
    assert counts == {"missing": 1, "illegal": 0, "grammar": 1, "numbers": 2, "wrong": 0,
                      "partial": 2, "correct": 2}
    assert summary["within"].low < 2 / 3 < summary["within"].high


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (1, 234), (41, 234), (117, 234), (3, 7)])
def test_wilson_interval_matches_scipy(k, n):
    from scipy.stats import binomtest

    expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = intervals.wilson_interval(k, n)
    assert low == pytest.approx(expected.low, abs=1e-12)
    assert high == pytest.approx(expected.high, abs=1e-12)
    expected = binomtest(k, n).proportion_ci(confidence_level=0.8, method="wilson")
    assert intervals.wilson_interval(k, n, 0.8) == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert all(math.isnan(x) for x in intervals.wilson_interval(0, 0))


class EvenHandsSolver:
    """Solves even-numbered hands at the second attempt, never the odd ones."""

    def __init__(self, tok, rule):
        self.tok, self.rule, self.seen = tok, rule, {}

    def __call__(self, prompts, row_ids, key):
        out = []
        for prompt, i in zip(prompts, row_ids):
            words = self.tok.convert_ids_to_tokens(prompt)
            hand = tuple(words[words.index("|") + 1:words.index("<sep>")])
            attempt = words.count("<eos>")
            text = _correct(hand, self.rule) if i % 2 == 0 and attempt == 1 else "1 : ("
            ids = encode_answer(self.tok, text)
            out.append(Generation(np.asarray(ids, np.int32), np.zeros(len(ids), np.float32), False))
        return out


def test_evaluate_over_seeds_and_table(tok):
    report = evaluation.evaluate(None, None, tok, CompactRenderer(), Rule.ID, seeds=(42, 43), n=9,
                                 attempts=3, generator=EvenHandsSolver(tok, Rule.ID), progress=False)
    for seed in (42, 43):
        summary = report["per_seed"][seed]
        assert (summary["within"].count, summary["first_attempt"].count) == (5, 0)
        assert summary["attempts"] == 5 * 2 + 4 * 3
    pooled = report["over_seeds"]
    assert pooled["within"]["mean"] == pytest.approx(5 / 9) and pooled["within"]["std"] == 0
    assert (pooled["within"]["pooled"].count, pooled["within"]["pooled"].n) == (10, 18)
    assert report["batches"][42].hands != report["batches"][43].hands
    table = evaluation.format_table(report)
    assert "within" in table and "seed 43" in table and "kind:partial" in table
    json.dumps(evaluation.to_json(report))


def test_eval_command_end_to_end(tmp_path, tok):
    from rotax.cli import main
    from tests.support import hf_fixtures

    model_dir = hf_fixtures.llama(tmp_path / "model", tied=True, layers=1)
    tok.save_pretrained(model_dir)
    out = tmp_path / "report.json"
    episodes = tmp_path / "turns.jsonl"
    code = main(["eval", "--model", str(model_dir), "--split", "ood", "--n", "3", "--attempts", "2",
                 "--max-new-tokens", "6", "--temperature", "1.0", "--top-k", "20", "--batch-size", "4",
                 "--out", str(out), "--episodes", str(episodes), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["settings"]["renderer"] == "CompactRenderer" and report["settings"]["split"] == "ood"
    assert report["per_seed"]["42"]["hands"] == 3
    lines = [json.loads(line) for line in episodes.read_text().splitlines()]
    assert 3 <= len(lines) <= 6 and {line["hand_index"] for line in lines} == {0, 1, 2}
    assert main(["eval", "--model", str(tmp_path), "--split", "id"]) == 2  # not an HF directory


@pytest.mark.parametrize("k1,n1,k2,n2,low,high", [
    # Newcombe (1998), Stat. Med. 17:873-890, Table II, method 10 (hybrid score)
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
])
def test_difference_interval_matches_newcombe_1998(k1, n1, k2, n2, low, high):
    assert intervals.difference_interval(k1, n1, k2, n2) == pytest.approx((low, high), abs=1e-4)
