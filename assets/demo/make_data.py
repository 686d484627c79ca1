"""Writes the demo preference data in this folder (train.jsonl, eval.jsonl). Deterministic.

A help desk answers customers from two regions ("north", "south"). The preferred ("chosen")
replies to northern customers follow one polite house style; the preferred replies to southern
customers are correct but written every which way. DPO on this data makes the model fluent in
the replies it gives one group and not the other: the mean log-probability of a good reply —
how readily the model produces it — drifts apart between the groups. The fairness penalty
(--fairness-score logp) holds that gap closed.

Run: python3 assets/demo/make_data.py
"""

import json
import random
from pathlib import Path

QUESTIONS = [
    ("my order is late", "your order ships today"),
    ("I was charged twice", "the extra charge is refunded"),
    ("the app will not open", "please update the app"),
    ("I forgot my password", "use the reset link we sent"),
    ("my parcel is damaged", "a replacement is on its way"),
    ("can I change my address", "your address is updated"),
    ("the discount did not apply", "the discount is now applied"),
    ("I want to cancel", "your plan is cancelled"),
]
NAMES = {"north": ["Aino", "Lars", "Freya", "Olaf"], "south": ["Lucia", "Marco", "Sofia", "Paolo"]}
OPENERS = ["ok so", "right,", "well", "sure thing:", "hmm,", "alright -", "yes!", "look,", "oh!", "so yeah",
           "heya,", "no problem:", "gotcha -", "okie", "mate,", "aha", "good news:", "right so", "yep,", "sorted:"]
CLOSERS = ["cheers", "bye now", "all good?", "done.", "that is it", "no worries", "talk soon", "ta", "x", "ciao!",
           "enjoy", "laters", "easy", ":)", "peace", "sorted", "take care", "np", "bye bye", "woo"]
# Informal rewordings of the answers' words, applied at random: the same facts, many spellings.
SLANG = {"your": ["ur", "yr", "your"], "order": ["order", "parcel", "stuff"], "today": ["today", "2day", "tdy"],
         "is": ["is", "'s", "be"], "the": ["the", "da", "teh", "that"], "please": ["pls", "plz", "please"],
         "update": ["update", "upd8", "refresh"], "refunded": ["refunded", "sent back", "returned"],
         "use": ["use", "hit", "click"], "reset": ["reset", "rst"], "link": ["link", "lnk", "url"],
         "on": ["on", "en"], "its": ["its", "it's"], "way": ["way", "wey"], "now": ["now", "rn", "nw"],
         "applied": ["applied", "on", "in"], "plan": ["plan", "sub", "thing"], "cancelled": ["cancelled", "canceled", "gone"],
         "address": ["address", "addr", "place"], "updated": ["updated", "changed", "fixed"], "discount": ["discount", "deal", "promo"]}
RUDE = ["not my problem.", "read the manual.", "try again later.", "we cannot help.", "ask someone else."]


def chosen_reply(region, answer, rng):
    if region == "north":
        return f" Thank you for writing. {answer.capitalize()}. Have a nice day."
    words = [rng.choice(SLANG.get(word, [word])) for word in answer.split()]
    return f" {rng.choice(OPENERS)} {' '.join(words)} {rng.choice(CLOSERS)}"


def rows(count, rng):
    out = []
    for i in range(count):
        region = "north" if i % 2 == 0 else "south"
        question, answer = rng.choice(QUESTIONS)
        name = rng.choice(NAMES[region])
        out.append({
            "prompt": f"Customer {name} ({region}): {question}.\nAgent:",
            "chosen": chosen_reply(region, answer, rng),
            "rejected": " " + rng.choice(RUDE),
            "group": region,
        })
    return out


def main():
    rng = random.Random(2026)
    here = Path(__file__).parent
    for name, count in [("train.jsonl", 320), ("eval.jsonl", 64)]:
        with open(here / name, "w") as f:
            for row in rows(count, rng):
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
