"""Instruction following, IFEval's way: prompts with verifiable instructions and deterministic checkers.

The prompts are rows in IFEval's format (`key`, `prompt`, `instruction_id_list`, `kwargs`;
google-research/google-research `instruction_following_eval`, Zhou et al. 2023, Apache-2.0). The
default set, deployment/eval_data/instructions.jsonl, is this project's own (written by
tests/deployment/eval_sets.py); IFEval's own `input_data.jsonl` loads as well. The checkers are written
here from IFEval's published definitions, with no downloaded data: words are `\\w+` runs and
sentences are split by a regular expression (IFEval uses NLTK's punkt, which downloads its model),
and the two checks that need a language detector (`language:response_language`, and the English
test inside the case checks) are left out: prompts that need the former are skipped, and said so.

Scores: each instruction is followed or not (IFEval's strict mode). Prompt-level accuracy: the share
of prompts whose every instruction was followed; instruction-level: the share of all instructions.
The gate's per-prompt value is the share of that prompt's instructions followed.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from common.cli import UserError

CHECKERS_REVISION = "1"
"""Bump when a checker's verdict can change."""
DEFAULT_FILE = Path(__file__).resolve().parent / "eval_data" / "instructions.jsonl"
MAX_TOKENS = 512
"""Room for every reply the default prompts ask for (at most a few hundred words)."""

_WORD = re.compile(r"\w+")
_SENTENCE = re.compile(r"[^.!?\n]*\w[^.!?\n]*(?:[.!?]+|\n|$)")
_ABBREVIATIONS = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof|St|etc|e\.g|i\.e|vs|No)\.", flags=re.IGNORECASE)
CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def count_sentences(text: str) -> int:
    """Runs of text ending in . ! ? or a line break (abbreviations such as "Dr." do not end one)."""
    return len(_SENTENCE.findall(_ABBREVIATIONS.sub(lambda m: m.group(0)[:-1], text)))


def _compare(count: int, relation: str, threshold: int) -> bool:
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise ValueError(f"relation must be 'less than' or 'at least', got {relation!r}")


def _paragraphs_by_divider(text: str) -> int | None:
    """Paragraphs separated by `***`; None when an inner one is empty (IFEval counts that as not followed)."""
    parts = re.split(r"\s?\*\*\*\s?", text)
    count = len(parts)
    for index, part in enumerate(parts):
        if not part.strip():
            if index in (0, len(parts) - 1):
                count -= 1
            else:
                return None
    return count


def _nth_paragraph_first_word(text: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    parts = re.split(r"\n\n", text)
    kept = [p for p in parts if p.strip()]
    if len(kept) != num_paragraphs or nth_paragraph > len(parts) or not parts[nth_paragraph - 1].strip():
        return False
    word = parts[nth_paragraph - 1].strip().split()[0].lstrip("'\"")
    return re.split(r"[.,?!'\"]", word)[0].lower() == first_word.lower()


def _highlights(text: str) -> int:
    single = [h for h in re.findall(r"\*[^\n*]*\*", text) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n*]*\*\*", text) if h[2:-2].strip()]
    return len(single) + len(double)


def _json(text: str) -> bool:
    body = text.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        body = body.removeprefix(fence)
    try:
        json.loads(body.removesuffix("```").strip())
    except ValueError:
        return False
    return True


def _two_responses(text: str) -> bool:
    parts = text.split("******")
    kept = []
    for index, part in enumerate(parts):
        if part.strip():
            kept.append(part.strip())
        elif index not in (0, len(parts) - 1):
            return False
    return len(kept) == 2 and kept[0] != kept[1]


def _postscript(text: str, marker: str) -> bool:
    pattern = {"P.P.S": r"\s*p\.\s?p\.\s?s.*$", "P.S.": r"\s*p\.\s?s\..*$"}.get(marker, r"\s*" + re.escape(marker.lower()) + r".*$")
    return bool(re.findall(pattern, text.lower(), flags=re.MULTILINE))


def _capital_words(text: str) -> int:
    return sum(1 for word in re.findall(r"[^\W_][\w'-]*", text) if word.isupper())


CHECKERS: dict[str, Callable[..., bool]] = {
    "punctuation:no_comma": lambda r: "," not in r,
    "change_case:english_lowercase": lambda r: r.islower(),
    "change_case:english_capital": lambda r: r.isupper(),
    "change_case:capital_word_frequency": lambda r, capital_frequency, capital_relation:
        _compare(_capital_words(r), capital_relation, capital_frequency),
    "length_constraints:number_words": lambda r, num_words, relation: _compare(count_words(r), relation, num_words),
    "length_constraints:number_sentences": lambda r, num_sentences, relation:
        _compare(count_sentences(r), relation, num_sentences),
    "length_constraints:number_paragraphs": lambda r, num_paragraphs: _paragraphs_by_divider(r) == num_paragraphs,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "detectable_format:number_bullet_lists": lambda r, num_bullets:
        len(re.findall(r"^\s*\*[^*].*$", r, flags=re.M)) + len(re.findall(r"^\s*-.*$", r, flags=re.M)) == num_bullets,
    "detectable_format:title": lambda r: any(t.strip("<>").strip() for t in re.findall(r"<<[^\n]+>>", r)),
    "detectable_format:json_format": _json,
    "detectable_format:number_highlighted_sections": lambda r, num_highlights: _highlights(r) >= num_highlights,
    "detectable_format:multiple_sections": lambda r, section_spliter, num_sections:
        len(re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", r)) - 1 >= num_sections,
    "detectable_format:constrained_response": lambda r: any(option in r.strip() for option in CONSTRAINED_OPTIONS),
    "detectable_content:postscript": lambda r, postscript_marker: _postscript(r, postscript_marker),
    "detectable_content:number_placeholders": lambda r, num_placeholders:
        len(re.findall(r"\[.*?\]", r)) >= num_placeholders,
    "keywords:existence": lambda r, keywords:
        all(re.search(re.escape(k), r, flags=re.IGNORECASE) for k in keywords),
    "keywords:forbidden_words": lambda r, forbidden_words:
        not any(re.search(r"\b" + re.escape(w) + r"\b", r, flags=re.IGNORECASE) for w in forbidden_words),
    "keywords:frequency": lambda r, keyword, frequency, relation:
        _compare(len(re.findall(re.escape(keyword), r, flags=re.IGNORECASE)), relation, frequency),
    "keywords:letter_frequency": lambda r, letter, let_frequency, let_relation:
        _compare(Counter(r.lower())[letter.lower()], let_relation, let_frequency),
    "startend:end_checker": lambda r, end_phrase: r.strip().strip('"').lower().endswith(end_phrase.strip().lower()),
    "startend:quotation": lambda r: len(r.strip()) > 1 and r.strip()[0] == '"' and r.strip()[-1] == '"',
    "combination:repeat_prompt": lambda r, prompt_to_repeat:
        r.strip().lower().startswith(prompt_to_repeat.strip().lower()),
    "combination:two_responses": _two_responses,
}
"""IFEval's instruction ids, each with a checker of (reply, **kwargs)."""


@dataclass(frozen=True)
class InstructionPrompt:
    key: str
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]

    def followed(self, reply: str) -> list[bool]:
        """For each instruction, whether `reply` follows it."""
        return [bool(CHECKERS[name](reply, **args)) for name, args in zip(self.instruction_ids, self.kwargs)]

    def as_row(self) -> dict[str, Any]:
        return {"key": self.key, "prompt": self.prompt, "instruction_id_list": list(self.instruction_ids),
                "kwargs": list(self.kwargs)}


def _prompt(row: Any, where: str) -> InstructionPrompt | None:
    """One IFEval row; None when it needs a checker this module does not have."""
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise UserError(f"{where}: each row needs a non-empty `prompt` (IFEval's format)")
    ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
    if not isinstance(ids, list) or not ids or not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise UserError(f"{where}: `instruction_id_list` and `kwargs` must be lists of the same, non-zero length")
    if any(name not in CHECKERS for name in ids):
        return None
    cleaned = tuple({k: v for k, v in (args or {}).items() if v is not None} for args in kwargs)
    return InstructionPrompt(str(row.get("key", where)), row["prompt"], tuple(ids), cleaned)


def load_prompts(path: Path | None = None, limit: int | None = None) -> tuple[tuple[InstructionPrompt, ...], int]:
    """The first `limit` checkable prompts of an IFEval-format JSONL file, and how many were skipped."""
    path = Path(path) if path is not None else DEFAULT_FILE
    if not path.is_file():
        raise UserError(f"no instruction prompts file {path}: pass --instructions-file with IFEval-format JSONL")
    from common.files import jsonl_rows

    picked: list[InstructionPrompt] = []
    skipped = 0
    for number, row in jsonl_rows(path, "one IFEval prompt row"):
        prompt = _prompt(row, f"{path}, line {number}")
        if prompt is None:
            skipped += 1
        else:
            picked.append(prompt)
        if limit is not None and len(picked) == limit:
            break
    if not picked:
        raise UserError(f"{path} holds no prompt whose instructions this project can check")
    return tuple(picked), skipped


def accuracy(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """IFEval's numbers over scored rows (each with `instructions` and `followed`): prompt level, instruction level, per type."""
    per_type: dict[str, list[int]] = {}
    for row in rows:
        for name, ok in zip(row["instructions"], row["followed"]):
            per_type.setdefault(name, [0, 0])
            per_type[name][0] += int(ok)
            per_type[name][1] += 1
    total = sum(len(row["followed"]) for row in rows)
    return {
        "prompt_level": sum(all(row["followed"]) for row in rows) / len(rows) if rows else float("nan"),
        "instruction_level": sum(sum(row["followed"]) for row in rows) / total if total else float("nan"),
        "per_type": {name: {"followed": ok, "total": n, "accuracy": ok / n} for name, (ok, n) in sorted(per_type.items())},
    }
