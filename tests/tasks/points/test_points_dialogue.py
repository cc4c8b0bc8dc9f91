"""GeneralPoints answer parsing, renderers, revision episodes and SFT examples."""

from __future__ import annotations

import itertools
import json
import random
import re

import pytest

from rotax.tasks import points as P

HAND = ("K", "5", "A", "8")


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("response,formula", [
    ('{"cards": ["K", "5", "A", "8"], "number": [10, 5, 1, 8], "formula": "10+5+1+8=24"}',
     "10+5+1+8"),
    ('Sure! Here it is:\n{"formula": "(1+2)*8", "cards": []}\nGood luck.', "(1+2)*8"),
    ('{"answer": {"reasoning": "x", "formula": "3*8=24=24"}}', "3*8"),
    ('[{"cards": ["A"]}, {"formula": "1*24"}]', "1*24"),
    ('{"formula": "2*12", "inner": {"formula": "9+9"}}', "2*12"),  # top level wins
    ('text {"a": 1} more {"formula": "4*6"} end', "4*6"),
    ('{\n  "cards": [\'K\', \'5\'],\n  "number": [10, 5],\n  "formula": "10+14=24",\n}',
     "10+14"),  # the reference's skeleton has a trailing comma: not JSON, pattern fallback
    ('"formula" : "6*4"', "6*4"),
    ("{'formula': '6*4'}", "6*4"),
    ('{"formula": "=24"}', ""),
    ('{"formula": ""}', ""),
    ('{"formula": "1 + 2 = 3"}', "1 + 2 "),
    ('{"formula": 24}', None),
    ('{"formula": null}', None),
    ('{"formula": ["1+2"]}', None),
    ('{"cards": ["K"], "number": [10]}', None),
    ('"formula": "unterminated', None),
    ("", None),
    ("no answer at all", None),
])
def test_extract_formula(response, formula):
    assert P.extract_formula(response) == formula
    assert P.JsonChatRenderer().extract_formula(response) == formula


def test_parse_answer_reads_cards_and_numbers_for_analysis():
    parsed = P.parse_answer('{"cards": ["K", "5"], "number": [10, 5], "formula": "1"}')
    assert (parsed.cards, parsed.number, parsed.formula) == (["K", "5"], [10, 5], "1")
    loose = P.parse_answer('"cards": [\'J\', \'7\'], "number": [11, 7], "formula": "2"')
    assert (loose.cards, loose.number, loose.formula) == (["J", "7"], [11, 7], "2")
    assert P.parse_answer("nothing") == P.ParsedAnswer(None, None, None)


def test_parser_survives_hostile_json():
    deep = "[" * 100_000 + "]" * 100_000
    assert P.extract_formula(deep) is None
    assert P.extract_formula('{"formula": "1+2", "x": ' + "[" * 5000 + "]" * 5000 + "}") \
        == "1+2"
    big = '{"formula": 1' + "0" * 10_000 + "}"
    assert P.extract_formula(big) is None
    nested = '{"a": ' * 50 + '{"formula": "8*3"}' + "}" * 50
    assert P.extract_formula(nested) == "8*3"
    assert P.extract_formula("{" * 20_000) is None
    too_long = '{"formula": "8*3"}' + " " * 40_000
    assert P.extract_formula(too_long) is None
    assert P.extract_formula(None) is None


# ----------------------------------------------------------------------------- JSON renderer
def test_default_prompt_has_the_three_blocks():
    [message] = P.JsonChatRenderer().render_prompt(("A", "7", "10", "K"), P.Rule.OOD)
    assert message["role"] == "user"
    text = message["content"]
    assert "Cards: ['A', '7', '10', 'K']" in text
    assert "'J', 'Q', and 'K' count as '11', '12', and '13' respectively" in text
    for field in ('"cards"', '"number"', '"formula"'):
        assert field in text
    assert "24" in text and "{" in text and "{{" not in text
    id_text = P.JsonChatRenderer().render_prompt(("A", "7", "10", "K"), P.Rule.ID)[0]["content"]
    assert "'J', 'Q', and 'K' count as '10'" in id_text
    assert P.face_card_clause(P.FaceRule(2, 2, 2)) == "'J', 'Q', and 'K' count as '2'"
    assert P.face_card_clause(P.FaceRule(1, 5, 9)) == \
        "'J', 'Q', and 'K' count as '1', '5', and '9' respectively"


def test_user_template_file_with_reference_placeholders(tmp_path):
    template = ("[Task Description]\nYou are an expert {target_number} points card game player."
                "\nNote that {face_card_msg}, and each card must be used once.\n\n[Input]\n"
                "Cards: {cards}\n\n[Output]\n{{\n  \"cards\": [x, y, z, w], where "
                "{face_card_msg},\n  \"formula\": 'an equation that equals {target_number}',\n}}"
                "\n")
    path = tmp_path / "prompt.txt"
    path.write_text(template, encoding="utf-8")
    renderer = P.JsonChatRenderer.from_template_file(path)
    text = renderer.render_prompt(["Q", "2", "3", "A"], P.Rule.ID)[0]["content"]
    expected = template.replace("{{", "{").replace("}}", "}").replace(
        "{target_number}", "24").replace("{cards}", "['Q', '2', '3', 'A']").replace(
        "{face_card_msg}", "'J', 'Q', and 'K' count as '10'")
    assert text == expected
    short = P.JsonChatRenderer("Rule: {rule}. Hand: {cards}. Goal {target}.")
    assert short.prompt_text(["A", "2", "3", "4"], P.Rule.OOD) == (
        "Rule: 'J', 'Q', and 'K' count as '11', '12', and '13' respectively. "
        "Hand: ['A', '2', '3', '4']. Goal 24.")
    for bad in ["no placeholders", "{cards} only", "{cards} {rule} {unknown}",
                "{cards} {rule} {cards.__class__}"]:
        with pytest.raises((ValueError, KeyError)):
            P.JsonChatRenderer(bad)


def test_json_answer_format():
    renderer = P.JsonChatRenderer()
    answer = renderer.render_answer(HAND, P.Rule.ID, "10+5+1+8")
    assert answer == ('{"cards": ["K", "5", "A", "8"], "number": [10, 5, 1, 8], '
                      '"formula": "10+5+1+8=24"}')
    assert json.loads(renderer.render_answer(HAND, P.Rule.ID, "10+5+1+8=24"))["formula"] \
        == "10+5+1+8=24"
    assert renderer.render_feedback("you didn't use numbers: [8].") == \
        "You failed this trial because you didn't use numbers: [8]."


def test_messages_go_through_a_chat_template():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    words = ["[UNK]", "<s>", "</s>"]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend,
                                                     unk_token="[UNK]", eos_token="</s>")
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
                               "</s>{% endfor %}{% if add_generation_prompt %}<assistant>"
                               "{% endif %}")
    episode = P.Episode.start(HAND, P.Rule.ID, P.JsonChatRenderer())
    episode = episode.record('{"formula": "10+5+1"}')
    text = tokenizer.apply_chat_template(episode.messages(), tokenize=False,
                                         add_generation_prompt=True)
    assert text.startswith("<user>[Task]") and text.endswith("<assistant>")
    assert "<assistant>{\"formula\": \"10+5+1\"}</s><user>You failed this trial because" in text


# ----------------------------------------------------------------------------- compact renderer
def test_compact_renderer_format_and_round_trip():
    renderer = P.CompactRenderer()
    assert renderer.render_prompt(("A", "7", "10", "K"), P.Rule.OOD) == \
        "J 11 Q 12 K 13 | A 7 10 K"
    answer = renderer.render_answer(("A", "7", "10", "K"), P.Rule.OOD, "(1+7)*(13-10)=24")
    assert answer == "1 7 10 13 : ( 1 + 7 ) * ( 13 - 10 )"
    assert renderer.extract_formula(answer) == "(1+7)*(13-10)"
    assert renderer.parse_answer(answer).number == [1, 7, 10, 13]
    assert renderer.extract_formula("1 7 10 13 ( 1 + 7 )") is None
    assert renderer.extract_formula("1 7 : 2 4 = 24") == "24"
    prefixed = P.CompactRenderer(card_prefix="c")
    assert prefixed.render_prompt(("A", "J", "2", "3"), P.Rule.ID) == \
        "J 10 Q 10 K 10 | cA cJ c2 c3"
    with pytest.raises(ValueError):
        P.CompactRenderer(card_prefix="c ")


@pytest.mark.parametrize("renderer", [P.CompactRenderer(), P.CompactRenderer(card_prefix="#")])
def test_compact_examples_stay_in_vocabulary_and_grade_correct(renderer):
    vocabulary = set(renderer.vocabulary())
    rng = random.Random(0)
    for rule in (P.Rule.ID, P.Rule.OOD, P.FaceRule(3, 1, 13)):
        for hand in P.deal_hands(rng, rule, 60):
            prompt, answer = P.sft_example(hand, rule, renderer, rng, "random")
            assert set(prompt.split()) <= vocabulary and set(answer.split()) <= vocabulary
            assert len(prompt.split()) + len(answer.split()) <= 32
            assert P.grade_response(answer, hand, rule, renderer).reward == 5


# ----------------------------------------------------------------------------- episodes
def test_episode_ends_at_correct_answer():
    episode = P.Episode.start(HAND, P.Rule.ID, P.JsonChatRenderer())
    assert episode.messages()[0]["role"] == "user" and len(episode.messages()) == 1
    episode = episode.record('{"formula": "10+5+1"}')
    assert not episode.done and episode.rewards == [-2.0]
    episode = episode.record('{"formula": "10+5+1+8=24"}')
    assert episode.done and episode.solved and not episode.solved_first_attempt
    assert episode.rewards == [-2.0, 5.0]
    roles = [m["role"] for m in episode.messages()]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert episode.messages()[2]["content"] == \
        "You failed this trial because you didn't use numbers: [8]."
    with pytest.raises(ValueError):
        episode.record("anything")


def test_episode_ends_after_five_attempts():
    episode = P.Episode.start(HAND, P.Rule.OOD, P.JsonChatRenderer())
    for attempt in range(5):
        assert not episode.done
        episode = episode.record(f"attempt {attempt}")
    assert episode.done and not episode.solved and episode.rewards == [-3.0] * 5
    messages = episode.messages()
    assert [m["role"] for m in messages] == ["user"] + ["assistant", "user"] * 5
    assert messages[-1]["content"] == "You failed this trial because illegal characters."
    short = P.Episode.start(HAND, P.Rule.OOD, P.CompactRenderer(), max_attempts=1)
    short = short.record("10 5 1 8 : 10 + 5 + 1 + 8")  # K counts 13 under OOD
    assert short.done and short.grades[0].reasons == \
        "you used invalid numbers: [10], you didn't use numbers: [13]."
    assert short.messages()[0] == {"role": "user", "content": "J 11 Q 12 K 13 | K 5 A 8"}


def test_episode_is_immutable():
    start = P.Episode.start(HAND, P.Rule.ID, P.JsonChatRenderer())
    after = start.record("x")
    assert start.grades == () and len(after.grades) == 1


# ----------------------------------------------------------------------------- SFT examples
def test_sft_examples_are_correct_and_deterministic():
    renderer = P.JsonChatRenderer()
    rng = random.Random(1)
    for rule in (P.Rule.ID, P.Rule.OOD):
        for hand in P.evaluation_hands(rule, seed=3, n=40):
            prompt, answer = P.sft_example(hand, rule, renderer)
            assert prompt == renderer.render_prompt(hand, rule)
            assert (prompt, answer) == P.sft_example(hand, rule, renderer)
            parsed = json.loads(answer)
            assert parsed["cards"] == list(hand)
            assert parsed["number"] == list(P.card_values(hand, rule))
            assert P.grade(answer, hand, rule).reward == 5
            _, sampled = P.sft_example(hand, rule, renderer, rng, "random")
            assert P.grade(sampled, hand, rule).reward == 5
    formulas = {json.loads(P.sft_example(("3", "8", "2", "6"), P.Rule.ID, renderer,
                                         random.Random(s), "random")[1])["formula"]
                for s in range(40)}
    assert len(formulas) > 5
    with pytest.raises(ValueError):
        P.sft_example(("A", "A", "A", "A"), P.Rule.ID, renderer)
    with pytest.raises(ValueError):
        P.sft_example(HAND, P.Rule.ID, renderer, solution_choice="random")
    with pytest.raises(ValueError):
        P.sft_example(HAND, P.Rule.ID, renderer, random.Random(0), "best")


def test_sorted_solution_depends_only_on_the_value_multiset():
    # 'sorted' targets are a function of the compact scratchpad (the sorted values): every
    # ordering of a hand gets the same formula, it is correct, and — where any solution keeps
    # the ascending order — it uses the numbers in that order (checked by an independent
    # brute force over the operand orderings).
    renderer = P.JsonChatRenderer()
    for hand in P.evaluation_hands(P.Rule.OOD, seed=5, n=30):
        formulas = set()
        for perm in set(itertools.permutations(hand)):
            answer = json.loads(P.sft_example(perm, P.Rule.OOD, renderer, solution_choice="sorted")[1])
            assert P.grade(json.dumps(answer), perm, P.Rule.OOD).reward == 5
            formulas.add(answer["formula"])
        assert len(formulas) == 1
        numbers = [int(n) for n in re.findall(r"\d+", formulas.pop().split("=")[0])]
        values = sorted(P.card_values(hand, P.Rule.OOD))
        if any([int(n) for n in re.findall(r"\d+", s)] == values for s in P.solutions(values)):
            assert numbers == values
