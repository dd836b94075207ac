#!/usr/bin/env python3
"""An independent threading computation for the ingest corpus tests, written against Python's
own email parser rather than mail-parser.

Reads file paths (one per line) on stdin, in delivery order, all for one inbox, and prints a
JSON list with one conversation label per file.

The rule (DESIGN.md, "Threading inbound mail"): a message joins the conversation of the first
Message-ID it names that the inbox has seen — In-Reply-To first, then References newest first,
then its own Message-ID (named earlier by a reply that arrived first) — else it starts one;
afterwards every id it names belongs to its conversation unless already claimed. Subjects are
never used.
"""
import email
import email.policy
import json
import re
import sys

ID = re.compile(r"<([^<>\s]+)>")


def ids(value):
    if value is None:
        return []
    value = str(value)
    found = [i.strip() for i in ID.findall(value)]
    if not found:
        bare = value.strip().strip("<>").strip()
        found = [bare] if bare and not any(c.isspace() for c in bare) else []
    out = []
    for i in found:
        if i and len(i) <= 998 and i not in out:
            out.append(i)
    return out


def main():
    paths = [l.rstrip("\n") for l in sys.stdin if l.strip()]
    seen = {}
    labels = []
    next_label = 0
    for p in paths:
        with open(p, "rb") as f:
            msg = email.message_from_bytes(f.read(), policy=email.policy.compat32)
        own = ids(msg.get("Message-ID"))[:1]
        irt = ids(msg.get("In-Reply-To"))
        refs = ids(msg.get("References"))[-200:]
        order = irt + list(reversed(refs)) + own
        label = next((seen[i] for i in order if i in seen), None)
        if label is None:
            label = next_label
            next_label += 1
        for i in own + irt + refs:
            seen.setdefault(i, label)
        labels.append(label)
    json.dump(labels, sys.stdout)


if __name__ == "__main__":
    main()
