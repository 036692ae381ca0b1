"""The router's paraphrase evaluation set: three modules, questions their facts never held.

Modules on different topics: 10 PhoneBook people, 10 CounterFact edits, and the QA pairs
of PaperQA paper 0 (invented stand-in facts on the same points where the machine lacks
the paper's files). Questions are paraphrases that must go to their module, and
unrelated questions (some near the modules' topics on purpose) that must go to the base
model. bench/router_latency.py measures on it, tests/integration/test_router_real.py asserts on it;
`distractor_texts` are the real facts outside the evaluated modules.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from loramem import datasets

PHONEBOOK, COUNTERFACT, PAPERQA = "phonebook", "counterfact", "paperqa"

PHONE_TEMPLATES = (
    "How can I reach {name} by phone?",
    "Which number should I dial for {name}?",
    "What's {name}'s telephone number?",
    "I need to call {name}. What number do I use?",
    "Do you have a contact number for {name}?",
)
# Paraphrases of the first ten CounterFact edits (1K file), keyed by the edit's subject.
_COUNTERFACT_PARAPHRASES = {
    "Lenta.ru": (
        "In what language is Lenta.ru published?",
        "Which language are Lenta.ru's articles in?",
    ),
    "Macau": ("Which language is official in Macau?", "What do they officially speak in Macau?"),
    "Nikolai Myaskovsky": (
        "What language does Nikolai Myaskovsky speak?",
        "In which language does Nikolai Myaskovsky communicate?",
    ),
    "Nate Schierholtz": (
        "Which sport does Nate Schierholtz play professionally?",
        "What game is Nate Schierholtz paid to play?",
    ),
    "Zero Motivation": (
        "What language is the film Zero Motivation in?",
        "In which language was Zero Motivation made?",
    ),
    "Bozorg Alavi": (
        "Which language is spoken by Bozorg Alavi?",
        "What language can Bozorg Alavi talk in?",
    ),
    "Pitchfork": ("Where is Pitchfork headquartered?", "In which city is Pitchfork based?"),
    "Marguerite Audoux": (
        "Where was Marguerite Audoux from?",
        "What is Marguerite Audoux's nationality?",
    ),
    "Eduardo Fajardo": (
        "What does Eduardo Fajardo do for a living?",
        "What is Eduardo Fajardo's job?",
    ),
    "Aigle": ("What language do people speak in Aigle?", "Which language is used in Aigle?"),
}
# Paraphrases of questions of PaperQA paper 0 (by line), and invented stand-in facts on the
# same points for machines without the data.
_PAPER_PARAPHRASES = {
    0: "Why do people use diffusion models for planning?",
    1: "How are diffusion planners different from autoregressive planners?",
    3: "What does it mean for a diffusion planner to scale at inference time?",
    4: "What happens if you add more denoising steps to a diffusion planner?",
    5: "Why is it wasteful to just draw more random samples from a diffusion planner?",
    7: "Can you explain what Monte Carlo Tree Search is?",
    9: "Which reasoning tasks rely heavily on MCTS?",
    11: "What keeps MCTS from being used more widely in practice?",
    13: "What research question does the MCTD paper try to answer?",
    14: "What does Monte Carlo Tree Diffusion combine?",
    15: "Which three innovations does MCTD propose?",
    17: "What role do guidance levels play in MCTD?",
    18: "What is meant by jumpy denoising?",
    20: "What did the experiments find about MCTD?",
    24: "What is semi-autoregressive causal planning?",
    25: "How does MCTD trade off exploration against exploitation?",
    28: "How does MCTD judge trajectory quality cheaply?",
    32: "In which settings does MCTD perform particularly well?",
    35: "What kind of tasks count as System 2 reasoning?",
    36: "Why doesn't MCTS work well with continuous actions?",
}
_PAPER_STANDIN = (
    "Diffusion models plan by generating whole trajectories learned from offline data.",
    "Diffusion planners denoise a whole trajectory at once; autoregressive ones go step by step.",
    "Inference-time scalability means a planner gets more accurate when given more compute.",
    "Adding denoising steps to a diffusion planner stops helping after a point.",
    "Independent random samples from a diffusion planner share nothing, which wastes compute.",
    "Monte Carlo Tree Search improves decisions through repeated simulated rollouts.",
    "MCTS underpins System 2 reasoning such as math problem solving and program synthesis.",
    "MCTS is limited to discrete actions and its search trees grow very large.",
    "The MCTD paper asks how to combine Diffuser and MCTS for inference-time scalability.",
    "Monte Carlo Tree Diffusion joins diffusion trajectory generation with tree search.",
    "MCTD brings denoising as tree rollout, guidance levels as meta-actions, jumpy denoising.",
    "In MCTD, guidance levels act as meta-actions that balance exploration and exploitation.",
    "Jumpy denoising quickly simulates a trajectory to estimate its quality.",
)
_PAPER_STANDIN_OF = dict(zip([0, 1, 3, 4, 5, 7, 9, 11, 13, 14, 15, 17, 18], range(13), strict=True))
UNRELATED = (
    "What is the capital of France?",
    "How do I bake bread?",
    "Who wrote Pride and Prejudice?",
    "What is the boiling point of water at sea level?",
    "How many legs does a spider have?",
    "What's the weather like in London today?",
    "Can you recommend a good science fiction novel?",
    "How do I change a flat tire?",
    "What is the square root of 144?",
    "Translate 'good morning' into Spanish.",
    "Who painted the Mona Lisa?",
    "How long should I boil an egg?",
    "What year did World War II end?",
    "Explain how photosynthesis works.",
    "What is the tallest mountain in the world?",
    "How do I tie a tie?",
    "Write a haiku about autumn.",
    "How does castling work in chess?",
    "How many players are on a soccer team?",
    "What is the speed of light?",
    "How do I reset my email password?",
    "Give me a recipe for pancakes.",
    "Which planet is closest to the sun?",
    "What is a good stretching routine for runners?",
    "Who invented the telephone?",
    # Near the modules' topics on purpose: same relation or field, nothing the modules hold.
    "What is the phone number of the White House?",
    "Which language is spoken in Brazil?",
    "How do I call customer support?",
    "What is machine learning?",
    "What is a decision tree?",
)


@dataclass(frozen=True)
class EvalSet:
    modules: dict[str, list[str]]  # module name -> fact texts
    questions: list[tuple[str, str | None]]  # (question, expected module; None = base)


def plain_name(name: str) -> str:
    return re.sub(r"^(Dr|Mr|Mrs|Ms|Miss) ", "", name)


def _paper_qa(data_dir: Path, paper: int) -> list[tuple[str, str]] | None:
    path = data_dir / "paperqa" / "qa" / f"paper_{paper}.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # "In the Paper ID 0, What ...?": the prefix is an artefact of the data set, not the fact.
    return [(re.sub(r"^In the Paper ID \d+, ", "", r["question"]), r["answer"]) for r in rows]


def paper_fact(question: str, answer: str) -> str:
    return f"{question} {answer}"


def eval_set(data_dir: Path) -> EvalSet:
    people = datasets.phonebook(data_dir, 10)
    edits = datasets.counterfact_edits(data_dir, 10)
    qa = _paper_qa(data_dir, 0)
    questions: list[tuple[str, str | None]] = []
    for i, person in enumerate(people):
        for j, name in ((i, person.name), (i + 2, plain_name(person.name))):
            template = PHONE_TEMPLATES[j % len(PHONE_TEMPLATES)]
            questions.append((template.format(name=name), PHONEBOOK))
    for edit in edits:
        subject = next((s for s in _COUNTERFACT_PARAPHRASES if s in edit.sentence), None)
        asked = _COUNTERFACT_PARAPHRASES[subject] if subject else (f"{edit.prompt} what?",)
        questions += [(q, COUNTERFACT) for q in asked]
    if qa is not None:
        paper = [paper_fact(q, a) for q, a in qa]
        asked_lines = [i for i in _PAPER_PARAPHRASES if i < len(qa)]
    else:
        paper, asked_lines = list(_PAPER_STANDIN), list(_PAPER_STANDIN_OF)
    questions += [(_PAPER_PARAPHRASES[i], PAPERQA) for i in asked_lines]
    questions += [(q, None) for q in UNRELATED]
    modules = {
        PHONEBOOK: [p.fact for p in people],
        COUNTERFACT: [e.sentence for e in edits],
        PAPERQA: paper,
    }
    return EvalSet(modules, questions)


def distractor_texts(data_dir: Path) -> list[str]:
    """Real facts outside the evaluated modules (skips what the machine lacks)."""
    texts: list[str] = []
    if (data_dir / "phonebook" / "phonebook.csv").exists():
        texts += [p.fact for p in datasets.phonebook(data_dir, 2000, offset=10)]
    path = data_dir / "counterfact" / "counterfact_edit_4K.csv"
    if path.exists():
        held = {e.sentence for e in datasets.counterfact_edits(data_dir, 10)}
        with path.open(newline="") as handle:
            texts += [row["text"] for row in csv.DictReader(handle) if row["text"] not in held]
    for paper in range(1, 10):
        texts += [paper_fact(q, a) for q, a in _paper_qa(data_dir, paper) or []]
    return texts
