"""Golden corpus-BLEU values for crates/canon-eval/src/bleu.rs, from sacreBLEU's defaults.

Run: python3 -m venv /tmp/sb && /tmp/sb/bin/pip install sacrebleu==2.6.0
     /tmp/sb/bin/python crates/canon-eval/tests/golden/bleu.py > crates/canon-eval/tests/golden/bleu.json
"""
import json
import random

import sacrebleu
from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

LINES = [
    "Datei nicht gefunden",
    "Die Datei »%s« konnte nicht geöffnet werden: %s",
    "Hello, world. 3.14 and 1,000 items (a/b) x-y 5-6!",
    "Tom&apos;s &amp; \"it's\" &lt;tag&gt; &quot;q&quot;",
    "Fehler: Zeile 12-14, Spalte 3.",
    "   trailing and  inner   spaces   ",
    "a.b,c 1.a a.1 .5 5. ,x x, $100 {x} [y] ~z @w #v ^u",
    "usage: git [--version] [--help] [-C <path>] <command> [<args>]",
    "Über Ärger – “Zitat” — Gedankenstrich…",
]

random.seed(7)
WORDS = "die der das Datei nicht gefunden kann werden ist ein eine Fehler beim Lesen von , . : %s".split()


def sent(n):
    return " ".join(random.choice(WORDS) for _ in range(n))


cases = []
# Hand-made corpora.
cases.append({"name": "identical", "hyps": LINES, "refs": [LINES]})
cases.append({"name": "one_word_off", "hyps": ["Datei nicht gefunden", "Die Datei konnte nicht gelesen werden"],
              "refs": [["Datei nicht gefunden", "Die Datei konnte nicht geöffnet werden"]]})
cases.append({"name": "short_hyp_brevity", "hyps": ["Die Datei", "Fehler beim Lesen"],
              "refs": [["Die Datei wurde nicht gefunden", "Fehler beim Lesen von %s"]]})
cases.append({"name": "no_4gram_match_smoothed", "hyps": ["a b c d e", "x y"],
              "refs": [["a b c x e", "x z"]]})
cases.append({"name": "nothing_matches", "hyps": ["foo bar baz qux"], "refs": [["eins zwei drei vier"]]})
cases.append({"name": "too_short_for_4grams", "hyps": ["a b c"], "refs": [["a b c"]]})
cases.append({"name": "two_references", "hyps": ["the cat is on the mat", "there is a cat here"],
              "refs": [["the cat sat on the mat", "a cat is here"], ["there is a cat on the mat", "there is a cat here now"]]})
cases.append({"name": "punctuation_lines", "hyps": LINES[::-1], "refs": [LINES]})
# Random corpora over a small vocabulary (many partial matches).
for k in range(4):
    n = 30
    refs = [sent(random.randint(2, 14)) for _ in range(n)]
    hyps = []
    for r in refs:
        w = r.split()
        w = [x if random.random() < 0.7 else random.choice(WORDS) for x in w]
        if random.random() < 0.3 and len(w) > 2:
            w = w[:-1]
        hyps.append(" ".join(w))
    cases.append({"name": f"random_{k}", "hyps": hyps, "refs": [refs]})

signature = None
for c in cases:
    metric = BLEU()
    b = metric.corpus_score(c["hyps"], c["refs"])
    if len(c["refs"]) == 1:
        signature = str(metric.get_signature())
    c["score"] = b.score
    c["bp"] = b.bp
    c["sys_len"] = b.sys_len
    c["ref_len"] = b.ref_len
    c["counts"] = list(b.counts)
    c["totals"] = list(b.totals)

tok = Tokenizer13a()
print(json.dumps({
    "generator": "crates/canon-eval/tests/golden/bleu.py",
    "sacrebleu": sacrebleu.__version__,
    "signature": signature,
    "tokenize_13a": [{"line": l, "tokens": tok(l.rstrip()).split()} for l in LINES],
    "cases": cases,
}, ensure_ascii=False, indent=1))
