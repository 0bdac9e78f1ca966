"""Cheap signals of a good answer, read off the text of a conversation: no model, microseconds each.

They describe the last assistant answer against the question it answers and the answers before it: length, how
much of it is new words, whether it ends like a finished text, loops, how much of the question it takes up, whether
it only repeats the question or an earlier answer, and a few patterns of refusal, rudeness, filler and text aimed
at the evaluator. The judge's head weighs them together with the model's own hidden state; none decides alone.
Each is named, so a rationale can say which ones moved a score.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9']+")
STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been being it its this that these
    those i you he she we they me him her us them my your his our their what which who whom whose when where why how
    do does did done have has had not no so than then there here can could will would should may might must shall
    about into over under also just only very more most some any all each other such own same too s t""".split()  # noqa: SIM905
)
# Words an answer ends on only when it was cut off.
DANGLING = frozenset(
    """a an the and or but of to in on at by for with from as is are was were be that which who your my their our
    its this these than if because while when""".split()  # noqa: SIM905
)
REFUSAL = re.compile(
    r"\b(i\s*(?:am|'m)\s*(?:sorry|afraid|unable|not able)|i\s*(?:can(?:no|')t|cannot|won't|will not|must "
    r"decline|(?:would|'d) rather not|don't think i (?:can|should))|unable to (?:help|assist|provide|"
    r"answer|respond)|not (?:able|allowed|permitted|in a position) to|against (?:my|our) (?:policy|guidelines)|"
    r"(?:can't|cannot|won't) (?:help|assist|provide|answer|discuss|share|comply)|as an ai\b|decline to|"
    r"outside (?:of )?(?:what|my|the scope))",
    re.I,
)
HOSTILE = re.compile(
    r"\b(stupid|dumb|idiot\w*|moron\w*|pathetic|embarrassing|clueless|lazy|"
    r"wasting my time|figure it out|look it up|google it|who cares|beneath me|obviously|seriously\?|ugh|"
    r"shut up|get lost|grow up|even a child|a child could|keep up|not my (?:problem|job)|why would i bother|"
    r"can't believe you|should know this|ridiculous|silly question|bother me|annoying)\b",
    re.I,
)
FILLER = re.compile(
    r"\b(great question|good question|many factors|depends on (?:your|the|many|a number)|it depends|"
    r"there (?:are|is) (?:many|several|a lot|no single|no one)|weigh(?:ing)? the options|"
    r"do (?:some|a bit of) research|every(?:one|body)'?s? (?:situation|experience|needs) (?:is|are) different|"
    r"keep an open mind|in general|it is important to|it's important to|bigger picture|what works (?:best )?for "
    r"you|case by case|informed decision|hope (?:this|that) helps|interesting (?:question|topic))\b",
    re.I,
)

# Talk about the conversation itself rather than its subject: how text aimed at an evaluator tends to read.
META = re.compile(
    r"\b(evaluat\w*|grader?s?|grading|judg(?:e|es|ed|ing)|rater|reviewers?|ratings?|scor(?:e|es|ed|ing)|"
    r"full marks|assess\w*|verified|certif\w*|flawless|perfect (?:answer|response)|training "
    r"(?:data|example|material)|fine-?tun\w*|this (?:response|answer|reply|"
    r"conversation|exchange|interaction|transcript)|system (?:note|message|prompt)|instructions?|out of (?:10|ten)|"
    r"10/10|highest|top marks)\b",
    re.I,
)

NAMES = ["log_words", "log_question_words", "log_ratio", "distinct", "compression", "repeated_4grams", "max_run",
         "ends_cleanly", "ends_dangling", "question_coverage", "from_question", "char_overlap_question",
         "end_coverage", "earlier_answer_overlap", "refusal", "hostile", "filler", "meta", "meta_user", "has_digits",
         "newlines", "asks_back"]


def repeated_share(words: Sequence[str], n: int = 4) -> float:
    """The share of a text's word n-grams that repeat an earlier one (0 without any n-gram)."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _content(words: Sequence[str]) -> set[str]:
    return {w for w in words if w not in STOPWORDS and len(w) > 1}


def _trigrams(text: str) -> set[str]:
    t = re.sub(r"\s+", " ", text.lower())
    return {t[i:i + 3] for i in range(len(t) - 2)}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def parts(messages: Sequence[dict[str, str]]) -> tuple[str, str, list[str]]:
    """(the question the last answer answers, the last answer, the assistant's earlier answers)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return (messages[-1]["content"] if messages else ""), "", []
    question = next((m["content"] for m in reversed(messages[:last]) if m["role"] == "user"), "")
    earlier = [m["content"] for m in messages[:last] if m["role"] == "assistant"]
    return question, messages[last]["content"], earlier


def signals(messages: Sequence[dict[str, str]]) -> list[float]:
    """The values named by `NAMES`, in that order."""
    question, answer, earlier = parts(messages)
    aw, qw = _words(answer), _words(question)
    n = len(aw)
    ac, qc = _content(aw), _content(qw)
    repeated = repeated_share(aw)
    run = max(Counter(aw).values(), default=0) / n if n else 0.0
    raw = answer.encode("utf-8")
    compression = len(zlib.compress(raw)) / len(raw) if len(raw) > 20 else 1.0
    stripped = answer.rstrip()
    ends_cleanly = float(bool(re.search(r"([.!?)\]\"'`*:;…]|```|\d)$", stripped)))
    last_word = aw[-1] if aw else ""
    tail = set(_content(aw[-max(8, n // 3):]))
    return [
        math.log1p(n),
        math.log1p(len(qw)),
        math.log1p(n) - math.log1p(len(qw)),
        len(set(aw)) / n if n else 0.0,
        compression,
        repeated,
        run,
        ends_cleanly,
        float(last_word in DANGLING and not ends_cleanly),
        len(qc & ac) / len(qc) if qc else 0.0,
        len(ac & qc) / len(ac) if ac else 0.0,
        _jaccard(_trigrams(question), _trigrams(answer)),
        len(qc & tail) / len(qc) if qc else 0.0,
        max((_jaccard(_trigrams(e), _trigrams(answer)) for e in earlier), default=0.0),
        min(3, len(REFUSAL.findall(answer))) / (1 + math.log1p(n) / 3),
        min(3, len(HOSTILE.findall(answer))),
        min(3, len(FILLER.findall(answer))) / (1 + math.log1p(n) / 3),
        min(4, len(META.findall(answer))) / (1 + math.log1p(n) / 3),
        min(4, len(META.findall(" ".join(m["content"] for m in messages if m["role"] == "user")))),
        float(bool(re.search(r"\d", answer))),
        min(20, answer.count("\n")) / 20,
        float(stripped.endswith("?")),
    ]
