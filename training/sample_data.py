"""The bundled offline sample: a few hundred ultrachat_200k-format conversations, generated.

Rows look like `HuggingFaceH4/ultrachat_200k` (`prompt`, `prompt_id`, `messages`). The answers
are facts from small tables, always phrased the same way, so a tiny model learns them in a
short CPU run (the offline demo's eval loss visibly falls and replies end at <|end|>).
Variety still matters for testing the pipeline: some rows carry a system prompt, some are
multi-turn, some use non-ASCII text, some are long lists and some one-word acknowledgements.

Deterministic: the same rows, in the same order, every time (a seeded `random.Random`).
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Iterator

DEFAULT_ROWS = 400
DEFAULT_SEED = 1234

# name, founders, year, headquarters
COMPANIES = [
    ("Microsoft", "Bill Gates and Paul Allen", 1975, "Redmond"),
    ("Apple", "Steve Jobs, Steve Wozniak and Ronald Wayne", 1976, "Cupertino"),
    ("Amazon", "Jeff Bezos", 1994, "Seattle"),
    ("Google", "Larry Page and Sergey Brin", 1998, "Mountain View"),
    ("Intel", "Gordon Moore and Robert Noyce", 1968, "Santa Clara"),
    ("Nintendo", "Fusajiro Yamauchi", 1889, "Kyoto"),
    ("Sony", "Masaru Ibuka and Akio Morita", 1946, "Tokyo"),
    ("IKEA", "Ingvar Kamprad", 1943, "Delft"),
]

# country, capital, language
COUNTRIES = [
    ("France", "Paris", "French"),
    ("Japan", "Tokyo (東京)", "Japanese"),
    ("Brazil", "Brasília", "Portuguese"),
    ("Germany", "Berlin", "German"),
    ("Egypt", "Cairo (القاهرة)", "Arabic"),
    ("Greece", "Athens (Αθήνα)", "Greek"),
    ("Iceland", "Reykjavík", "Icelandic"),
    ("India", "New Delhi (नई दिल्ली)", "Hindi and English"),
    ("Vietnam", "Hanoi (Hà Nội)", "Vietnamese"),
]

# element, symbol, atomic number
ELEMENTS = [
    ("hydrogen", "H", 1), ("helium", "He", 2), ("carbon", "C", 6), ("oxygen", "O", 8),
    ("iron", "Fe", 26), ("gold", "Au", 79),
]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one sentence.",
    "You are a friendly tutor who answers questions about facts.",
    "Tu es un assistant utile. 🙂",
]

FOUNDER_QUESTIONS = [
    "Who founded {name}?",
    "Who were the founders of {name}?",
    "Tell me who started {name}.",
    "Do you know who founded {name}?",
]
YEAR_QUESTIONS = ["When was {name} founded?", "In what year was {name} founded?"]
HQ_QUESTIONS = ["Where is {name} headquartered?", "Where is the headquarters of {name}?"]
CAPITAL_QUESTIONS = ["What is the capital of {country}?", "Which city is the capital of {country}?"]
LANGUAGE_QUESTIONS = ["What language is spoken in {country}?", "Which language do people speak in {country}?"]
ELEMENT_QUESTIONS = ["What is the chemical symbol of {element}?", "What is the symbol for {element}?"]
NUMBER_QUESTIONS = ["What is the atomic number of {element}?"]
THANKS = ["Thanks!", "Thank you.", "Merci beaucoup !", "Great, thanks 👍", "ありがとう"]
THANKS_REPLY = "You are welcome."


def _company_fact(kind: str, company: tuple) -> tuple[str, str]:
    name, founders, year, hq = company
    if kind == "founder":
        return FOUNDER_QUESTIONS, f"{name} was founded by {founders} in {year}."
    if kind == "year":
        return YEAR_QUESTIONS, f"{name} was founded in {year}."
    return HQ_QUESTIONS, f"{name} is headquartered in {hq}."


def _qa(rng: random.Random) -> tuple[str, str]:
    """One templated question and its consistently phrased answer."""
    kind = rng.choice(["founder", "founder", "year", "hq", "capital", "language", "symbol", "number"])
    if kind in ("founder", "year", "hq"):
        company = rng.choice(COMPANIES)
        questions, answer = _company_fact(kind, company)
        return rng.choice(questions).format(name=company[0]), answer
    if kind in ("capital", "language"):
        country, capital, language = rng.choice(COUNTRIES)
        if kind == "capital":
            return rng.choice(CAPITAL_QUESTIONS).format(country=country), f"The capital of {country} is {capital}."
        return rng.choice(LANGUAGE_QUESTIONS).format(country=country), f"In {country} people speak {language}."
    element, symbol, number = rng.choice(ELEMENTS)
    if kind == "symbol":
        return rng.choice(ELEMENT_QUESTIONS).format(element=element), f"The chemical symbol of {element} is {symbol}."
    return rng.choice(NUMBER_QUESTIONS).format(element=element), f"The atomic number of {element} is {number}."


def _long_answer(rng: random.Random) -> tuple[str, str]:
    """A long question/answer: a list of facts about several companies, one line each."""
    picked = rng.sample(COMPANIES, k=rng.randint(4, 8))
    names = ", ".join(c[0] for c in picked)
    lines = [f"- {name} was founded by {founders} in {year}." for name, founders, year, _ in picked]
    return f"List the founders of {names}.", "Here are the founders:\n" + "\n".join(lines)


def _conversation(rng: random.Random) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    shape = rng.random()
    if shape < 0.1:
        question, answer = _long_answer(rng)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return messages
    turns = 1 if shape < 0.65 else rng.randint(2, 3)
    for _ in range(turns):
        question, answer = _qa(rng)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if rng.random() < 0.1:  # a short closing turn
        messages += [{"role": "user", "content": rng.choice(THANKS)}, {"role": "assistant", "content": THANKS_REPLY}]
    return messages


def prompt_id(prompt: str) -> str:
    """ultrachat_200k's prompt_id is the sha256 hex digest of the prompt."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def generate_rows(n: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> Iterator[dict]:
    """Yield `n` ultrachat-format rows, deterministically for a given seed."""
    rng = random.Random(seed)
    # Anchors first: every "Who founded X?" in its plain form (the demo asks these), then random rows.
    anchors = [
        [{"role": "user", "content": FOUNDER_QUESTIONS[0].format(name=c[0])},
         {"role": "assistant", "content": _company_fact("founder", c)[1]}]
        for c in COMPANIES
    ]
    for i in range(n):
        messages = anchors[i] if i < len(anchors) else _conversation(rng)
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        yield {"prompt": prompt, "prompt_id": prompt_id(prompt), "messages": messages}


def write_sample(path: Path, n: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> Path:
    """Write the sample as JSONL (UTF-8, one object per line) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for row in generate_rows(n, seed):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def corpus_text(n: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> Iterator[str]:
    """Every message content of the sample (the tiny model's tokenizer is trained on it)."""
    for row in generate_rows(n, seed):
        for message in row["messages"]:
            yield message["content"]


def main(argv: list[str] | None = None) -> int:
    from common.cli import ArgumentParser

    parser = ArgumentParser(prog="python -m training.sample_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    write_sample(args.out, args.rows, args.seed)
    return 0


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
