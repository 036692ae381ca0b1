"""The paper's data sets, read from LORAMEM_DATA_DIR, with generated stand-ins for tests.

The real files come from the paper's public repository (PhoneBook, CounterFact, PaperQA).
Where they are missing, tests use seeded fictional data of the same shape.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

WHERE_TO_GET = (
    "the data of 'Understanding LoRA as Knowledge Memory' (ICML 2026, arXiv 2603.01097); "
    "put it under LORAMEM_DATA_DIR as phonebook/phonebook.csv and counterfact/*.csv"
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
    return generated_phonebook(count, seed=offset)


def generated_phonebook(count: int, seed: int = 0) -> list[PhoneEntry]:
    rng = random.Random(seed)
    names = [f"{f} {last}" for f in _FIRST for last in _LAST]
    rng.shuffle(names)
    return [
        PhoneEntry(
            name, f"{rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"
        )
        for name in names[:count]
    ]
