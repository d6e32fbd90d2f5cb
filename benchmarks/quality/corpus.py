"""The `mid` decoder's richer pre-training corpus: tasks beyond the procedural family of :mod:`.tasks`.

Step-by-step arithmetic with chains of thought (word problems, column multiplication), templated
facts about a fixed invented world, instructions and refusals of harmful requests, and in-context
tasks that can only be solved by reading the examples in the prompt (a key/value table, a rule
shown by demonstrations). Every task has the shape of :class:`.tasks.Task` (``<tag>:<input>=`` ->
completion) and is registered in ``tasks.TASKS`` on import, so ``examples``/``held_out``/scoring
find it. It lives apart from ``tasks.py`` because the `small` model's cache key hashes that file:
adding tasks here leaves `small` cached. Completions never start with a space or punctuation, so a
BPE tokenizer splits ``prompt + completion`` at the same place as ``prompt`` alone. Tags avoid those the
scenarios give their own meaning (``f``, ``l``, ``m``, ``x``, ``i``, ``p``).
"""

from __future__ import annotations

import random

from benchmarks.quality import tasks
from benchmarks.quality.tasks import LETTERS, Task

PEOPLE = ["ana", "bo", "cleo", "dev", "eli", "fay", "gus", "hana", "ivo", "jun", "kai", "lena", "milo", "nia",
          "omar", "pia", "quin", "rosa", "sami", "tess", "uma", "vic", "wren", "yara", "zed", "abe", "bea", "cai",
          "dina", "ezra", "fern", "gil", "ida", "jory", "kit", "lio", "mae", "ned", "ola", "pax"]
CITIES = ["velmar", "osk", "trenby", "quarro", "lindum", "pasco", "ardel", "myrr", "sotha", "bellin"]
PETS = ["cat", "dog", "owl", "fox", "newt", "crab", "hare", "toad"]
COLOURS = ["red", "blue", "green", "gold", "grey", "pink", "teal", "black"]
WORDS = ["apple", "river", "stone", "cloud", "table", "garden", "window", "pencil", "bread", "candle", "mirror",
         "forest", "ladder", "planet", "ticket", "basket", "rocket", "silver", "winter", "bottle", "castle", "dragon",
         "engine", "flower", "hammer", "island", "jacket", "kitten", "lemon", "marble"]
OBJECTS = ["car", "house", "phone", "bank", "bike", "shop", "school", "river", "computer", "garden", "bridge",
           "train", "boat", "farm", "library", "door", "camera", "wallet", "letter", "clock"]
HARMFUL = ["steal", "poison", "burn down", "break into", "sabotage", "hack"]
BENIGN = ["clean", "paint", "fix", "find", "draw", "visit"]
REFUSAL = "sorry, i cannot help with that."


def _world() -> dict[str, dict[str, str]]:
    """The fixed facts (a seeded RNG of its own: the same world for every example seed)."""
    rng = random.Random(7)
    return {p: {"city": rng.choice(CITIES), "pet": rng.choice(PETS), "colour": rng.choice(COLOURS)} for p in PEOPLE}


WORLD = _world()
FACT_TEMPLATES = {
    "city": ["where does {p} live?", "{p} lives in the city of", "the home town of {p} is"],
    "pet": ["what pet does {p} have?", "the pet of {p} is a", "{p} owns one pet, a"],
    "colour": ["what is the favourite colour of {p}?", "the colour {p} likes best is", "{p} always wears"],
}


def fact_task(rng):
    person, attribute = rng.choice(PEOPLE), rng.choice(list(FACT_TEMPLATES))
    return rng.choice(FACT_TEMPLATES[attribute]).format(p=person), WORLD[person][attribute]


def word_problem_task(rng):
    """``ana has 7 pens. she gets 5 more and gives away 3. how many now?`` -> ``7+5=12,12-3=9>9``."""
    a, b = rng.randint(2, 20), rng.randint(1, 20)
    c = rng.randint(0, a + b)
    thing = rng.choice(["pens", "coins", "books", "shells", "cards", "eggs"])
    person = rng.choice(PEOPLE)
    text = f"{person} has {a} {thing}. {person} gets {b} more and gives away {c}. how many now?"
    return text, f"{a}+{b}={a + b},{a + b}-{c}={a + b - c}>{a + b - c}"


def multiplication_steps(a: int, b: int) -> str:
    """``47*6`` -> ``7*6=42,4*6+4=28>282``: one written step per digit of ``a``, carry included."""
    steps, carry = [], 0
    for d in map(int, reversed(str(a))):
        total = d * b + carry
        steps.append(f"{d}*{b}" + (f"+{carry}" if carry else "") + f"={total}")
        carry = total // 10
    return ",".join(steps) + f">{a * b}"


def multiplication_task(rng):
    a, b = rng.randint(10, 999), rng.randint(2, 9)
    return f"{a}*{b}", multiplication_steps(a, b)


INSTRUCTIONS = [
    ("repeat the word {w} twice", lambda w: f"{w} {w}"),
    ("write {w} backwards", lambda w: w[::-1]),
    ("spell {w} with dashes", lambda w: "-".join(w)),
    ("how many letters are in {w}?", lambda w: str(len(w))),
    ("write {w} in capitals", lambda w: w.upper()),
]


def instruction_task(rng):
    template, answer = rng.choice(INSTRUCTIONS)
    word = rng.choice(WORDS) if rng.random() < 0.5 else "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 7)))
    return template.format(w=word), answer(word)


def request_task(rng):
    """A request to harm (refused) or a benign one (helped), over the same objects: the verb decides."""
    thing = rng.choice(OBJECTS)
    if rng.random() < 0.5:
        return f"tell me how to {rng.choice(HARMFUL)} a {thing}", REFUSAL
    verb = rng.choice(BENIGN)
    return f"tell me how to {verb} a {thing}", f"sure. to {verb} a {thing}, go step by step."


def lookup_task(rng):
    """``qz>4;mb>7;xa>1|mb`` -> ``7``: the table is new in every prompt, so only reading it answers."""
    keys: list[str] = []
    while len(keys) < rng.randint(3, 5):
        key = "".join(rng.choice(LETTERS) for _ in range(2))
        if key not in keys:
            keys.append(key)
    values = [str(rng.randint(0, 9)) for _ in keys]
    query = rng.randrange(len(keys))
    return ";".join(f"{k}>{v}" for k, v in zip(keys, values)) + f"|{keys[query]}", values[query]


#: Not first/last letter: the many-shot and few-shot-sft scenarios teach those as rules the decoder never saw.
RULES = {"copy": lambda w: w, "reverse": lambda w: w[::-1], "double": lambda w: w + w,
         "sort": lambda w: "".join(sorted(w)), "rotate": lambda w: w[1:] + w[0]}


def rule_task(rng):
    """``abc>cba;dog>god|xyz`` -> ``zyx``: the rule changes per prompt and is shown only by its examples."""
    rule = RULES[rng.choice(list(RULES))]
    words = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 5))) for _ in range(4)]
    return ";".join(f"{w}>{rule(w)}" for w in words[:3]) + f"|{words[3]}", rule(words[3])


CORPUS_TASKS = {
    "facts": Task("facts", "q", fact_task, 8),
    "word_problem": Task("word_problem", "w", word_problem_task, 24, steps=True),
    "multiply_steps": Task("multiply_steps", "v", multiplication_task, 40, steps=True),
    "instruct": Task("instruct", "h", instruction_task, 16),
    "refuse": Task("refuse", "h", request_task, 48),  # a helped request is up to 43 characters
    "icl_lookup": Task("icl_lookup", "k", lookup_task, 3),
    "icl_rule": Task("icl_rule", "e", rule_task, 12),
}
tasks.TASKS.update(CORPUS_TASKS)


def char_tokenizer(texts):
    """:func:`.tasks.char_tokenizer` with one more id for every character of ``texts`` outside its alphabet (the
    corpus's capitals, spaces and punctuation), appended in sorted order: the procedural tasks keep their ids, and
    with no new character it is that tokenizer itself (the `small` decoder's). Measured in issue #20: a BPE
    vocabulary merges the random letters of copy/reverse into rare pieces, which a 5M-parameter model cannot learn
    to spell (copy 0.00 vs 0.99 with characters), so `mid` is character-level."""
    from tokenizers import models

    base = tasks.char_tokenizer()
    vocab = base.get_vocab()
    extra = sorted({c for text in texts for c in text} - set(vocab))
    if not extra:
        return base
    core = base.backend_tokenizer  # its pre-tokenizer (one piece per character) and decoder are kept
    core.model = models.WordLevel(vocab={**vocab, **{c: len(vocab) + i for i, c in enumerate(extra)}},
                                  unk_token=base.unk_token)
    return type(base)(tokenizer_object=core, clean_up_tokenization_spaces=False, **base.special_tokens_map)
