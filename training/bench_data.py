"""The benchmarks' synthetic chat data: ultrachat-shaped rows of a chosen length, from the sample corpus.

Shared by the training benchmark (training/bench.py) and the other speeds (training/bench_other.py).
"""
from __future__ import annotations

import json
from pathlib import Path


def synthetic_words() -> list[str]:
    """The vocabulary of the synthetic rows: the ASCII words of the bundled sample corpus."""
    from training.sample_data import corpus_text

    return sorted({w for text in corpus_text() for w in text.split() if w.isascii()})


def synthetic_rows(n: int, mean_words: float, seed: int = 0):
    """Ultrachat-shaped rows (prompt, prompt_id, messages) of `mean_words` words of message text on average.

    The one generator of the benchmarks (training rows of a given token length, `training.data`
    at full scale). Lengths follow a gamma distribution (shape 4: most conversations near the
    mean, a long tail, capped at 6x the mean), turns alternate user/assistant with longer
    assistant replies, as in ultrachat_200k. Every prompt_id is distinct.
    """
    import random

    from training.sample_data import prompt_id

    rng = random.Random(seed)
    words = synthetic_words()
    for i in range(n):
        budget = max(8, int(min(rng.gammavariate(4.0, mean_words / 4.0), 6 * mean_words)))
        turns = rng.choice((1, 2, 2, 3, 3, 4))
        messages = []
        for _ in range(turns):
            share = max(4, budget // turns)
            user = max(1, share // 5)
            messages.append({"role": "user", "content": " ".join(rng.choices(words, k=user)) + "?"})
            messages.append({"role": "assistant", "content": " ".join(rng.choices(words, k=share - user)) + "."})
        prompt = messages[0]["content"]
        yield {"prompt": prompt, "prompt_id": prompt_id(f"{i}:{prompt}"), "messages": messages}


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
