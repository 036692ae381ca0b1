"""A restarted router loads its index snapshot and catches up from the real registry:
modules published, changed or retired after the snapshot are routed as the registry says,
and a snapshot that is corrupt or was made under other settings is rebuilt, not trusted."""

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from loramem.names import module_id, module_name
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from router import snapshot
from router.embedder import to_bytes
from router.index import index_factory
from router.router import Router
from tests.recipes import TRAINED

# ivf: trained clusters from the 4th fact on, every list probed (exact answers).
BACKENDS: dict[str, tuple[str, dict]] = {
    "exact": ("exact", {}),
    "hnsw": ("hnsw", {}),
    "ivf": ("ivf", {"ivf_lists": 2, "ivf_probe": 2, "ivf_train_at": 4}),
    "pq": ("pq", {}),  # exact at these sizes (it trains at 256 facts): the snapshot path
}
PHONES = [
    "The phone number of Ann Lee is 555-0101.",
    "The phone number of Bob Stone is 555-0102.",
    "Dee Fox can be called on 555-0104.",
    "Eve Hill can be called on 555-0105.",
]
MakeRouter = Callable[..., Router]


@pytest.fixture(params=sorted(BACKENDS))
def make_router(
    request: pytest.FixtureRequest, registry: Registry, fake_embedder, tmp_path: Path
) -> MakeRouter:
    def make(
        config: dict | None = None, lexical_weight: float = 0.0, subject_check: bool = False
    ) -> Router:
        return Router(
            registry,
            fake_embedder,
            "base-model",
            threshold=0.5,
            new_index=index_factory(BACKENDS[request.param][0], **BACKENDS[request.param][1]),
            snapshot_dir=tmp_path / "router",
            index_config=config or {"backend": request.param},
            snapshot_scope="test",
            lexical_weight=lexical_weight,
            subject_check=subject_check,
        )

    return make


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Modules any router reads from Redis from now on (the real read still runs)."""
    seen: list[str] = []
    real = Router._apply_version

    def spy(self: Router, tenant: str, info: VersionInfo) -> None:
        seen.append(module_name(info.module))
        real(self, tenant, info)

    monkeypatch.setattr(Router, "_apply_version", spy)
    return seen


def post(registry: Registry, router: Router, name: str, texts: list[str]) -> list[str]:
    vectors = [to_bytes(v) for v in router.embedder.embed(texts)]
    return registry.facts.add("t", texts, [None] * len(texts), vectors, module_id("t", name))[1]


def publish(registry: Registry, name: str, version: int, ids: list[str]) -> None:
    # One checksum per version, a sha256 like any (served names carry its digest).
    checksum = hashlib.sha256(f"{name}-{version}".encode()).hexdigest()
    module = module_id("t", name)
    registry.modules.publish(VersionInfo(module, version, "t", ids, 1.0, checksum, TRAINED), {})


def named(modules: dict[str, int]) -> dict[str, int]:
    return {module_name(m): v for m, v in modules.items()}


def snapshotted(registry: Registry, make_router: MakeRouter) -> tuple[Router, list[str]]:
    """A router over phones (4 facts), places and cars, its snapshot written."""
    router = make_router()
    phones = post(registry, router, "phones", PHONES)
    publish(registry, "phones", 1, phones)
    publish(registry, "places", 1, post(registry, router, "places", ["Cyd Park lives by the sea."]))
    publish(registry, "cars", 1, post(registry, router, "cars", ["Hal Jude drives a tractor."]))
    router.load_all()
    assert router.save_snapshots() == 1
    assert router.save_snapshots() == 0  # nothing changed since
    return router, phones


def routed(router: Router, question: str) -> str | None:
    module = router.route("t", "auto", question).module
    return module_name(module) if module else None


def test_restart_reads_nothing_when_nothing_changed(
    registry: Registry, make_router: MakeRouter, reads: list[str]
) -> None:
    first, _ = snapshotted(registry, make_router)
    reads.clear()
    second = make_router()
    second.load_all()
    assert reads == []  # every module came from the file
    assert second.active_modules("t") == first.active_modules("t")
    assert second.index_stats("t")[0] == 6
    assert routed(second, "What is the phone number of Bob Stone?") == "phones"
    assert routed(second, "Who drives a tractor?") == "cars"


def test_changes_after_the_snapshot_are_routed_as_the_registry_says(
    registry: Registry, make_router: MakeRouter, reads: list[str]
) -> None:
    first, phones = snapshotted(registry, make_router)
    registry.facts.delete("t", phones[1])  # Bob goes: phones v2 without him
    publish(registry, "phones", 2, [p for p in phones if p != phones[1]])
    registry.modules.retire(module_id("t", "places"), "t")
    publish(registry, "pets", 1, post(registry, first, "pets", ["Gus Ray owns a parrot."]))
    reads.clear()
    second = make_router()
    second.load_all()
    assert sorted(reads) == ["pets", "phones"]  # cars came from the file
    assert named(second.active_modules("t")) == {"phones": 2, "cars": 1, "pets": 1}
    assert routed(second, "What is the phone number of Ann Lee?") == "phones"
    bob = second.route("t", "auto", "What is the phone number of Bob Stone?")
    assert phones[1] not in {h.fact_id for h in bob.candidates}  # deleted
    assert routed(second, "Where does Cyd Park live by the sea?") is None  # retired
    assert routed(second, "Who owns a parrot?") == "pets"
    assert routed(second, "Who drives a tractor?") == "cars"
    assert second.index_stats("t")[0] == 5


@pytest.mark.parametrize("damage", ["flip", "truncate", "config"])
def test_a_corrupt_or_foreign_snapshot_is_rebuilt_not_trusted(
    registry: Registry, make_router: MakeRouter, reads: list[str], damage: str
) -> None:
    first, _ = snapshotted(registry, make_router)
    (path,) = first.snapshot_dir.glob("*.npz")  # type: ignore[union-attr]
    data = bytearray(path.read_bytes())
    if damage == "flip":  # a byte inside the stored vectors or lists
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        del data[len(data) // 3 :]
    path.write_bytes(bytes(data))
    reads.clear()
    second = make_router({"backend": "another"} if damage == "config" else None)
    second.load_all()
    assert sorted(reads) == ["cars", "phones", "places"]  # all rebuilt from Redis
    assert not path.exists()  # the untrusted file is gone
    assert routed(second, "What is the phone number of Bob Stone?") == "phones"
    assert second.save_snapshots() == 1  # and a good one replaces it
    key = second._snapshot_key("t")
    assert snapshot.read(second.snapshot_dir, key, second._snapshot_config) is not None  # type: ignore[arg-type]


def test_the_lexical_index_comes_back_with_the_snapshot(
    registry: Registry, make_router: MakeRouter, reads: list[str]
) -> None:
    first = make_router(lexical_weight=0.3)
    phones = post(registry, first, "phones", PHONES)
    publish(registry, "phones", 1, phones)
    first.load_all()
    first.save_snapshots()
    reads.clear()
    second = make_router(lexical_weight=0.3)
    second.load_all()
    assert reads == []
    assert len(second._lexical["t"]) == 4
    decision = second.route("t", "auto", "What's Stone's number?")
    assert decision.candidates[0].fact_id == phones[1]  # the surname, a rare word, decides
    for path in first.snapshot_dir.glob("*.npz"):  # type: ignore[union-attr]
        path.unlink()
    without = make_router()  # a snapshot without words is reread when words are wanted
    without.load_all()
    without.save_snapshots()
    reads.clear()
    third = make_router(lexical_weight=0.3)
    third.load_all()
    assert reads == ["phones"] and len(third._lexical["t"]) == 4


def test_the_subject_words_come_back_with_the_snapshot(
    registry: Registry, make_router: MakeRouter, reads: list[str]
) -> None:
    """The subject check's words (capitals read from the fact's text) are saved beside
    the lexical words: a restarted router checks subjects without rereading Redis, and a
    snapshot saved without them is reread."""
    first = make_router(subject_check=True)
    phones = post(registry, first, "phones", PHONES)
    publish(registry, "phones", 1, phones)
    first.load_all()
    first.save_snapshots()
    reads.clear()
    second = make_router(subject_check=True)
    second.load_all()
    assert reads == []
    held = second._lexical["t"]
    assert held.subject(phones[0]) == {"ann", "lee"}
    assert held.subject(phones[2]) == {"dee", "fox"}
    for path in first.snapshot_dir.glob("*.npz"):  # type: ignore[union-attr]
        path.unlink()
    without = make_router()  # neither lexical weight nor subject check: no words saved
    without.load_all()
    without.save_snapshots()
    reads.clear()
    third = make_router(subject_check=True)
    third.load_all()
    assert reads == ["phones"] and third._lexical["t"].subject(phones[1]) == {"bob", "stone"}


def test_a_snapshot_of_one_fact_without_words_restores(
    registry: Registry, make_router: MakeRouter, reads: list[str]
) -> None:
    """One fact with the subject check on and no lexical weight saves one empty string of
    words, which packs to nothing: the restart must read it as one empty entry (CI found
    a gateway that could not start on such a snapshot)."""
    first = make_router(subject_check=True)
    publish(registry, "lone", 1, post(registry, first, "lone", ["the sea is calm today."]))
    first.load_all()
    first.save_snapshots()
    reads.clear()
    second = make_router(subject_check=True)
    second.load_all()
    assert reads == [] and len(second._lexical["t"]) == 1
