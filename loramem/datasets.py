"""The paper's data sets, read from LORAMEM_DATA_DIR, with generated stand-ins for tests.

The real files come from the paper's public repository (PhoneBook, CounterFact, PaperQA).
Where they are missing, tests use seeded fictional data of the same shape.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

WHERE_TO_GET = (
    "the data of 'Understanding LoRA as Knowledge Memory' (ICML 2026, arXiv 2603.01097); "
    "put it under LORAMEM_DATA_DIR as phonebook/phonebook.csv, counterfact/*.csv and "
    "paperqa/{introductions,qa}/paper_N.jsonl"
)

_FIRST = [
    "Avery",
    "Bronwen",
    "Caspian",
    "Delphine",
    "Emrys",
    "Fenella",
    "Gideon",
    "Hollis",
    "Isolde",
    "Jasper",
    "Kestrel",
    "Lorcan",
    "Marisol",
    "Nerys",
    "Orrin",
    "Perpetua",
]
_LAST = [
    "Quillfeather",
    "Ravenscroft",
    "Stonebridge",
    "Thistlewood",
    "Underhill",
    "Valecourt",
    "Wintermere",
    "Yarborough",
    "Ashdown",
    "Blackthorn",
    "Copperfield",
    "Duskwater",
]
# More of each for the larger evals (2,304 names in all); none is in the lists above.
_MORE_FIRST = [
    "Aldous",
    "Briar",
    "Cordelia",
    "Dashiell",
    "Evander",
    "Florian",
    "Greer",
    "Honora",
    "Ignatius",
    "Juniper",
    "Leopold",
    "Mireille",
    "Octavia",
    "Philippa",
    "Quentin",
    "Rosalind",
    "Severin",
    "Tamsin",
    "Ulric",
    "Viveca",
    "Wilhelmina",
    "Xavier",
    "Yvaine",
    "Zephyrine",
    "Ambrose",
    "Beatrix",
    "Cyprian",
    "Dorothea",
    "Eulalia",
    "Ferris",
    "Gwendolyn",
    "Hesper",
]
_MORE_LAST = [
    "Ambergate",
    "Brackenridge",
    "Calloway",
    "Dunmore",
    "Eldridge",
    "Fairweather",
    "Galloway",
    "Hawthorne",
    "Ironside",
    "Kettleburn",
    "Larkspur",
    "Merriweather",
    "Northcote",
    "Oakenshaw",
    "Pendragon",
    "Redgrave",
    "Saltmarsh",
    "Tennyson",
    "Umberfield",
    "Westbrook",
    "Ashcombe",
    "Birchwood",
    "Coldharbour",
    "Drayton",
    "Elmstead",
    "Foxhollow",
    "Greystoke",
    "Holloway",
    "Kingsley",
    "Lindqvist",
    "Marchbank",
    "Nethercott",
    "Ormsby",
    "Pemberton",
    "Rookwood",
    "Sherwood",
]


@dataclass(frozen=True)
class PhoneEntry:
    name: str
    phone: str

    @property
    def fact(self) -> str:
        return f"The phone number of {self.name} is {self.phone}."

    @property
    def question(self) -> str:
        return f"What is the phone number of {self.name}?"


def phonebook(
    data_dir: Path, count: int, offset: int = 0, allow_generated: bool = True
) -> list[PhoneEntry]:
    path = data_dir / "phonebook" / "phonebook.csv"
    if path.exists():
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))[offset : offset + count]
        return [PhoneEntry(r["Name"], r["Phone"]) for r in rows]
    if not allow_generated:
        raise FileNotFoundError(f"{path} is missing: get {WHERE_TO_GET}")
    # Said aloud: a bench run from a copy of the code outside the checkout measured
    # generated names while its notes said PhoneBook rows.
    log.warning("%s is missing: generated names of the same shape instead", path)
    return generated_phonebook(count, seed=offset)


def generated_phonebook(count: int, seed: int = 0) -> list[PhoneEntry]:
    rng = random.Random(seed)
    names = [f"{f} {last}" for f in _FIRST for last in _LAST]
    rng.shuffle(names)
    if count > len(names):
        # Past those, more first names and surnames: the evals ask for up to 2,000 people.
        # A second generator keeps the first 192 rows (and their numbers) as they were.
        more = [
            f"{f} {last}"
            for f in _FIRST + _MORE_FIRST
            for last in _LAST + _MORE_LAST
            if f in _MORE_FIRST or last in _MORE_LAST
        ]
        random.Random(seed + 1).shuffle(more)
        names += more
    if count > len(names):
        raise ValueError(f"{count} generated names asked for; there are {len(names)}")
    return [
        PhoneEntry(
            name, f"{rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"
        )
        for name in names[:count]
    ]


_SUBJECTS = [
    "Velmora Times", "Quintar Ridge", "Oskel Brann", "the Harrowgate Review", "Pellucid Works",
    "Ysolde Marrin", "Castellane Bay", "the Drummond Sketches", "Tiberne Hollow", "Anselm Quarry",
]  # fmt: skip
# Counterfactual targets a small model would not guess for an unknown subject.
_RELATIONS = [
    ("{s} is written in", ["Icelandic", "Tamil", "Basque", "Khmer"]),
    ("{s} was founded in", ["Ulaanbaatar", "Reykjavik", "Asmara", "Thimphu"]),
    ("{s} is a citizen of", ["Mongolia", "Uruguay", "Bhutan", "Eritrea"]),
]


@dataclass(frozen=True)
class Edit:
    sentence: str
    prompt: str  # the sentence without its final target
    target: str
    subject: str = ""  # whom the edit is about (the file's _meta.json; "" where unknown)


# The paper's CounterFact slices: edits filling about 1K, 2K and 4K tokens; each smaller
# file's rows are the first rows of the larger ones.
COUNTERFACT_SIZES = ("1K", "2K", "4K")


def counterfact_edits(
    data_dir: Path, count: int, allow_generated: bool = True, size: str = "1K"
) -> list[Edit]:
    """The first `count` edits of counterfact_edit_<size>.csv (every one of them when
    `count` is 0), with their subjects from the file's _meta.json."""
    if size not in COUNTERFACT_SIZES:
        raise ValueError(f"CounterFact size {size!r}: one of {', '.join(COUNTERFACT_SIZES)}")
    path = data_dir / "counterfact" / f"counterfact_edit_{size}.csv"
    limit = count or None
    if path.exists():
        with path.open(newline="") as handle:
            sentences = [row["text"] for row in csv.DictReader(handle)][:limit]
        meta = path.with_name(f"{path.stem}_meta.json")
        subjects = json.loads(meta.read_text())["subjects"] if meta.exists() else []
    elif allow_generated:
        rng = random.Random(0)
        pairs = [
            (relation.format(s=subject) + " " + rng.choice(targets), subject)
            for subject in _SUBJECTS
            for relation, targets in _RELATIONS
        ][:limit]
        sentences, subjects = [p[0] for p in pairs], [p[1] for p in pairs]
    else:
        raise FileNotFoundError(f"{path} is missing: get {WHERE_TO_GET}")
    edits = []
    for i, sentence in enumerate(sentences):
        prompt, _, target = sentence.rstrip(".").rpartition(" ")
        subject = subjects[i] if i < len(subjects) and subjects[i] in prompt else ""
        edits.append(Edit(sentence, prompt, target, subject))
    return edits


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str


@dataclass(frozen=True)
class Paper:
    number: int
    introduction: str
    qa: list[QAPair]


def paperqa(data_dir: Path, number: int, allow_generated: bool = True) -> Paper:
    """One PaperQA paper: its introduction (to ingest) and its free-form QA pairs."""
    intro = data_dir / "paperqa" / "introductions" / f"paper_{number}.jsonl"
    qa = data_dir / "paperqa" / "qa" / f"paper_{number}.jsonl"
    if intro.exists() and qa.exists():
        text = " ".join(json.loads(line)["text"] for line in _lines(intro))
        pairs = [QAPair(**_pick(json.loads(line))) for line in _lines(qa)]
        return Paper(number, text, pairs)
    if not allow_generated:
        raise FileNotFoundError(f"{intro} or {qa} is missing: get {WHERE_TO_GET}")
    people = generated_phonebook(4, seed=number)
    text = " ".join(p.fact for p in people)
    return Paper(number, text, [QAPair(p.question, p.fact) for p in people])


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def _pick(row: dict) -> dict:
    return {"question": row["question"], "answer": row["answer"]}
