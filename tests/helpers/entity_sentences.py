"""Templated entity sentences for the real-checkpoint token classification test.

Every sentence is a template filled with person, city and company names.
Training and held-out sentences share no template and no name, so tagging
the held-out ones needs what the pretrained encoder knows about words (that
"tokyo" is a place), not memorised positions or names.
"""

import numpy as np

PEOPLE = {
    "train": ["john smith", "mary", "david", "sarah johnson", "michael", "emma", "james brown",
              "olivia", "robert", "linda garcia"],
    "held_out": ["william", "jennifer lee", "thomas", "jessica", "daniel martin", "susan"],
}
CITIES = {
    "train": ["london", "paris", "new york", "tokyo", "berlin", "madrid", "chicago", "sydney",
              "rome", "toronto"],
    "held_out": ["boston", "moscow", "los angeles", "dublin", "seoul", "vienna"],
}
COMPANIES = {
    "train": ["google", "microsoft", "apple", "amazon", "intel", "toyota", "nike", "samsung"],
    "held_out": ["ibm", "netflix", "oracle", "facebook", "adobe", "sony"],
}
TEMPLATES = {
    "train": [
        "{PER} lives in {LOC} .",
        "{PER} works for {ORG} in {LOC} .",
        "yesterday {PER} flew to {LOC} .",
        "{ORG} hired {PER} last year .",
        "the new {ORG} store in {LOC} is open .",
        "i met {PER} at the airport .",
        "{PER} and {PER} moved to {LOC} .",
        "shares of {ORG} fell today .",
    ],
    "held_out": [
        "{PER} was born in {LOC} .",
        "we visited {LOC} with {PER} .",
        "{ORG} announced a deal with {ORG} .",
        "a spokesperson for {ORG} said {PER} will speak in {LOC} .",
    ],
}
_POOLS = {"PER": PEOPLE, "LOC": CITIES, "ORG": COMPANIES}


def sentences(split, count, seed=0):
    """`count` (words, tags) pairs from the `"train"` or `"held_out"` split."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        template = TEMPLATES[split][rng.integers(len(TEMPLATES[split]))]
        words, tags = [], []
        for slot in template.split():
            if slot.startswith("{"):
                kind = slot[1:-1]
                names = _POOLS[kind][split]
                name = names[rng.integers(len(names))].split()
                words += name
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
            else:
                words.append(slot)
                tags.append("O")
        pairs.append((words, tags))
    return pairs
