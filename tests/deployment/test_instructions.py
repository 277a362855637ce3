"""deployment.instructions: IFEval-style checkers, the prompt file, and the committed fixtures matching their generator."""
from __future__ import annotations

import json

import pytest

import eval_sets
from common.cli import UserError
from deployment import instructions
from deployment.instructions import CHECKERS, InstructionPrompt, load_prompts


def follows(name: str, reply: str, **kwargs) -> bool:
    return InstructionPrompt("t", "p", (name,), (kwargs,)).followed(reply)[0]


CASES = [
    ("punctuation:no_comma", {}, "No commas here.", "One, two."),
    ("change_case:english_lowercase", {}, "all lower case.", "Not all lower."),
    ("change_case:english_capital", {}, "ALL CAPITALS.", "ALL CAPITALS but one."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THIS is VERY loud.", "Only ONE shout."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "Four words are here.", "Now five words are here."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "Now five words are here.", "Too short."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "One. Two! Three?", "Dr. Smith wrote one. And two."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.",
     "First.\n***\n\n***\nThird."),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "next"},
     "Intro.\n\nNext, the point.", "Intro.\n\nThen the point."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one\n* two\n- three"),
    ("detectable_format:title", {}, "<<A title>>\nText.", "<<>> no title."),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "Some *one* and **two**.", "Only *one*."),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nA\nSection 2\nB", "Section 1\nA"),
    ("detectable_format:constrained_response", {}, "My answer is no.", "No."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Text.\nP.S. More.", "Text. PS more."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "To [name] at [address].", "To [name]."),
    ("keywords:existence", {"keywords": ["river", "lantern"]}, "A Lantern by the river.", "A lantern."),
    ("keywords:forbidden_words", {"forbidden_words": ["river"]}, "The riverside.", "The river side."),
    ("keywords:frequency", {"keyword": "tea", "frequency": 2, "relation": "at least"}, "Tea and tea.", "Tea."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}, "A zoo.", "Zig zag."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, '"Done. any other questions?"', "Any other questions? Yes."),
    ("startend:quotation", {}, ' "Quoted." ', '"Half quoted.'),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "Write a poem. Roses...", "Sure! Write a poem."),
    ("combination:two_responses", {}, "One.\n******\nTwo.", "One.\n******\nOne."),
]


@pytest.mark.parametrize(("name", "kwargs", "good", "bad"), CASES)
def test_each_checker_tells_a_following_reply_from_one_that_does_not(name, kwargs, good, bad):
    assert follows(name, good, **kwargs) is True
    assert follows(name, bad, **kwargs) is False


def test_every_checker_is_exercised_above():
    assert {case[0] for case in CASES} == set(CHECKERS)


def test_committed_fixtures_are_what_the_generator_writes():
    assert eval_sets.CONVERSATIONS_FILE.read_text(encoding="utf-8") == eval_sets.conversations_text(), \
        "regenerate with `python tests/deployment/eval_sets.py`"
    assert eval_sets.INSTRUCTIONS_FILE.read_text(encoding="utf-8") == eval_sets.instructions_text(), \
        "regenerate with `python tests/deployment/eval_sets.py`"


def test_default_prompts_are_ifeval_rows_each_satisfiable_and_not_trivially():
    prompts, skipped = load_prompts()
    assert len(prompts) == 200 and skipped == 0
    generated = eval_sets.instruction_prompts()
    types = {name for p in prompts for name in p.instruction_ids}
    assert len(types) >= 20, sorted(types)
    plain = "Here is a short answer to your request, written without any particular format."
    failed_plain = 0
    for prompt, made in zip(prompts, generated):
        assert prompt.prompt == made["prompt"]
        assert all(prompt.followed(eval_sets.compliant_reply(made))), prompt.prompt
        failed_plain += not all(prompt.followed(plain))
    assert failed_plain >= 150, "a reply that ignores the instructions must fail most prompts"
    row = json.loads(instructions.DEFAULT_FILE.read_text(encoding="utf-8").splitlines()[0])
    assert set(row) == {"key", "prompt", "instruction_id_list", "kwargs"}


def test_ifeval_rows_load_and_unknown_types_are_skipped(tmp_path):
    rows = [
        {"key": 1000, "prompt": "Write a haiku.", "instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
         "kwargs": [{}, {"keywords": ["moon"], "num_words": None}]},
        {"key": 1001, "prompt": "Réponds.", "instruction_id_list": ["language:response_language"],
         "kwargs": [{"language": "fr"}]},
    ]
    path = tmp_path / "ifeval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    prompts, skipped = load_prompts(path)
    assert skipped == 1 and [p.key for p in prompts] == ["1000"]
    assert prompts[0].followed("The moon rises") == [True, True]
    path.write_text('{"prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 1: `instruction_id_list` and `kwargs`"):
        load_prompts(path)
    with pytest.raises(UserError, match="no instruction prompts file"):
        load_prompts(tmp_path / "missing.jsonl")


def test_accuracy_is_ifevals_prompt_and_instruction_level_with_a_per_type_breakdown():
    rows = [{"instructions": ["a", "b"], "followed": [True, False]}, {"instructions": ["a"], "followed": [True]}]
    got = instructions.accuracy(rows)
    assert got["prompt_level"] == 0.5 and got["instruction_level"] == pytest.approx(2 / 3)
    assert got["per_type"] == {"a": {"followed": 2, "total": 2, "accuracy": 1.0},
                               "b": {"followed": 0, "total": 1, "accuracy": 0.0}}
