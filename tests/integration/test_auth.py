"""Keys, roles and tenants through the real gateway and real Redis (LORAMEM_AUTH=required):
no key is 401, a role too small is 403, and a key of one tenant can neither see nor touch
nor learn of another tenant's facts, modules, jobs and merges."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import openai
import pytest
import redis
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from server.app import create_app
from tests.recipes import NO_FILES, TRAINED

OPEN_PATHS = {"/healthz", "/readyz"}
# FastAPI's own schema and docs pages: no data of any tenant.
DOC_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
WRITER_ROUTES = [
    ("POST", "/facts", {"facts": ["x"]}),
    ("POST", "/documents", {"text": "X is y."}),
    ("PUT", "/facts/f1", {"text": "x"}),
    ("DELETE", "/facts/f1", None),
    ("POST", "/merges", {"modules": ["a", "b"]}),
    ("DELETE", "/jobs/j1", None),
]
ADMIN_ROUTES = [
    ("GET", "/metrics", None),
    ("GET", "/admin/keys", None),
    ("POST", "/admin/keys", {"tenant": "t", "role": "reader"}),
    ("DELETE", "/admin/keys/0123456789abcdef", None),
]


@pytest.fixture
def client(settings: Settings, registry: Registry, fake_embedder) -> Iterator[TestClient]:
    settings = settings.model_copy(update={"auth": "required"})
    with TestClient(create_app(settings, embedder=fake_embedder)) as test_client:
        yield test_client


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def make_key(registry: Registry, tenant: str, role: str) -> dict[str, str]:
    return bearer(registry.api_keys.create(tenant, role)[0])


def call(client: TestClient, method: str, path: str, body: dict | None, headers: dict):  # type: ignore[no-untyped-def]
    return client.request(method, path, json=body, headers=headers)


def assert_error(reply, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert reply.status_code == status, (reply.request.url, reply.text)
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    if status == 401:
        assert reply.headers["www-authenticate"] == "Bearer"
    return dict(error)


def every_route(client: TestClient) -> list[tuple[str, str]]:
    routes = [r for r in client.app.routes if isinstance(r, APIRoute)]  # type: ignore[attr-defined]
    return [
        (method, re.sub(r"\{[^}]+\}", "x", route.path))
        for route in routes
        for method in route.methods
        if route.path not in OPEN_PATHS | DOC_PATHS
    ]


def test_every_route_without_a_valid_key_is_401(client: TestClient, registry: Registry) -> None:
    routes = every_route(client)
    assert {("POST", "/v1/chat/completions"), ("GET", "/metrics"), ("POST", "/admin/keys")} <= set(
        routes
    )
    revoked = registry.api_keys.create("a", "admin")[0]
    registry.api_keys.revoke(revoked)
    unknown = "lm-" + "A" * 43
    for headers in (
        {},
        {"x-loramem-tenant": "a"},
        bearer(unknown),
        bearer(revoked),
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Bearer"},
        {"authorization": "Bearer not-a-key"},
    ):
        for method, path in routes:
            assert_error(call(client, method, path, {}, headers), 401)


def test_health_and_readiness_stay_open(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)  # 503 here: no engine runs


def test_roles_below_the_route_are_403(client: TestClient, registry: Registry) -> None:
    reader, writer = make_key(registry, "a", "reader"), make_key(registry, "a", "writer")
    for method, path, body in WRITER_ROUTES + ADMIN_ROUTES:
        assert_error(call(client, method, path, body, reader), 403)
    for method, path, body in ADMIN_ROUTES:
        assert_error(call(client, method, path, body, writer), 403)


def test_a_reader_reads_and_a_writer_writes(client: TestClient, registry: Registry) -> None:
    reader, writer = make_key(registry, "a", "reader"), make_key(registry, "a", "writer")
    posted = client.post("/facts", json={"facts": ["X is y."]}, headers=writer).json()
    for path in ("/facts", "/modules", "/merges", "/v1/models", f"/jobs/{posted['job_id']}"):
        assert client.get(path, headers=reader).status_code == 200, path
    assert [f["id"] for f in client.get("/facts", headers=reader).json()] == posted["fact_ids"]


def test_metrics_need_an_admin_key(client: TestClient, registry: Registry) -> None:
    reply = client.get("/metrics", headers=make_key(registry, "ops", "admin"))
    assert reply.status_code == 200 and "loramem" in reply.text


def test_the_tenant_header_is_ignored(client: TestClient, registry: Registry) -> None:
    writer = make_key(registry, "a", "writer")
    client.post("/facts", json={"facts": ["X is y."]}, headers={**writer, "x-loramem-tenant": "b"})
    assert len(registry.facts.of_tenant("a")) == 1 and registry.facts.of_tenant("b") == []


def _publish_b(client: TestClient, registry: Registry, b: dict[str, str]) -> dict:
    """Tenant b's two published modules, a merge of them requested, and its job."""
    posted = [
        client.post("/facts", json={"facts": [f"B secret {i}."], "module": f"bm{i}"}, headers=b)
        for i in (1, 2)
    ]
    first = posted[0].json()
    for reply in posted:
        body = reply.json()
        module = module_id("b", body["module"])
        registry.modules.publish(
            VersionInfo(module, 1, "b", body["fact_ids"], 1.0, NO_FILES, TRAINED), {}
        )
    merge = client.post("/merges", json={"modules": ["bm1", "bm2"]}, headers=b)
    assert merge.status_code == 202, merge.text
    deadline = time.monotonic() + 5  # the event follower applies publishes asynchronously
    while "bm1" not in [m["id"] for m in client.get("/v1/models", headers=b).json()["data"]]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return {"fact": first["fact_ids"][0], "job": first["job_id"], "merge": merge.json()}


def test_a_key_of_one_tenant_learns_nothing_of_another(
    client: TestClient, registry: Registry
) -> None:
    b = _publish_b(client, registry, make_key(registry, "b", "writer"))
    writer_a = make_key(registry, "a", "writer")
    for headers in (writer_a, {**writer_a, "x-loramem-tenant": "b"}):
        assert client.get("/facts", headers=headers).json() == []
        assert client.get("/modules", headers=headers).json() == []
        assert client.get("/merges", headers=headers).json() == []
        models = [m["id"] for m in client.get("/v1/models", headers=headers).json()["data"]]
        assert not {"bm1", "bm2", b["merge"]["module"]} & set(models)
        # Foreign things answer exactly as absent ones do, but for the name asked about.
        pairs = [
            ("GET", "/jobs/{}", None, (b["job"], "nojob")),
            ("GET", "/jobs/{}", None, (b["merge"]["job_id"], "nojob")),
            ("PUT", "/facts/{}", {"text": "mine now"}, (b["fact"], "nofact")),
            ("DELETE", "/facts/{}", None, (b["fact"], "nofact")),
            ("DELETE", "/jobs/{}", None, (b["merge"]["job_id"], "nojob")),
        ]
        for method, path, body, (foreign, absent) in pairs:
            seen = assert_error(call(client, method, path.format(foreign), body, headers), 404)
            unseen = assert_error(call(client, method, path.format(absent), body, headers), 404)
            assert seen["message"].replace(foreign, absent) == unseen["message"]
        for model in ("bm1", "bm1@v1", b["merge"]["module"]):
            chat = {"model": model, "messages": [{"role": "user", "content": "B secret 1"}]}
            seen = assert_error(
                client.post("/v1/chat/completions", json=chat, headers=headers), 404
            )
            chat["model"] = "nomodule"
            unseen = assert_error(
                client.post("/v1/chat/completions", json=chat, headers=headers), 404
            )
            assert seen["message"].replace(model, "nomodule") == unseen["message"]
        merge = {"modules": ["bm1", "bm2"]}
        assert_error(client.post("/merges", json=merge, headers=headers), 404)
    # Nothing of b's changed, and a's attempts left nothing behind in b.
    assert {f.text for f in registry.facts.of_tenant("b")} == {"B secret 1.", "B secret 2."}
    assert registry.facts.of_tenant("a") == [] and registry.merges.of_tenant("a") == []
    assert registry.jobs.get(b["merge"]["job_id"]).status.value == "queued"  # not cancelled


def test_a_revoked_key_fails_on_its_next_request(client: TestClient, registry: Registry) -> None:
    key, record = registry.api_keys.create("a", "reader")
    assert client.get("/facts", headers=bearer(key)).status_code == 200
    registry.api_keys.revoke(record.id)  # as another gateway or the CLI would
    assert_error(client.get("/facts", headers=bearer(key)), 401)


def test_the_admin_api_creates_lists_and_revokes(
    client: TestClient, registry: Registry, redis_client: redis.Redis
) -> None:
    admin = make_key(registry, "ops", "admin")
    reply = client.post("/admin/keys", json={"tenant": "a", "role": "writer", "name": "ci"})
    assert_error(reply, 401)
    made = client.post(
        "/admin/keys", json={"tenant": "a", "role": "writer", "name": "ci"}, headers=admin
    )
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["id"]
    assert key.startswith("lm-")
    assert (
        client.post("/facts", json={"facts": ["X is y."]}, headers=bearer(key)).status_code == 202
    )

    listed = client.get("/admin/keys", headers=admin)
    assert key not in listed.text and "hash" not in listed.text
    (row,) = [k for k in listed.json() if k["id"] == key_id]
    assert (row["tenant"], row["role"], row["name"], row["revoked"]) == ("a", "writer", "ci", False)
    assert row["last_used_s"] is not None

    assert client.delete(f"/admin/keys/{key_id}", headers=admin).json()["revoked"] is True
    assert_error(client.get("/facts", headers=bearer(key)), 401)
    assert_error(client.delete("/admin/keys/0123456789abcdef", headers=admin), 404)
    bad = client.post("/admin/keys", json={"tenant": "a b", "role": "root"}, headers=admin)
    assert_error(bad, 400)


def test_keys_are_stored_only_as_hashes(registry: Registry, redis_client: redis.Redis) -> None:
    key, record = registry.api_keys.create("a", "admin", "someone")
    registry.api_keys.authenticate(key)
    stored = b""
    for name in redis_client.scan_iter():
        kind = redis_client.type(name)
        if kind == b"hash":
            stored += b"".join(k + v for k, v in redis_client.hgetall(name).items())
        elif kind == b"set":
            stored += b"".join(redis_client.smembers(name))
        elif kind == b"string":
            stored += redis_client.get(name) or b""
        stored += name
    assert record.id.encode() in stored  # the scan saw the key's record
    assert key.encode() not in stored and key.removeprefix("lm-").encode() not in stored


def test_auth_off_keeps_the_tenant_header(
    settings: Settings, registry: Registry, fake_embedder
) -> None:
    with TestClient(create_app(settings, embedder=fake_embedder)) as open_client:
        reply = open_client.post(
            "/facts", json={"facts": ["X is y."]}, headers={"x-loramem-tenant": "b"}
        )
        assert reply.status_code == 202
        assert open_client.get("/metrics").status_code == 200
    assert len(registry.facts.of_tenant("b")) == 1


def test_every_refused_module_name_gets_one_answer(client: TestClient, registry: Registry) -> None:
    """A new name in a system form (packed, split, merged) is refused, so that none can be
    squatted; the answer does not say which."""
    b = make_key(registry, "b", "writer")
    client.post("/facts", json={"facts": ["B secret."], "module": "bm1"}, headers=b)
    a = make_key(registry, "a", "writer")
    packed = client.post("/facts", json={"facts": ["A fact."]}, headers=a).json()["module"]
    assert packed.startswith("m-")
    for name in ["m-0123456789", "mx-0123456789ab", "notes-s0a1b2c"]:
        reply = client.post("/facts", json={"facts": ["mine"], "module": name}, headers=a)
        assert assert_error(reply, 409)["message"] == f"module name is not available: {name}"
    # its own packed module stays open to it by name; names near the forms are free
    for name in [packed, "m", "mxy-1", "notes-s0a1b2", "notes-sxa1b2c"]:
        reply = client.post("/facts", json={"facts": ["mine"], "module": name}, headers=a)
        assert reply.status_code == 202, (name, reply.text)
    assert {f.module for f in registry.facts.of_tenant("b")} == {module_id("b", "bm1")}


def test_naming_a_foreign_module_tells_nothing(client: TestClient, registry: Registry) -> None:
    """Module names are per tenant: a name another tenant holds is as free as any other,
    and taking it makes a module of one's own."""
    b = make_key(registry, "b", "writer")
    client.post("/facts", json={"facts": ["B secret."], "module": "bm1"}, headers=b)
    a = make_key(registry, "a", "writer")
    seen = client.post("/facts", json={"facts": ["mine"], "module": "bm1"}, headers=a)
    unseen = client.post("/facts", json={"facts": ["mine too"], "module": "free"}, headers=a)
    assert (seen.status_code, unseen.status_code) == (202, 202)
    assert seen.json()["module"] == "bm1"
    assert [f.text for f in registry.facts.of_module(module_id("a", "bm1"), "a")] == ["mine"]
    assert [f.text for f in registry.facts.of_module(module_id("b", "bm1"), "b")] == ["B secret."]


def test_the_openai_client_sends_its_api_key_as_ours(
    client: TestClient, registry: Registry
) -> None:
    key = registry.api_keys.create("a", "reader")[0]

    def openai_client(api_key: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url="http://testserver/v1", api_key=api_key, http_client=client, max_retries=0
        )

    assert "auto" in {m.id for m in openai_client(key).models.list()}
    with pytest.raises(openai.AuthenticationError):
        openai_client("lm-" + "x" * 43).models.list()
