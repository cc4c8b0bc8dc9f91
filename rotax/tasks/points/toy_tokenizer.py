"""The toy study's word-level tokenizer: a ``PreTrainedTokenizerFast`` over card ranks, numbers,
operators, the compact renderer's separators and the words of the verifier's feedback. It saves
and reloads with ``AutoTokenizer`` unchanged, so every generic path (chat prompts, EOS ids,
decoding in :mod:`rotax.io.tokenizer`) treats it like any HF tokenizer."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rotax.tasks.points.cards import EXTENDED_NUMBER_RANKS, STANDARD_RANKS
from rotax.tasks.points.render import CompactRenderer

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", "<sep>")
#: Numbers the toy vocabulary knows: card values 1..13 and the target 24.
TOY_NUMBERS = tuple(str(n) for n in range(1, 14)) + ("24",)
TOY_SYMBOLS = ("A", "J", "Q", "K", "+", "-", "*", "/", "(", ")", "=", "|", ":",
               "[", "]", ",", ".", "'")
#: Words of the feedback turn ("You failed this trial because ...") and the verifier reasons.
FEEDBACK_WORDS = (
    "You", "failed", "this", "trial", "because", "illegal", "characters", "formula", "too",
    "long", "invalid", "sequence", "after", "before", "number", "operator", "unmatched",
    "closing", "parenthesis", "you", "used", "numbers", "many", "times", "didn", "t", "use",
    "your", "does", "not", "match", "any", "solution", "is", "partially", "correct", "but",
    "the", "full", "Correct", "partial",
)
# Word-level chat template: "<bos> U1 <sep> A1 <eos> U2 <sep>" (user turns then the separator as
# generation prompt; assistant turns end with <eos>). Other roles render like user turns.
TOY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<sep> {{ message['content'] }} {{ eos_token }} "
    "{% else %}{{ message['content'] }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<sep>{% endif %}"
)



def toy_vocabulary() -> list[str]:
    """The toy tokenizer's words in id order: specials first (``<pad>`` is id 0), then
    symbols, numbers, feedback words and any further word the compact renderer emits."""
    words = [*SPECIAL_TOKENS, *TOY_SYMBOLS, *TOY_NUMBERS, *FEEDBACK_WORDS]
    words += CompactRenderer().vocabulary(STANDARD_RANKS + EXTENDED_NUMBER_RANKS)
    return list(dict.fromkeys(words))


def build_toy_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` for the toy study (about 80 words).

    Text is split on whitespace and every punctuation character is its own word, so
    ``"you used numbers: [7] too many times."`` tokenizes fully; unknown words map to
    ``<unk>``; decoding joins words with single spaces. Specials: ``<pad>`` (0), ``<bos>``,
    ``<eos>``, ``<unk>``, ``<sep>`` (the generation prompt). The chat template renders
    ``<bos> user <sep> assistant <eos> user <sep>``.
    """
    vocab = {word: i for i, word in enumerate(toy_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                  eos_token="<eos>", unk_token="<unk>",
                                  additional_special_tokens=["<sep>"])
    tok.chat_template = TOY_CHAT_TEMPLATE
    return tok


def is_toy_tokenizer(tok) -> bool:
    """Whether ``tok`` is (a reload of) :func:`build_toy_tokenizer`'s tokenizer."""
    vocab = tok.get_vocab()
    return len(vocab) < 512 and all(word in vocab for word in SPECIAL_TOKENS)
