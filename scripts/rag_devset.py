#!/usr/bin/env python3
"""Builds the retrieval development set from man-page sources (troff, .gz or plain).

Two kinds of question, both answerable from one page:

* name:   the NAME line "gzip, gunzip, zcat - compress or expand files" gives
          "Which command would you use to compress or expand files?"  -> gzip (aliases gunzip, zcat)
* option: a .TP/.IP entry "-C, --directory=DIR" / "change to DIR before ..." gives
          "Which option of tar: change to DIR before ...?"          -> --directory (alias -C)

--help/--version entries, descriptions that are too short (< 4 words), that name the answer, or that repeat another
entry's description are skipped. Pages and entries are drawn with a fixed seed, at most
--per-page option questions per page. The page id is "name(section)" from the file name, as
`canon index build` names pages.

Usage:
  python3 scripts/rag_devset.py --man-dir DIR [--n-name 60] [--n-option 60] [--seed 0] > q.jsonl
  # training questions for `canon finetune --method rag`, on pages the development set does not use:
  python3 scripts/rag_devset.py --man-dir DIR --exclude goldens/rag/man-devset.jsonl \
      --n-name 200 --n-option 400 --per-page 4 --seed 1 --id-prefix train- > train.jsonl
"""

import argparse
import gzip
import json
import os
import random
import re
import sys


def read(path):
    raw = open(path, "rb").read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


ESC = [
    (r"\\f\[[A-Z]*\]", ""), (r"\\f[BIRP1-4]", ""), (r"\\f\(\w\w", ""),
    (r"\\-", "-"), (r"\\\(aq", "'"), (r"\\\(dq", '"'), (r"\\\(hy", "-"), (r"\\\(em", "--"),
    (r"\\\(en", "-"), (r"\\\(lq|\\\(rq", '"'), (r"\\e", "\\"), (r"\\&", ""), (r"\\ ", " "),
    (r"\\\|", ""), (r"\\/", ""), (r"\\,", ""), (r"\\%", ""), (r"\\c$", ""),
]


def clean(s):
    for a, b in ESC:
        s = re.sub(a, lambda _m, b=b: b, s)
    s = re.sub(r"\\[\(\[][^\s\]]*\]?", "", s)  # any other special character
    return " ".join(s.split())


def macro_text(line):
    """Text of a font macro line (.B x, .BR a b, .I x ...), else None."""
    m = re.match(r"^\.(B|I|BR|RB|BI|IB|IR|RI|SM|SB)\s+(.*)$", line)
    if not m:
        return None
    args = re.findall(r'"[^"]*"|\S+', m.group(2))
    args = [a.strip('"') for a in args]
    return "".join(args) if len(m.group(1)) == 2 else " ".join(args)


def parse(text):
    """(name line, [(tag, description)]) of a man(7) source; mdoc pages give (None, [])."""
    lines = text.splitlines()
    if any(l.startswith(".Dd") for l in lines[:20]):
        return None, []
    name, entries, section = None, [], None
    i = 0
    while i < len(lines):
        l = lines[i]
        if l.startswith(".SH"):
            section = clean(l[3:].strip().strip('"')).upper()
            if section == "NAME":
                j = i + 1
                buf = []
                while j < len(lines) and not lines[j].startswith(".SH"):
                    t = macro_text(lines[j]) if lines[j].startswith(".") else lines[j]
                    if t:
                        buf.append(clean(t))
                    j += 1
                name = " ".join(buf)
            i += 1
            continue
        if l.startswith(".TP"):
            j = i + 1
            while j < len(lines) and re.match(r"^\.(PD|sp|IX)\b", lines[j]):
                j += 1
            if j >= len(lines):
                break
            tag_src = lines[j]
            tag = macro_text(tag_src) if tag_src.startswith(".") else tag_src
            tag = clean(tag or "")
            j += 1
            desc = []
            while j < len(lines) and not re.match(r"^\.(TP|SH|SS|PP|P|LP|IP|HP|TQ|RS|RE|sp|nf|EX)\b", lines[j]):
                t = macro_text(lines[j]) if lines[j].startswith(".") else lines[j]
                if t:
                    desc.append(clean(t))
                j += 1
            if tag.startswith("-") and desc:
                entries.append((tag, " ".join(desc)))
            i = j
            continue
        i += 1
    return name, entries


def option_names(tag):
    """'-C, --directory=DIR' -> ['-C', '--directory']."""
    out = []
    for part in re.split(r",\s*|\s+", tag):
        m = re.match(r"^(--?[A-Za-z0-9?][\w-]*)", part)
        if m:
            out.append(m.group(1))
    return out


def first_sentence(d):
    d = d.strip()
    m = re.match(r"^(.+?[.;])(\s|$)", d)
    s = m.group(1) if m else d
    return s.rstrip(".;").strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--man-dir", required=True)
    ap.add_argument("--n-name", type=int, default=60)
    ap.add_argument("--n-option", type=int, default=60)
    ap.add_argument("--per-page", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exclude", help="a question file whose pages are left out (a training set "
                    "disjoint by page from a development set)")
    ap.add_argument("--id-prefix", default="", help="prefix of the question ids")
    a = ap.parse_args()
    excluded = set()
    if a.exclude:
        with open(a.exclude) as f:
            excluded = {json.loads(l)["page"] for l in f if l.strip()}
    rng = random.Random(a.seed)
    files = sorted(f for f in os.listdir(a.man_dir) if re.search(r"\.\d\w*(\.gz)?$", f))
    names, options = [], []
    for f in files:
        base = f[:-3] if f.endswith(".gz") else f
        stem, sec = base.rsplit(".", 1)
        page = f"{stem}({sec})"
        if page in excluded:
            continue
        name, entries = parse(read(os.path.join(a.man_dir, f)))
        if name and (" - " in name):
            cmds, desc = name.split(" - ", 1)
            cmds = [c.strip() for c in cmds.split(",") if c.strip()]
            desc = desc.strip().rstrip(".")
            if cmds and len(desc.split()) >= 3 and not any(c.lower() in desc.lower().split() for c in cmds):
                main_cmd = stem if stem in cmds else cmds[0]
                names.append({
                    "question": f"Which command would you use to {desc[0].lower() + desc[1:]}?",
                    "answer": main_cmd,
                    "aliases": [c for c in cmds if c != main_cmd],
                    "page": page, "section": "NAME", "kind": "name",
                })
        seen = set()
        cands = []
        for tag, desc in entries:
            opts = option_names(tag)
            s = first_sentence(desc)
            key = s.lower()
            if not opts or len(s.split()) < 4 or key in seen:
                continue
            seen.add(key)
            if {"--help", "--version", "-h", "-V"} & set(opts):
                continue
            if any(o in s for o in opts) or re.search(r"\b(same as|equivalent to|alias for|synonym)\b", key):
                continue
            longs = [o for o in opts if o.startswith("--")]
            ans = longs[0] if longs else opts[0]
            cands.append({
                "question": f"Which option of {stem}: {s[0].lower() + s[1:]}?",
                "answer": ans,
                "aliases": [o for o in opts if o != ans],
                "page": page, "section": "OPTIONS", "kind": "option",
            })
        dup = {}
        for c in cands:
            dup[c["question"]] = dup.get(c["question"], 0) + 1
        cands = [c for c in cands if dup[c["question"]] == 1]
        rng.shuffle(cands)
        options.extend(cands[: a.per_page])
    rng.shuffle(names)
    rng.shuffle(options)
    out = names[: a.n_name] + options[: a.n_option]
    for i, q in enumerate(out):
        q = {"id": f"{a.id_prefix}{q['kind']}-{i:03d}", **q}
        print(json.dumps(q, ensure_ascii=False))
    print(f"{len(names)} name and {len(options)} option candidates from {len(files)} pages; wrote {len(out)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
