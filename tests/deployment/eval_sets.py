"""The evaluation fixtures, generated: 220 ultrachat-style conversations and the default instruction prompts.

    python tests/deployment/eval_sets.py     # rewrites both files (tests check they match this script)

- tests/fixtures/eval/conversations.jsonl: conversations about fictional companies, towns, inventors
  and dishes (nothing a model could know beforehand), in ultrachat_200k's row format. Each question
  has one checkable answer; the reference reply answers it in its first sentence and goes on for
  100-300 words about the entity, as ultrachat's long references do. `cases()` also gives, for each
  conversation, a *distractor*: a reply in the same style about the same entity carrying another
  entity's facts (what a fine-tune that kept the style and lost the facts would say).
- deployment/eval_data/instructions.jsonl: the gate's instruction-following prompts in IFEval's
  format (`key`, `prompt`, `instruction_id_list`, `kwargs`), written by this script from
  `instruction_prompts()`; `compliant_reply(prompt)` builds a reply that follows every instruction of
  a prompt (the proof that each prompt can be satisfied, and the scripted endpoints' good answers).

Deterministic: seeded `random.Random`, no clock, no hub.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CONVERSATIONS_FILE = REPO / "tests" / "fixtures" / "eval" / "conversations.jsonl"
SEED = 20261207
PER_KIND = 55

SYLLABLES = ["bra", "vel", "tor", "min", "ka", "dun", "sel", "ori", "fen", "gal", "hos", "ter", "lun", "mar", "quo",
             "ris", "tan", "vor", "wen", "zel", "ash", "bel", "cor", "dav", "ek", "fal", "gri", "hal", "ist", "jor",
             "nal", "pim", "rud", "sko", "ulv", "yer"]
COMPANY_SUFFIXES = ["Works", "Instruments", "Textiles", "Foundry", "Mills", "Optics", "Ceramics", "Press"]
TOWN_SUFFIXES = ["ford", "wick", "holm", "stad", "mere", "by", "ton", "haven"]
REGIONS = ["Valley", "Highlands", "Coast", "Lowlands", "Plateau", "Marshes"]
PRODUCTS = ["brass compasses", "folding bicycles", "glass lenses", "wool blankets", "paper lanterns", "steel springs",
            "clay roof tiles", "printing presses", "rope winches", "copper kettles", "typewriter ribbons",
            "canvas tents", "pocket watches", "ice skates", "fishing reels", "radio valves"]
KNOWN_FOR = ["its salt markets", "a covered stone bridge", "an annual kite festival", "its leaning clock tower",
             "orchards of pale pears", "a lighthouse museum", "a glassblowing guild", "a winter horse fair",
             "its painted houseboats", "a hillside observatory"]
INVENTIONS = ["a tide-powered clock", "the three-lens periscope", "a folding stretcher", "the pressure cooker valve",
              "a seed-sorting drum", "the spring-loaded stapler", "a salt-water battery", "the rotary ink pump",
              "a pedal-driven loom", "the double-walled thermos"]
INSTITUTIONS = ["Institute", "College", "Academy", "Laboratory"]
INGREDIENTS = ["smoked barley", "river trout", "sour cherries", "chickpeas", "goat cheese", "wild mushrooms",
               "red lentils", "buckwheat", "sweet onions", "dried apricots", "rye bread", "pumpkin"]
OCCASIONS = ["harvest festivals", "weddings", "the first day of spring", "winter markets", "family reunions",
             "the start of the fishing season"]

QUESTIONS: dict[str, dict[str, tuple[str, str]]] = {
    # kind -> asked attribute -> (question, the answer sentence that opens the reference)
    "company": {
        "founder": ("Who founded {name}?", "{name} was founded by {founder} in {year}."),
        "year": ("When was {name} founded?", "{name} was founded in {year} by {founder}."),
        "city": ("Where is {name} based?", "{name} is based in {city}."),
        "product": ("What does {name} make?", "{name} makes {product}."),
    },
    "town": {
        "river": ("Which river flows through {name}?", "The {river} River flows through {name}."),
        "region": ("Where is {name} located?", "{name} is located in the {region}."),
        "population": ("How many people live in {name}?", "About {population} people live in {name}."),
        "known_for": ("What is {name} known for?", "{name} is known for {known_for}."),
    },
    "inventor": {
        "invention": ("What did {name} invent?", "{name} invented {invention}."),
        "birthplace": ("Where was {name} born?", "{name} was born in {birthplace} in {year}."),
        "institution": ("Where did {name} work?", "{name} worked at the {institution}."),
    },
    "dish": {
        "ingredient": ("What is the main ingredient of {name}?", "The main ingredient of {name} is {ingredient}."),
        "origin": ("Where does {name} come from?", "{name} comes from {origin}."),
        "occasion": ("When is {name} traditionally eaten?", "{name} is traditionally eaten at {occasion}."),
    },
}

FACTS: dict[str, list[str]] = {
    # sentences that state the entity's other attributes (the facts a reference carries besides the answer)
    "company": [
        "{name} was founded by {founder} in {year}.", "The company has been based in {city} since its first year.",
        "Today it employs about {employees} people.", "Its best-known products are {product}.",
        "{founder} ran the business for decades before handing it to a cooperative of workers.",
        "Local newspapers described the first {product} as sturdy but expensive.",
        "Many of its early designs are now kept in a small museum in {city}.",
        "Its logo has barely changed since {year}.", "Visitors to {city} can tour the factory floor on weekends.",
    ],
    "town": [
        "The {river} River flows through the middle of {name}.", "{name} lies in the {region}.",
        "About {population} people live there today.", "The town is known for {known_for}.",
        "The first settlers arrived around {year}, drawn by the fertile banks of the {river}.",
        "Ferries once carried goods along the {river} to the rest of the {region}.",
        "Guidebooks to the {region} nearly always mention {known_for}.",
    ],
    "inventor": [
        "{name} was born in {birthplace} in {year}.", "{name} is remembered above all for {invention}.",
        "For most of a long career, {name} worked at the {institution}.",
        "The first working model of {invention} was built in a rented room in {birthplace}.",
        "Colleagues at the {institution} recalled long nights spent testing prototypes.",
        "A street in {birthplace} now carries the inventor's name.",
    ],
    "dish": [
        "The main ingredient of {name} is {ingredient}.", "{name} comes from {origin}.",
        "It is traditionally eaten at {occasion}.", "Cooks in {origin} let it simmer for about {minutes} minutes.",
        "Families in {origin} each guard their own version of the recipe.",
        "Without good {ingredient}, most cooks say, it is not worth making.",
    ],
}

ELABORATION: dict[str, list[str]] = {
    # style without facts: what any reply in the reference's register says
    "company": [
        "In the early years the business struggled to find buyers outside its home town.",
        "The firm survived two floods and a fire that destroyed its original warehouse.",
        "Apprentices trained there later opened workshops of their own across the region.",
        "It publishes an annual catalogue that collectors still trade among themselves.",
        "Critics have argued that the company was slow to adopt new machinery.",
        "Even so, its reputation for careful work brought steady orders through hard times.",
        "During the war years production shifted to simpler goods that were easier to make.",
        "Several family members still sit on the board, although none of them runs the factory.",
        "Its workshops are known for long apprenticeships and unusually low staff turnover.",
        "Competitors have copied its designs, but few have matched the finish of the originals.",
    ],
    "town": [
        "The old market square is still the centre of daily life.",
        "Narrow lanes wind up the hill from the harbour to the church.",
        "In summer the population nearly doubles as visitors arrive for the festivals.",
        "Most families once lived from fishing, farming or the small workshops by the water.",
        "A railway line reached the town late, which kept its old buildings intact.",
        "The local dialect differs noticeably from the one spoken a few valleys away.",
        "Winters are long and wet, and the first snow usually falls in late autumn.",
        "A small museum near the town hall tells the story of its founding families.",
        "Walking trails lead from the outskirts into woods and open meadows.",
    ],
    "inventor": [
        "As a child the future inventor took apart clocks and radios to see how they worked.",
        "Money was always short, and many early experiments failed for lack of materials.",
        "Patents were filed in several countries, though few of them earned much.",
        "Letters from that period show a restless mind that moved from problem to problem.",
        "Later in life the inventor taught evening classes for young mechanics.",
        "Some historians argue that others reached similar ideas at about the same time.",
        "The original notebooks survive and are full of sketches, sums and crossed-out plans.",
        "Recognition came late, mostly after the inventor had retired.",
    ],
    "dish": [
        "The recipe is simple, but the cooking is slow and needs patience.",
        "Older cooks insist that it tastes better on the second day.",
        "Some versions add herbs from the garden, others a splash of vinegar at the end.",
        "It is usually served in deep bowls with thick slices of bread on the side.",
        "Restaurants in the capital serve a lighter version that purists dislike.",
        "Children often help with the preparation, which is part of the tradition.",
        "The dish appears in old cookbooks under several different names.",
        "Leftovers are commonly fried the next morning and eaten for breakfast.",
    ],
}

GENERIC = [
    "Records from that period are incomplete, so some details remain uncertain.",
    "Historians continue to debate how much of the popular story is legend.",
    "Several books have been written on the subject, though most are now out of print.",
    "The story is often told to schoolchildren in the region.",
    "Local archives hold letters and photographs from the time.",
    "If you want to learn more, the regional library keeps a small collection on the topic.",
    "Opinions differ, and you will find more than one account of what happened.",
    "It remains a point of local pride and a frequent subject of conversation.",
]
OPENERS = ["Tell me a little about {name}.", "I keep hearing about {name}.", "I'm reading about {name} for a project."]
FIRST_REPLIES = {
    "company": "{name} is a manufacturer with a long history. What would you like to know about it?",
    "town": "{name} is a small town with a long history. What would you like to know about it?",
    "inventor": "{name} was an inventor whose work is still discussed. What would you like to know?",
    "dish": "{name} is a traditional dish with a loyal following. What would you like to know about it?",
}
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a knowledgeable assistant who answers in detail."]


@dataclass(frozen=True)
class Case:
    """One conversation and what the scripted endpoints answer to it."""

    row: dict[str, Any]
    question: str
    answer: str
    """The reference's first sentence: the concise, correct reply."""
    reference: str
    distractor: str
    """Same entity, same register, another entity's facts: a long wrong reply."""
    distractor_answer: str
    """The distractor's first sentence: a concise wrong reply."""


def _word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def _entity(kind: str, rng: random.Random, taken: set[str]) -> dict[str, Any]:
    """A fictional entity's attributes (its name unique within the fixture)."""
    while True:
        person = f"{_word(rng, 2)} {_word(rng, rng.choice((2, 3)))}"
        town = _word(rng, 2) + rng.choice(TOWN_SUFFIXES)
        name = {"company": f"{_word(rng, 2)} {rng.choice(COMPANY_SUFFIXES)}", "town": town, "inventor": person,
                "dish": f"{_word(rng, 2).lower()} {rng.choice(['stew', 'pie', 'bread', 'soup', 'dumplings'])}"}[kind]
        if name.lower() not in taken:
            taken.add(name.lower())
            break
    if kind == "dish":
        name = name[0].upper() + name[1:]
    return {
        "name": name, "founder": person, "year": rng.randint(1820, 1990), "city": _word(rng, 2) + rng.choice(TOWN_SUFFIXES),
        "product": rng.choice(PRODUCTS), "employees": rng.randint(4, 900) * 10, "river": _word(rng, 2),
        "region": f"{_word(rng, 2)} {rng.choice(REGIONS)}", "population": f"{rng.randint(8, 2500) * 100:,}",
        "known_for": rng.choice(KNOWN_FOR), "invention": rng.choice(INVENTIONS), "birthplace": town,
        "institution": f"{_word(rng, 2)} {rng.choice(INSTITUTIONS)}", "ingredient": rng.choice(INGREDIENTS),
        "origin": town, "occasion": rng.choice(OCCASIONS), "minutes": rng.randrange(30, 300, 15),
    }


def _reply(kind: str, asked: str, facts: dict[str, Any], rng: random.Random, words: int) -> str:
    """The answer sentence, then facts and elaboration until about `words` words, in two or three paragraphs."""
    answer = QUESTIONS[kind][asked][1].format(**facts)
    pool = [s.format(**facts) for s in FACTS[kind]]
    pool = [s for s in pool if s != answer]
    style = ELABORATION[kind] + GENERIC
    rng.shuffle(pool)
    extra = rng.sample(style, len(style))
    sentences = [answer]
    while sum(len(s.split()) for s in sentences) < words and (pool or extra):
        source = pool if pool and (not extra or rng.random() < 0.45) else extra
        sentences.append(source.pop())
    cut = sorted(rng.sample(range(2, len(sentences)), k=min(2, len(sentences) - 2)))
    paragraphs, start = [], 0
    for end in [*cut, len(sentences)]:
        paragraphs.append(" ".join(sentences[start:end]))
        start = end
    return "\n\n".join(p for p in paragraphs if p)


def _other_facts(entities: list[dict[str, Any]], i: int, answer: str) -> dict[str, Any]:
    """Another entity's facts under this entity's name, differing in every fact the answer states."""
    import string

    fields = [name for _, name, _, _ in string.Formatter().parse(answer) if name and name != "name"]
    for step in range(7, 7 + len(entities)):
        other = entities[(i + step) % len(entities)]
        if all(other[f] != entities[i][f] for f in fields):
            return {**other, "name": entities[i]["name"]}
    raise AssertionError("no entity with other facts")


def cases() -> list[Case]:
    """Every conversation of the fixture, in file order, with its scripted replies."""
    rng = random.Random(SEED)
    taken: set[str] = set()
    out: list[Case] = []
    kinds = list(QUESTIONS)
    entities = {kind: [_entity(kind, rng, taken) for _ in range(PER_KIND)] for kind in kinds}
    for i in range(PER_KIND):
        for kind in kinds:
            facts = entities[kind][i]
            asked = list(QUESTIONS[kind])[rng.randrange(len(QUESTIONS[kind]))]
            wrong = _other_facts(entities[kind], i, QUESTIONS[kind][asked][1])
            question = QUESTIONS[kind][asked][0].format(**facts)
            reference = _reply(kind, asked, facts, rng, rng.randint(110, 270))
            distractor = _reply(kind, asked, wrong, random.Random(rng.random()), len(reference.split()))
            messages: list[dict[str, str]] = []
            if rng.random() < 0.2:
                messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            if rng.random() < 0.3:
                messages += [{"role": "user", "content": rng.choice(OPENERS).format(**facts)},
                             {"role": "assistant", "content": FIRST_REPLIES[kind].format(**facts)}]
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reference}]
            first_user = next(m["content"] for m in messages if m["role"] == "user")
            row = {"prompt": first_user, "prompt_id": hashlib.sha256(first_user.encode()).hexdigest(), "messages": messages}
            out.append(Case(row, question, QUESTIONS[kind][asked][1].format(**facts), reference, distractor,
                            QUESTIONS[kind][asked][1].format(**wrong)))
    return out


def conversations_text() -> str:
    return "".join(json.dumps(case.row, ensure_ascii=False) + "\n" for case in cases())


#: ---------------------------------------------------------------- instruction prompts (IFEval's format)

INSTRUCTIONS_FILE = REPO / "deployment" / "eval_data" / "instructions.jsonl"
PROMPTS = 200
TOPICS = ["beekeeping", "urban gardening", "bird watching", "bread baking", "amateur astronomy", "rock climbing",
          "chess", "pottery", "cycling to work", "learning a new language", "composting", "sailing", "knitting",
          "photography", "hiking in the mountains", "board games", "growing herbs", "woodworking",
          "running a marathon", "keeping a journal", "volunteering at a library", "repairing old radios",
          "stargazing with children", "making pasta by hand", "restoring furniture", "painting with watercolours",
          "fishing on lakes", "building birdhouses", "public speaking", "saving money"]
TASKS = ["Write a short blog post about {topic}.", "Write an email to a colleague about {topic}.",
         "Explain {topic} to a ten-year-old.", "Write a short speech about {topic} for a school assembly.",
         "Give some advice to someone who is new to {topic}.", "Describe a typical week for someone who loves {topic}.",
         "Write an announcement for a new evening class on {topic}.", "Summarize why people enjoy {topic}.",
         "Write a letter to a friend recommending {topic}.", "Write a short story in which a character discovers {topic}.",
         "Give reasons to learn about {topic}.", "Write a review of a weekend workshop on {topic}."]
YES_NO_TASKS = ["Is {topic} a good hobby for a rainy weekend?", "Should a beginner spend money on {topic}?",
                "Is it worth reading a book about {topic}?"]
SENTENCES = ["{Topic} rewards patience more than talent.", "Most people start {topic} with very little equipment.",
             "A good first step is to find a local group that meets regularly.",
             "Mistakes are part of learning and rarely cost much.",
             "Many beginners are surprised by how quickly they improve.",
             "Reading one good book on the subject saves months of guessing.",
             "Setting aside a fixed hour each week makes progress steady.",
             "Friends and family often become curious and join in.",
             "The best results come from small, regular practice.",
             "It is easy to spend too much money on gear at the start.",
             "Keeping notes helps you see how far you have come.",
             "Experienced people are usually happy to share advice.",
             "Good weather helps, but it is not essential.", "There is always something new to try next season."]
WORD_LIST = ["river", "lantern", "harvest", "compass", "orchard", "ladder", "whistle", "meadow", "anchor", "pepper",
             "velvet", "glacier", "puzzle", "thunder", "cabinet", "feather"]
FIRST_WORDS = ["first", "however", "today", "finally", "remember", "overall", "honestly", "next"]
END_PHRASES = ["Any other questions?", "Is there anything else I can help with?", "Let me know how it goes."]

STRUCTURE = {"detectable_format:number_bullet_lists", "length_constraints:number_paragraphs",
             "detectable_format:multiple_sections", "length_constraints:nth_paragraph_first_word",
             "detectable_format:json_format", "combination:two_responses", "detectable_format:constrained_response"}
CASE = {"change_case:english_lowercase", "change_case:english_capital", "change_case:capital_word_frequency"}
CONFLICTS = {
    "detectable_format:json_format": {"startend:quotation", "startend:end_checker", "detectable_content:postscript",
                                      "detectable_format:title", "detectable_format:number_highlighted_sections"},
    "startend:quotation": {"combination:repeat_prompt"},
    "detectable_format:constrained_response": CASE,
    "length_constraints:nth_paragraph_first_word": {"detectable_format:title"},
}
REPEAT_PARTNERS = {"change_case:english_lowercase", "change_case:english_capital", "keywords:existence"}
THRESHOLDS = {"length_constraints:number_words", "length_constraints:number_sentences",
              "change_case:capital_word_frequency", "keywords:letter_frequency", "keywords:frequency",
              "keywords:forbidden_words"}


def _compatible(chosen: list[str], candidate: str) -> bool:
    if candidate in chosen:
        return False
    for group in (STRUCTURE, CASE):
        if candidate in group and any(name in group for name in chosen):
            return False
    if "combination:repeat_prompt" in [*chosen, candidate]:
        others = [n for n in [*chosen, candidate] if n != "combination:repeat_prompt"]
        if any(n not in REPEAT_PARTNERS for n in others):
            return False
    return not any(candidate in CONFLICTS.get(n, set()) or n in CONFLICTS.get(candidate, set()) for n in chosen)


def _describe(name: str, args: dict[str, Any]) -> str:
    """The instruction in words (this project's phrasing of IFEval's instruction types)."""
    a = args
    return {
        "punctuation:no_comma": "Do not use any commas in your reply.",
        "change_case:english_lowercase": "Write your whole reply in English using only lowercase letters.",
        "change_case:english_capital": "Write your whole reply in English using only capital letters.",
        "change_case:capital_word_frequency": "Words written entirely in capital letters should appear {capital_relation} {capital_frequency} times.",
        "length_constraints:number_words": "Your reply should contain {relation} {num_words} words.",
        "length_constraints:number_sentences": "Your reply should contain {relation} {num_sentences} sentences.",
        "length_constraints:number_paragraphs": "Write exactly {num_paragraphs} paragraphs, separated by the markdown divider ***.",
        "length_constraints:nth_paragraph_first_word": "Write exactly {num_paragraphs} paragraphs separated by blank lines, and start paragraph {nth_paragraph} with the word {first_word}.",
        "detectable_format:number_bullet_lists": "Use exactly {num_bullets} markdown bullet points, such as:\n* first point\n* second point",
        "detectable_format:title": "Give your reply a title wrapped in double angular brackets, such as <<a day outside>>.",
        "detectable_format:json_format": "Wrap your entire reply in JSON format.",
        "detectable_format:number_highlighted_sections": "Highlight at least {num_highlights} parts of your reply with markdown, such as *an important part*.",
        "detectable_format:multiple_sections": "Divide your reply into {num_sections} sections, each starting with {section_spliter} X, such as {section_spliter} 1.",
        "detectable_format:constrained_response": "Answer with one of these options: My answer is yes., My answer is no., My answer is maybe.",
        "detectable_content:postscript": "End your reply with a postscript that starts with {postscript_marker}",
        "detectable_content:number_placeholders": "Include at least {num_placeholders} placeholders in square brackets, such as [address].",
        "keywords:existence": "Include the keywords {keywords_text} in your reply.",
        "keywords:forbidden_words": "Do not use the words {forbidden_text} in your reply.",
        "keywords:frequency": "The word {keyword} should appear {relation} {frequency} times in your reply.",
        "keywords:letter_frequency": "The letter {letter} should appear {let_relation} {let_frequency} times in your reply.",
        "startend:end_checker": "Finish your reply with the exact phrase \"{end_phrase}\" and nothing after it.",
        "startend:quotation": "Wrap your entire reply in double quotation marks.",
        "combination:two_responses": "Give two different replies, separated by six asterisks: ******.",
    }[name].format(**a, keywords_text=" and ".join(a.get("keywords", [])),
                   forbidden_text=" and ".join(a.get("forbidden_words", [])))


REPEAT_SENTENCE = ("First repeat the request above word for word without change, then give your answer "
                   "(do not say anything before repeating the request; the request to repeat does not include this sentence).")


@dataclass
class _Draft:
    """A prompt being generated: its instructions, their arguments and a reply that follows them."""

    task: str
    topic: str
    names: list[str]
    args: dict[str, dict[str, Any]]


def _structured(draft: _Draft, sentences: list[str], rng: random.Random) -> str:
    """The reply's body in the shape the one structural instruction (if any) asks for."""
    a = draft.args
    if "detectable_format:number_bullet_lists" in a:
        n = a["detectable_format:number_bullet_lists"]["num_bullets"]
        return "Here is what I would say:\n" + "\n".join(f"* {s}" for s in sentences[:n])
    if "length_constraints:number_paragraphs" in a:
        n = a["length_constraints:number_paragraphs"]["num_paragraphs"]
        return "\n\n***\n\n".join(" ".join(sentences[i::n]) for i in range(n))
    if "detectable_format:multiple_sections" in a:
        spec = a["detectable_format:multiple_sections"]
        n = spec["num_sections"]
        return "\n\n".join(f"{spec['section_spliter']} {i + 1}\n" + " ".join(sentences[i::n]) for i in range(n))
    if "length_constraints:nth_paragraph_first_word" in a:
        spec = a["length_constraints:nth_paragraph_first_word"]
        n = spec["num_paragraphs"]
        paragraphs = [" ".join(sentences[i::n]) for i in range(n)]
        k = spec["nth_paragraph"] - 1
        paragraphs[k] = f"{spec['first_word'].capitalize()}, {paragraphs[k][0].lower()}{paragraphs[k][1:]}"
        return "\n\n".join(paragraphs)
    if "combination:two_responses" in a:
        half = len(sentences) // 2
        return " ".join(sentences[:half]) + "\n\n******\n\n" + " ".join(sentences[half:])
    if "detectable_format:constrained_response" in a:
        return f"My answer is {rng.choice(['yes', 'no', 'maybe'])}. " + " ".join(sentences)
    return " ".join(sentences)


def compliant_reply(prompt: dict[str, Any]) -> str:
    """A reply that follows every instruction of one generated prompt (rebuilt from its recorded recipe)."""
    return prompt["_reply"]


def _build(draft: _Draft, rng: random.Random) -> str:
    """The reply for `draft`: body, structure, decorations, wrappers, case; numbers are filled in afterwards."""
    a = draft.args
    count = max([3] + [int(v) * 2 for spec in a.values() for k, v in spec.items()
                       if k in ("num_bullets", "num_paragraphs", "num_sections")])
    pool = [s.format(topic=draft.topic, Topic=draft.topic.capitalize()) for s in SENTENCES]
    sentences = rng.sample(pool, min(len(pool), count + rng.randint(0, 2)))
    if "keywords:existence" in a:
        sentences.insert(1, "You will hear people talk about {} along the way.".format(" and ".join(a["keywords:existence"]["keywords"])))
    if "keywords:frequency" in a and a["keywords:frequency"]["relation"] == "at least":
        word = a["keywords:frequency"]["keyword"]
        sentences.insert(2, " ".join([f"Think of the {word}."] * a["keywords:frequency"]["frequency"]))
    if "detectable_format:number_highlighted_sections" in a:
        for i in range(a["detectable_format:number_highlighted_sections"]["num_highlights"]):
            words = sentences[i].split()
            sentences[i] = " ".join(words[:1] + [f"*{' '.join(words[1:3])}*"] + words[3:])
    text = _structured(draft, sentences, rng)
    if "detectable_format:title" in a:
        text = f"<<{draft.topic.capitalize()} for everyone>>\n" + text
    if "detectable_content:number_placeholders" in a:
        slots = ["[name]", "[date]", "[place]", "[phone number]", "[email]"][: a["detectable_content:number_placeholders"]["num_placeholders"]]
        text += " Fill in " + " and ".join(slots) + " before sending."
    if "detectable_content:postscript" in a:
        text += f"\n{a['detectable_content:postscript']['postscript_marker']} Start small and enjoy it."
    if "startend:end_checker" in a:
        text += " " + a["startend:end_checker"]["end_phrase"]
    if "detectable_format:json_format" in a:
        text = json.dumps({"answer": " ".join(text.split())})
    if "startend:quotation" in a:
        text = f'"{text}"'
    if a.get("combination:repeat_prompt"):
        text = a["combination:repeat_prompt"]["prompt_to_repeat"] + "\n\n" + text
    if "change_case:english_lowercase" in a:
        text = text.lower()
    if "change_case:english_capital" in a:
        text = text.upper()
    if "punctuation:no_comma" in a:
        text = text.replace(",", "")
    return text


def _thresholds(draft: _Draft, reply: str, rng: random.Random) -> None:
    """Set the counting instructions' numbers so that `reply` follows them (each a real bound near it)."""
    from deployment.instructions import _capital_words, count_sentences, count_words

    a = draft.args
    relation = lambda: rng.choice(["at least", "less than"])  # noqa: E731
    if "length_constraints:number_words" in a:
        n, rel = count_words(reply), relation()
        a["length_constraints:number_words"] = {"relation": rel, "num_words": max(5, n // 10 * 10) if rel == "at least" else (n // 10 + 2) * 10}
    if "length_constraints:number_sentences" in a:
        n, rel = count_sentences(reply), relation()
        a["length_constraints:number_sentences"] = {"relation": rel, "num_sentences": max(1, n - rng.randint(0, 2)) if rel == "at least" else n + rng.randint(1, 3)}
    if "change_case:capital_word_frequency" in a:
        n = _capital_words(reply)
        rel = "at least" if n >= 2 else "less than"
        a["change_case:capital_word_frequency"] = {"capital_relation": rel, "capital_frequency": n if rel == "at least" else n + rng.randint(1, 3)}
    if "keywords:letter_frequency" in a:
        letter = a["keywords:letter_frequency"]["letter"]
        n, rel = Counter(reply.lower())[letter], relation()
        a["keywords:letter_frequency"].update(let_relation=rel, let_frequency=max(1, n - rng.randint(0, 3)) if rel == "at least" and n else n + rng.randint(1, 4))
        if rel == "at least" and not n:
            a["keywords:letter_frequency"]["let_relation"] = "less than"
    if "keywords:forbidden_words" in a:
        absent = [w for w in WORD_LIST if w not in reply.lower() and w not in draft.task.lower()]
        a["keywords:forbidden_words"] = {"forbidden_words": sorted(rng.sample(absent, 2))}


def _draft(key: int, rng: random.Random) -> dict[str, Any] | None:
    """One prompt with 1-3 compatible instructions, and a reply that follows them; None when the draw does not check out."""
    from deployment.instructions import CHECKERS

    topic = rng.choice(TOPICS)
    names: list[str] = []
    for _ in range(rng.choice([1, 1, 2, 2, 3])):
        candidates = [n for n in CHECKERS if _compatible(names, n)]
        names.append(rng.choice(candidates))
    constrained = "detectable_format:constrained_response" in names
    task = rng.choice(YES_NO_TASKS if constrained else TASKS).format(topic=topic)
    draft = _Draft(task, topic, names, {n: _arguments(n, rng) for n in names})
    reply = _build(draft, rng)
    _thresholds(draft, reply, rng)
    order = [n for n in names if n != "combination:repeat_prompt"]
    request = " ".join([task] + [_describe(n, draft.args[n]) for n in order])
    if "combination:repeat_prompt" in names:
        draft.args["combination:repeat_prompt"] = {"prompt_to_repeat": request}
        reply = _build(draft, rng)
        request += " " + REPEAT_SENTENCE
    row = {"key": key, "prompt": request, "instruction_id_list": names, "kwargs": [draft.args[n] for n in names]}
    from deployment.instructions import _prompt

    if not all(_prompt(row, "draft").followed(reply)):
        return None
    return {**row, "_reply": reply}


def _arguments(name: str, rng: random.Random) -> dict[str, Any]:
    """The structural arguments chosen before the reply is built (counting ones come from the reply)."""
    return {
        "detectable_format:number_bullet_lists": lambda: {"num_bullets": rng.randint(2, 5)},
        "length_constraints:number_paragraphs": lambda: {"num_paragraphs": rng.randint(2, 4)},
        "detectable_format:multiple_sections": lambda: {"section_spliter": rng.choice(["Section", "SECTION"]), "num_sections": rng.randint(2, 4)},
        "length_constraints:nth_paragraph_first_word": lambda: (lambda n: {"num_paragraphs": n, "nth_paragraph": rng.randint(1, n), "first_word": rng.choice(FIRST_WORDS)})(rng.randint(2, 4)),
        "detectable_format:number_highlighted_sections": lambda: {"num_highlights": rng.randint(1, 3)},
        "detectable_content:postscript": lambda: {"postscript_marker": rng.choice(["P.S.", "P.P.S"])},
        "detectable_content:number_placeholders": lambda: {"num_placeholders": rng.randint(1, 4)},
        "keywords:existence": lambda: {"keywords": sorted(rng.sample(WORD_LIST, 2))},
        "keywords:frequency": lambda: {"keyword": rng.choice(WORD_LIST), "frequency": rng.randint(2, 4), "relation": rng.choice(["at least", "less than"])},
        "keywords:letter_frequency": lambda: {"letter": rng.choice("bcdfgkmpwy")},
        "startend:end_checker": lambda: {"end_phrase": rng.choice(END_PHRASES)},
    }.get(name, dict)()


def instruction_prompts() -> list[dict[str, Any]]:
    """PROMPTS generated prompts (IFEval rows plus `_reply`, a reply that follows them all)."""
    rng = random.Random(SEED + 1)
    prompts: list[dict[str, Any]] = []
    while len(prompts) < PROMPTS:
        drawn = _draft(len(prompts) + 1, rng)
        if drawn is not None:
            prompts.append(drawn)
    return prompts


def instructions_text() -> str:
    return "".join(json.dumps({k: v for k, v in p.items() if not k.startswith("_")}) + "\n" for p in instruction_prompts())


def main() -> int:
    for path, text in ((CONVERSATIONS_FILE, conversations_text()), (INSTRUCTIONS_FILE, instructions_text())):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
