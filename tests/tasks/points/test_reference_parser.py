"""The reference answer parser vs a port of the study's ``re_match`` (``utils_general.py`` of
xiaodanguoguo/RL_Heals_SFT: ``json.loads`` of the whole text, else ``"formula": "(.*?)"``, else
"None"; the environment then cuts at the first ``=``), and how it differs from rotax's lenient one."""

import json
import re

import pytest

from rotax.tasks.points import JsonChatRenderer
from rotax.tasks.points.parsing import parse_answer, parse_reference_answer
from rotax.tasks.points.sft_source import make_renderer
from rotax.sft.data import default_config


def port_re_match(text):
    try:
        return json.loads(text)["formula"]
    except Exception:
        try:
            return re.search(r'"formula": "(.*?)"', text).group(1)
        except Exception:
            return "None"


def port_formula(text):
    """What reaches the reference's verifier; None where it gets "None" (−3)."""
    value = port_re_match(text)
    return None if value == "None" else value.split("=")[0]


ANSWERS = [
    '{"cards": ["K", "5", "A", "8"], "number": [10, 5, 1, 8], "formula": "(10-5-1)*8=24"}',
    '{"formula":"3*8"}',                                    # JSON: no space needed
    'Here: {"formula": "3*8=24"} done',                     # pattern inside text
    'Here: {"formula":"3*8=24"} done',                      # no space, not whole JSON: None
    "{'formula': '3*8'}",                                   # single quotes: None
    '"formula" : "3*8"',                                    # space before colon: None
    '{"formula": "3*8"',                                    # broken JSON, pattern matches
    '"formula": "1+2"\n"formula": "3*8"',                   # first match
    '["formula", "3*8"]',                                   # JSON list: pattern, none
    'no answer at all',
    '"formula": "a\nb"',                                    # pattern does not cross lines
    '{"formula": "", "x": 1}',
]


@pytest.mark.parametrize("text", ANSWERS)
def test_reference_parser_matches_the_port(text):
    assert parse_reference_answer(text).formula == port_formula(text)


def test_lenient_parser_reads_more_and_configs_pick_the_parser():
    differ = [t for t in ANSWERS if parse_answer(t).formula != port_formula(t)]
    assert len(differ) >= 3  # the lenient parser accepts what the reference does not
    assert parse_reference_answer('{"formula": 24}').formula is None  # the reference crashes here
    data = default_config()
    assert make_renderer(data).extract_formula(ANSWERS[3]) == "3*8"
    data.answer_parser = "reference"
    renderer = make_renderer(data)
    assert isinstance(renderer, JsonChatRenderer) and renderer.extract_formula(ANSWERS[3]) is None
    assert renderer.extract_formula(ANSWERS[2]) == "3*8"
    data.answer_parser = "strict"
    with pytest.raises(ValueError, match="answer parser"):
        make_renderer(data)
    data.answer_parser, data.renderer = "reference", "compact"
    with pytest.raises(ValueError, match="json_chat only"):
        make_renderer(data)
