"""CounterFact's relations as its edit sentences spell them, a question form of each, and
subjects nobody edited, for asking an edit another way (generalization) and for asking
what must not change (locality).

The edit files carry no relation id: each sentence is one of CounterFact's relation
templates with the subject filled in and the new target last ("Lenta.ru is written in
Italian"). Taking the subject (the _meta.json) and the target out leaves the template
("{s} is written in"), which names the relation below. Every template of
counterfact_edit_4K.csv is listed (tests/unit/test_counterfact_relations.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

from loramem.datasets import Edit


@dataclass(frozen=True)
class Relation:
    name: str
    question: str  # how a person would ask for the object: "In which language is {s} written?"
    templates: tuple[str, ...]  # the completion prompts that state it, subject as {s}
    # Subjects of the same kind that no edit file names: the locality prompts.
    unedited: tuple[str, ...]


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "language of work", "In which language is {s} written?",
        ("{s} is written in", "{s} was written in", "The language of {s} was",
         "The language of {s} is", "The original language of {s} was",
         "The original language of {s} is"),
        ("Le Figaro", "Der Spiegel", "The Guardian", "El País", "La Repubblica", "Pravda"),
    ),
    Relation(
        "official language", "What language do people speak in {s}?",
        ("In {s}, an official language is", "In {s}, the language spoken is",
         "The official language of {s} is", "In {s}, they understand",
         "The law in {s} declares the language"),
        ("Germany", "Brazil", "Quebec", "Bavaria", "Catalonia", "Mexico"),
    ),
    Relation(
        "language spoken", "What language does {s} speak?",
        ("{s} speaks the language", "{s} spoke the language", "{s} speaks",
         "{s}, speaker of", "{s} is a native speaker of", "The native language of {s} is",
         "The mother tongue of {s} is", "{s}, a native", "The language used by {s} is",
         "{s} writes in"),
        ("Victor Hugo", "Leo Tolstoy", "Miguel de Cervantes", "Johann Wolfgang von Goethe",
         "Dante Alighieri", "Haruki Murakami"),
    ),
    Relation(
        "citizenship", "Which country is {s} a citizen of?",
        ("{s}, who is a citizen of", "{s}, who has a citizenship from",
         "{s} holds a citizenship from", "{s}, who holds a citizenship from",
         "{s} is a citizen of", "{s}, a citizen of", "{s} has a citizenship from"),
        ("Angela Merkel", "Vladimir Putin", "Shinzo Abe", "Nelson Mandela", "Justin Trudeau",
         "Lionel Messi"),
    ),
    Relation(
        "headquarters", "Where is {s} headquartered?",
        ("{s}'s headquarters are in", "The headquarter of {s} is located in",
         "The headquarters of {s} is in", "{s} is headquartered in", "{s} is based in",
         "{s}, whose headquarters are in"),
        ("Volkswagen", "Siemens", "Nestlé", "Unilever", "Deutsche Bank", "Ikea"),
    ),
    Relation(
        "location", "Where is {s} located?",
        ("{s} is located in", "{s} is located in the country of", "{s}, in",
         "{s}, located in", "{s}, which is located in", "The location of {s} is",
         "{s} can be found in", "{s} is in", "{s} is within"),
        ("Eiffel Tower", "Mount Kilimanjaro", "Lake Baikal", "Taj Mahal",
         "Stanford University", "Louvre"),
    ),
    Relation(
        "continent", "On which continent is {s}?",
        ("{s} is located in the continent", "{s} belongs to the continent of",
         "{s} is a part of the continent of"),
        ("Mount Everest", "Sahara", "Amazon rainforest", "Lake Victoria", "Ural Mountains",
         "Andes"),
    ),
    Relation(
        "developer", "Which company developed {s}?",
        ("{s}, developed by", "{s}, a product developed by", "{s} was developed by",
         "{s} is developed by", "{s} is from"),
        ("Microsoft Word", "Google Chrome", "Firefox", "Photoshop", "Android", "Java"),
    ),
    Relation(
        "manufacturer", "Which company makes {s}?",
        ("{s} is created by", "{s}, created by", "{s} is produced by", "{s}, produced by",
         "{s} was created by", "{s}, a product created by", "{s} is a product of",
         "{s}, a product of", "{s} was a product of"),
        ("iPhone", "Toyota Corolla", "Boeing 747", "PlayStation 4", "Ford Mustang",
         "Airbus A380"),
    ),
    Relation(
        "origin", "Where does {s} come from?",
        ("{s}, that was developed in", "{s} was developed in", "{s}, that was from",
         "{s} was created in the country of", "{s}, that originated in",
         "{s}, that was formulated in", "{s}, from", "{s} originated in"),
        ("sushi", "pizza", "tango", "flamenco", "kimchi", "croissant"),
    ),
    Relation(
        "occupation", "What does {s} do for a living?",
        ("{s}'s profession is an", "{s}'s occupation is", "{s} works as",
         "{s}, who works as", "The profession of {s} is", "The occupation of {s} is"),
        ("Albert Einstein", "Pablo Picasso", "Wolfgang Amadeus Mozart",
         "William Shakespeare", "Barack Obama", "Marie Curie"),
    ),
    Relation(
        "field of work", "What field does {s} work in?",
        ("{s} works in the field of", "{s}'s domain of activity is", "{s}'s expertise is",
         "The domain of work of {s} is", "{s}'s area of work is", "{s} specializes in",
         "The expertise of {s} is", "The domain of activity of {s} is"),
        ("Isaac Newton", "Charles Darwin", "Sigmund Freud", "Adam Smith",
         "Carl Friedrich Gauss", "Noam Chomsky"),
    ),
    Relation(
        "religion", "What religion does {s} follow?",
        ("{s} is affiliated with the religion", "{s} is follower of",
         "{s} follows the religion of", "The official religion of {s} is"),
        ("Dalai Lama", "Pope Francis", "Mahatma Gandhi", "Martin Luther", "Saudi Arabia",
         "Muhammad Ali"),
    ),
    Relation(
        "affiliation", "Which organization is {s} affiliated with?",
        ("{s} is affiliated with", "{s} is affiliated with the"),
        ("The Football Association", "German Football Association",
         "Japan Football Association", "Brazilian Football Confederation",
         "Royal Spanish Football Federation", "Argentine Football Association"),
    ),
    Relation(
        "position played", "What position does {s} play?",
        ("{s}, who plays the position", "{s} plays in the position of",
         "Which position does {s} play? They play as", "{s} plays as", "{s}'s position is"),
        ("Wayne Gretzky", "Tom Brady", "Manuel Neuer", "Derek Jeter", "Peyton Manning",
         "Patrick Roy"),
    ),
    Relation(
        "sport", "Which sport does {s} play?",
        ("{s} professionally plays the sport", "What sport does {s} play? They play",
         "{s} plays", "{s}, the"),
        ("Serena Williams", "Michael Jordan", "Tiger Woods", "Roger Federer", "Babe Ruth",
         "Pelé"),
    ),
    Relation(
        "position held", "What position does {s} hold?",
        ("{s} holds the title of", "{s}, who holds the position of",
         "{s} holds the position of", "{s}, who has the position of", "{s} is a"),
        ("Desmond Tutu", "Thomas Becket", "Pope Benedict XVI", "Rowan Williams",
         "John Henry Newman", "Cardinal Richelieu"),
    ),
    Relation(
        "work location", "In which city did {s} work?",
        ("{s} worked in the city of", "{s} found employment in", "{s} used to work in"),
        ("Vincent van Gogh", "Johann Sebastian Bach", "Rembrandt", "Karl Marx",
         "Andy Warhol", "Antoni Gaudí"),
    ),
    Relation(
        "employer", "Who does {s} work for?",
        ("{s}, who is employed by", "{s} is employed by", "{s} works for",
         "{s}, who works for", "{s}, of"),
        ("Tim Cook", "Sundar Pichai", "Satya Nadella", "Anderson Cooper",
         "Christiane Amanpour", "Walter Cronkite"),
    ),
    Relation(
        "place of death", "Where did {s} die?",
        ("{s} passed away at", "{s} succumbed at", "{s} expired at"),
        ("Napoleon", "Winston Churchill", "Frida Kahlo", "Oscar Wilde", "Franz Kafka",
         "Ludwig van Beethoven"),
    ),
    Relation(
        "genre", "What kind of music does {s} play?",
        ("The genre played by {s} is",),
        ("Miles Davis", "Johnny Cash", "Bob Marley", "Metallica", "Luciano Pavarotti",
         "Eminem"),
    ),
    Relation(
        "named after", "What was {s} named after?",
        ("{s}, which is named for", "{s}, named after"),
        ("Bolivia", "Nobel Prize", "Alexandria", "Pennsylvania", "Tasmania",
         "Hubble Space Telescope"),
    ),
    Relation(
        "original network", "Which network first aired {s}?",
        ("{s} debuted on", "{s} was originally aired on", "{s} is to debut on",
         "{s} premiered on"),
        ("Friends", "The Simpsons", "Seinfeld", "Breaking Bad", "Doctor Who",
         "Game of Thrones"),
    ),
    Relation(
        "instrument", "What instrument does {s} play?",
        ("{s} plays the instrument", "{s} plays the", "{s}, playing the",
         "{s}, performing on the"),
        ("Jimi Hendrix", "Yo-Yo Ma", "Louis Armstrong", "Itzhak Perlman", "Eric Clapton",
         "Glenn Gould"),
    ),
    Relation(
        "owner", "Who owns {s}?",
        ("{s} owner", "{s}'s owner"),
        ("Instagram", "YouTube", "Lamborghini", "Skype", "WhatsApp", "Rolls-Royce Motor Cars"),
    ),
    Relation(
        "capital", "What is the capital of {s}?",
        ("{s}'s capital city,", "The capital city of {s} is"),
        ("France", "Japan", "Kenya", "Peru", "Canada", "Australia"),
    ),
    # The generated stand-in edits (loramem/datasets.py) where the data is missing.
    Relation(
        "founded in", "Where was {s} founded?",
        ("{s} was founded in",),
        ("Harvard University", "Amazon", "Oxford University", "Nokia", "Ikea", "Sony"),
    ),
)  # fmt: skip

_BY_TEMPLATE = {t: r for r in RELATIONS for t in r.templates}


def template_of(edit: Edit) -> str | None:
    """The edit's prompt with its subject as {s}; None when the subject is unknown."""
    if not edit.subject or edit.subject not in edit.prompt:
        return None
    return edit.prompt.replace(edit.subject, "{s}", 1)


def relation_of(edit: Edit) -> Relation | None:
    template = template_of(edit)
    return _BY_TEMPLATE.get(template) if template else None


def paraphrase(edit: Edit) -> str | None:
    """The edit asked as a question of its relation: a phrasing no training sentence has."""
    relation = relation_of(edit)
    return relation.question.format(s=edit.subject) if relation else None


@dataclass(frozen=True)
class LocalityPrompt:
    prompt: str  # an edit's own template, filled with a subject nobody edited
    subject: str
    relation: str
    near_edit: str  # the edit sentence whose template it borrows


def locality_prompts(edits: list[Edit], count: int, edited: set[str]) -> list[LocalityPrompt]:
    """Up to `count` distinct prompts: each edit's template in turn, filled with the next
    unedited subject of its relation (none of `edited`). The prompts differ from an edit
    only in the subject, the hardest case for a router that must send them to base."""
    prompts: dict[str, LocalityPrompt] = {}
    turn: dict[str, int] = {}
    for edit in edits:
        relation, template = relation_of(edit), template_of(edit)
        if relation is None or template is None:
            continue
        subjects = [s for s in relation.unedited if s not in edited]
        if not subjects:
            continue
        subject = subjects[turn.get(relation.name, 0) % len(subjects)]
        turn[relation.name] = turn.get(relation.name, 0) + 1
        prompt = template.format(s=subject)
        prompts.setdefault(prompt, LocalityPrompt(prompt, subject, relation.name, edit.sentence))
    return list(prompts.values())[:count]
