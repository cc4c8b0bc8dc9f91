"""rotax.io.tokenizer (prompt / answer / EOS conventions) on the toy word-level tokenizer of rotax.tasks.points.toy_tokenizer."""

import random

import pytest

from rotax.io import tokenizer as tk
from rotax.tasks.points import toy_tokenizer as toy_tk
from rotax.tasks.points import CompactRenderer, Episode, Rule, deal_hands, evaluation_hands


@pytest.fixture(scope="module")
def toy():
    return toy_tk.build_toy_tokenizer()


@pytest.fixture(scope="module")
def reloaded(toy, tmp_path_factory):
    directory = tmp_path_factory.mktemp("toy_tokenizer")
    toy.save_pretrained(directory)
    return tk.load_tokenizer(directory)


def _dialogue():
    episode = Episode.start(("A", "7", "10", "K"), Rule.OOD, CompactRenderer())
    episode = episode.record("1 7 10 13 : ( 10 - 7")      # partial
    episode = episode.record("1 7 10 13 : 10 * 7 + 1")    # numbers
    return episode.messages()


def test_toy_vocabulary_is_small_and_stable(toy):
    vocab = toy_tk.toy_vocabulary()
    assert len(vocab) == len(set(vocab)) == len(toy.get_vocab()) <= 100
    assert vocab[:5] == ["<pad>", "<bos>", "<eos>", "<unk>", "<sep>"]
    assert (toy.pad_token_id, toy.bos_token_id, toy.eos_token_id, toy.unk_token_id) == (0, 1, 2, 3)
    assert toy.get_vocab() == {w: i for i, w in enumerate(vocab)}


def test_reload_through_auto_tokenizer_gives_identical_ids(toy, reloaded):
    messages = _dialogue()
    assert tk.encode_prompt(reloaded, messages) == tk.encode_prompt(toy, messages)
    assert tk.encode_answer(reloaded, "1 7 10 13 : ( 10 - 7 ) * 8") == \
        tk.encode_answer(toy, "1 7 10 13 : ( 10 - 7 ) * 8")
    assert reloaded.get_vocab() == toy.get_vocab()
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (toy.eos_token_id, toy.pad_token_id)
    assert toy_tk.is_toy_tokenizer(reloaded)


def test_chat_template_layout(toy):
    ids = tk.encode_prompt(toy, _dialogue())
    words = toy.convert_ids_to_tokens(ids)
    assert words[0] == "<bos>" and words[-1] == "<sep>"
    assert words.count("<sep>") == 3 and words.count("<eos>") == 2
    first = words.index("<sep>")
    assert words[1:first] == "J 11 Q 12 K 13 | A 7 10 K".split()
    assert words[first + 1:words.index("<eos>")] == "1 7 10 13 : ( 10 - 7".split()
    # a plain string is one user turn
    assert tk.encode_prompt(toy, "J 11 Q 12 K 13 | A 7 10 K") == ids[:first + 1]


def test_dialogue_prompts_extend_each_other(toy):
    """The prompt of attempt k+1 = prompt k + answer ids + EOS + feedback + <sep>."""
    messages = _dialogue()
    first = tk.encode_prompt(toy, messages[:1])
    answer = tk.encode_answer(toy, messages[1]["content"])
    second = tk.encode_prompt(toy, messages[:3])
    assert second[:len(first) + len(answer)] == first + answer


def test_renderer_and_feedback_words_are_in_vocabulary(toy):
    renderer = CompactRenderer()
    rng = random.Random(0)
    unk = toy.unk_token_id
    for rule in (Rule.ID, Rule.OOD):
        for hand in evaluation_hands(rule, n=20) + deal_hands(rng, rule, 20):
            episode = Episode.start(hand, rule, renderer)
            for answer in ("1 2 : ( 1 + 2", "1 2", "1 7 10 13 : 10 * 7 ) + 13 - 1 / 1"):
                if not episode.done:
                    episode = episode.record(answer)
            assert unk not in tk.encode_prompt(toy, episode.messages()), episode.messages()


def test_answer_round_trip_and_decoding(toy):
    text = "1 7 10 13 : ( 10 - 7 ) * 8"
    ids = tk.encode_answer(toy, text)
    assert ids[-1] == toy.eos_token_id and toy.unk_token_id not in ids
    assert tk.decode_response(toy, ids + [5, 6, 7]) == text       # cut at the first EOS
    assert tk.decode_response(toy, ids[:-1]) == text              # truncated answers decode too
    assert tk.decode_responses(toy, [ids, ids[:3]]) == [text, "1 7 10"]
    assert tk.truncate_at_eos([4, 2, 5], [2]) == [4, 2]


def test_eos_and_pad_ids(toy):
    class Cfg:
        eos_token_ids = (7, 2)
        pad_token_id = None

    assert tk.eos_ids(toy) == (2,)
    assert tk.eos_ids(toy, Cfg()) == (2, 7)
    assert tk.pad_id(toy, Cfg()) == 0


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        tk.load_tokenizer(tmp_path)
