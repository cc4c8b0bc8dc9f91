"""The embedded toy: a ~0.8M-parameter Llama-architecture model on a word-level vocabulary, and
the GeneralPoints variant it is pre-trained and fine-tuned on.

Design (after ../shared/TOY-NOTES.md, "design R"): the deck has 16 ranks — A, 2..10, *number
cards* 11, 12, 13 (same value under every rule) and J, Q, K whose values the prompt states.
Every OOD value multiset then also occurs under the ID rule (through the number cards), so
what SFT on the ID rule can damage is *reading the rule*, not memorized arithmetic. The base is
pre-trained on a mix of the ID rule and random face-card rules (never the exact OOD rule
J=11, Q=12, K=13), so it has real OOD skill to lose.
"""

from __future__ import annotations

import random
from pathlib import Path

import jax

from rotax.io.hf import export_hf_checkpoint
from rotax.io.tokenizer import pad_id
from rotax.models.config import ModelConfig
from rotax.models.decoder import init_params
from rotax.sft.data import tokenizer_encoder
from rotax.tasks.points import Deal, sft_example
from rotax.tasks.points.cards import EXTENDED_NUMBER_RANKS, STANDARD_RANKS, FaceRule, Rule
from rotax.tasks.points.sft_source import GeneralPointsSource

#: A, 2..10, 11, 12, 13 (number cards), J, Q, K.
TOY_RANKS = STANDARD_RANKS[:10] + EXTENDED_NUMBER_RANKS + STANDARD_RANKS[10:]
#: Cards are written with a prefix so the card "10" and the value 10 are different tokens.
CARD_PREFIX = "c"


def toy_hf_config(vocab_size: int, *, hidden: int = 128, layers: int = 4, heads: int = 4,
                  intermediate: int = 352, eos_token_id: int, bos_token_id: int,
                  pad_token_id: int) -> dict:
    """An HF ``LlamaForCausalLM`` config dict for the toy decoder (untied, default RoPE)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
        "head_dim": hidden // heads, "hidden_act": "silu", "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
        "dtype": "float32",
    }


def write_toy_base(out_dir: str | Path, tokenizer, key: jax.Array, **model_kwargs) -> Path:
    """Writes a randomly initialised toy model + ``tokenizer`` as an HF directory (the starting
    point of base pre-training). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    hf = toy_hf_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                       **model_kwargs)
    cfg = ModelConfig.from_hf_dict(hf)
    export_hf_checkpoint(cfg, init_params(cfg, key), out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def random_face_rule(rng: random.Random) -> FaceRule:
    """A face-card rule with J, Q, K each uniform in 1..13, never the exact OOD rule."""
    while True:
        rule = FaceRule(rng.randint(1, 13), rng.randint(1, 13), rng.randint(1, 13))
        if rule != Rule.OOD.value:
            return rule


def pretraining_rule(rng: random.Random, id_share: float = 0.5) -> FaceRule:
    """The base's rule mix: the ID rule with probability ``id_share``, else a random rule."""
    return Rule.ID.value if rng.random() < id_share else random_face_rule(rng)


class PoolSource(GeneralPointsSource):
    """:class:`GeneralPointsSource` drawing its ``(hand, rule)`` pairs from a fixed ``pool``."""

    def __init__(self, pool, encode, **kwargs):
        super().__init__(encode, **kwargs)
        self.pool = list(pool)

    def example(self, seed: int, step: int, row: int):
        rng = random.Random(f"rotax/{self.stream}/{seed}/{step}/{row}")
        hand, rule = self.pool[rng.randrange(len(self.pool))]
        prompt, answer = sft_example(hand, rule, self.renderer, rng, self.solution_choice)
        return self.encode(prompt, answer)


def hand_pool_source(pool, tokenizer, renderer, *, batch_size: int, bucket: int, max_length: int,
                     solution_choice: str = "random", stream: str = "sft"):
    """A ``(seed, step) -> Batch`` source over a fixed pool of ``(hand, rule)`` pairs — the
    finite SFT set the study over-fits on. Row ``r`` of batch ``step`` is a pure function of
    ``(seed, step, r)``."""
    return PoolSource(pool, tokenizer_encoder(tokenizer), batch_size=batch_size,
                      pad_id=pad_id(tokenizer), renderer=renderer, solution_choice=solution_choice,
                      bucket=bucket, max_length=max_length, stream=stream)


def pretraining_source(tokenizer, renderer, *, batch_size: int, bucket: int, max_length: int,
                       id_share: float = 0.5, solution_choice: str = "sorted", stream: str = "pretrain"):
    """Fresh hands from the toy deck under the base's rule mix (:func:`pretraining_rule`), each
    with one deterministic solution (``sorted``: the canonical solution of the sorted values, a
    function of the scratchpad): one target per value multiset is far easier for a 0.8M model
    than a uniform choice among all solutions (measured after 600 steps, ID / OOD: random
    10% / 6%, hand-order canonical 18% / 6%, sorted 49% / 19%)."""
    return GeneralPointsSource(tokenizer_encoder(tokenizer), batch_size=batch_size,
                               pad_id=pad_id(tokenizer), renderer=renderer,
                               rule_sampler=lambda rng: pretraining_rule(rng, id_share),
                               deal=Deal.UNIFORM, ranks=TOY_RANKS, solution_choice=solution_choice,
                               bucket=bucket, max_length=max_length, stream=stream)
