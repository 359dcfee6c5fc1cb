"""Write support-pairs.jsonl: customer questions paired with the help-centre entry that answers them.

Ours, under the repository's licence. The help centre has near-duplicate entries that differ in one
word which changes the answer (reset vs change a password; freeze vs cancel a card; debit vs credit
card; verify vs change an email address), and customers rarely use the help centre's words ("I
forgot my sign-in passphrase", "pause my checking account card until I find it"). The stock
all-MiniLM-L6-v2 confuses the near-duplicates; the recipe embed/minilm-support.yaml teaches it the
difference. Every question is an action phrasing x an object phrasing; rows carry the entry's
`intent` too, so the same file serves as labelled data (text = anchor, label = intent).
Deterministic: run it again and the file comes out the same.

    python recipes/data/make_support.py
"""

from __future__ import annotations

import json
from pathlib import Path

OBJECTS = {
    "password": ["password", "login password", "sign-in passphrase", "web login secret", "app login"],
    "PIN": ["PIN", "card PIN", "four-digit card code", "ATM code", "cash machine number"],
    "email address": ["email", "e-mail address", "mail address on file", "inbox I signed up with", "contact email"],
    "phone number": ["phone number", "mobile number", "cell number", "number for text codes", "contact phone"],
    "debit card": ["debit card", "bank card", "checking account card", "everyday spending card", "current account card"],
    "credit card": ["credit card", "Visa credit", "card I pay off monthly", "credit line card", "rewards credit card"],
    "subscription": ["subscription", "membership", "monthly plan", "premium plan", "recurring plan"],
    "order": ["order", "purchase", "parcel", "delivery", "package I bought"],
}

ACTIONS = {
    "reset": [
        "I forgot my {o}",
        "can't remember my {o} at all",
        "my {o} slipped my mind and I'm stuck",
        "lost track of my {o}, need a fresh one",
        "{o} forgotten, what now",
    ],
    "change": [
        "I want to update my {o}",
        "swap my {o} for a different one",
        "put a different {o} on my account",
        "edit the {o} I use",
        "my {o} is old, I'd like another of my choosing",
    ],
    "verify": [
        "confirm my {o}",
        "the link to verify my {o} never came",
        "prove that this {o} is mine",
        "my {o} says unconfirmed",
        "how do I validate my {o}",
    ],
    "freeze": [
        "lock my {o} for a little while",
        "pause my {o} until I find it",
        "temporarily block my {o}",
        "put a hold on my {o}",
        "misplaced my {o}, stop it working for now",
    ],
    "cancel": [
        "close my {o} for good",
        "end my {o} permanently",
        "get rid of my {o} forever",
        "terminate my {o}",
        "I never want to use my {o} again",
    ],
    "replace": [
        "my {o} is damaged, send a new one",
        "the chip on my {o} broke",
        "need a new {o}, mine is cracked",
        "{o} snapped in half",
        "get a replacement {o}",
    ],
    "activate": [
        "turn on my new {o}",
        "my {o} just arrived, how do I start using it",
        "switch on the {o} that came in the post",
        "the new {o} doesn't work yet",
        "enable my fresh {o}",
    ],
    "track": [
        "where is my {o}",
        "my {o} hasn't shown up",
        "follow my {o} on its way",
        "when will my {o} arrive",
        "status of my {o}",
    ],
    "return": [
        "send my {o} back",
        "I don't want my {o}, how do I give it back",
        "return the {o} for a refund",
        "{o} was wrong, ship it back",
        "bring back my {o}",
    ],
}

# (action, object) → the help-centre entry: its title, then the answer
ENTRIES = {
    ("reset", "password"): "Reset your password: on the sign-in screen choose 'Trouble signing in' and follow the emailed link.",
    ("change", "password"): "Change your password: while signed in, open Settings > Security > Password and enter the current one first.",
    ("reset", "PIN"): "Reset your PIN: in Cards choose the card, then 'Reset PIN'; a new PIN arrives by post within five days.",
    ("change", "PIN"): "Change your PIN: at any of our cash machines insert the card, enter the current PIN and pick 'New PIN'.",
    ("change", "email address"): "Change your email address: Settings > Profile > Email; we confirm the new address before it is used.",
    ("verify", "email address"): "Verify your email address: open the message we sent and tap 'Confirm'; resend it from Settings > Profile.",
    ("change", "phone number"): "Change your phone number: Settings > Profile > Phone; a code is sent to the old number to approve it.",
    ("verify", "phone number"): "Verify your phone number: enter the six-digit code we text you; tap 'Send again' if it does not arrive.",
    ("freeze", "debit card"): "Freeze your debit card: in Cards tap the debit card and 'Freeze'; unfreeze it the same way at any time.",
    ("cancel", "debit card"): "Cancel your debit card: in Cards tap the debit card, 'Cancel card', and confirm; this cannot be undone.",
    ("replace", "debit card"): "Replace your debit card: in Cards tap the debit card and 'Order replacement'; the old one stops working when the new one is activated.",
    ("activate", "debit card"): "Activate your debit card: make a chip-and-PIN payment or cash withdrawal, or tap 'Activate' in Cards.",
    ("freeze", "credit card"): "Freeze your credit card: in Cards tap the credit card and 'Freeze'; interest still accrues on the balance.",
    ("cancel", "credit card"): "Cancel your credit card: pay off the balance, then call us; the credit line closes after the final statement.",
    ("replace", "credit card"): "Replace your credit card: in Cards tap the credit card and 'Order replacement'; your credit limit carries over.",
    ("activate", "credit card"): "Activate your credit card: call the number on the sticker or tap 'Activate' in Cards, then set up your first statement.",
    ("freeze", "subscription"): "Pause your subscription: Billing > Plan > 'Pause'; nothing is charged while paused, for up to three months.",
    ("cancel", "subscription"): "Cancel your subscription: Billing > Plan > 'Cancel plan'; you keep access until the end of the paid period.",
    ("cancel", "order"): "Cancel an order: Orders > the order > 'Cancel'; possible only until it ships, refunds take three days.",
    ("track", "order"): "Track an order: Orders > the order shows the courier and tracking number once it has shipped.",
    ("return", "order"): "Return an order: Orders > the order > 'Return items' within 30 days; print the label and drop it off.",
}


def rows() -> list[dict]:
    out = []
    for (action, obj), entry in ENTRIES.items():
        intent = f"{action}-{obj.replace(' ', '-').lower()}"
        for template in ACTIONS[action]:
            for phrase in OBJECTS[obj]:
                out.append({"anchor": template.format(o=phrase), "positive": entry, "intent": intent})
    return out


def main() -> None:
    path = Path(__file__).with_name("support-pairs.jsonl")
    with path.open("w", encoding="utf-8") as fh:
        for row in rows():
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows())} rows, {len(ENTRIES)} help-centre entries")


if __name__ == "__main__":
    main()
