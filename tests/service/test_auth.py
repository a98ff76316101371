"""API keys: 401/403/429 with Retry-After, per-key limits and budgets, hashed key files, protected endpoints."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from loadtest.mock_upstream import MockUpstream, Reply, ServerThread
from service.app import create_app
from service.auth import ApiKeyConfig, Authenticator, Principal, hash_key
from service.cli import app as cli
from service.config import ConfigError, Settings
from service.errors import BadRequest, Forbidden, QuotaExceeded, RateLimited, Unauthorized
from service.metrics import sample
from service.state import AppState
from tests.conftest import backend_entry

pytestmark = pytest.mark.integration  # most tests here run servers on loopback

GOOD = {"company": "ACME GmbH", "invoice_date": "2024-03-14", "total_amount": 1190.0, "currency": "EUR"}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.day = dt.datetime(2026, 11, 24, 23, 59, 0, tzinfo=dt.UTC)

    def __call__(self) -> float:
        return self.t


def principal(clock: Clock, **limits: Any) -> Principal:
    return Principal(ApiKeyConfig(name="k", key_sha256="0" * 64, **limits), clock=clock, now=lambda: clock.day)


def test_requests_per_minute_refill_continuously() -> None:
    clock = Clock()
    p = principal(clock, requests_per_minute=2)
    p.admit()
    p.admit()
    with pytest.raises(RateLimited) as e:
        p.admit()
    assert e.value.headers["Retry-After"] == "30" and e.value.details["limit"] == "requests_per_minute"
    clock.t += 30
    p.admit()
    with pytest.raises(RateLimited):
        p.admit()


def test_a_batch_needs_room_for_all_its_items() -> None:
    clock = Clock()
    p = principal(clock, requests_per_minute=3)
    p.admit(1)
    with pytest.raises(RateLimited) as e:
        p.admit(3)
    assert e.value.headers["Retry-After"] == "20"
    clock.t += 20
    p.admit(3)


def test_a_batch_larger_than_the_rate_is_refused_without_a_retry_after() -> None:
    """No wait would ever admit it: a 429 with Retry-After would send a client that honours it round for ever."""
    clock = Clock()
    p = principal(clock, requests_per_minute=5)
    with pytest.raises(BadRequest) as e:
        p.admit(6)
    assert e.value.status == 400 and "Retry-After" not in e.value.headers
    assert e.value.details == {"reason": "batch_over_rate_limit", "items": 6, "key": "k", "max_items": 5}
    assert "at most 5 items" in e.value.message
    p.admit(5)  # nothing was taken by the refusal


def test_tokens_per_minute_are_charged_after_the_call() -> None:
    clock = Clock()
    p = principal(clock, tokens_per_minute=600)
    p.admit()
    p.charge(900, 0.0)  # one big request may overdraw; the debt blocks the next
    with pytest.raises(RateLimited) as e:
        p.admit()
    assert e.value.details["limit"] == "tokens_per_minute" and e.value.headers["Retry-After"] == "31"
    clock.t += 31
    p.admit()


def test_daily_budget_blocks_until_the_next_utc_day() -> None:
    clock = Clock()
    p = principal(clock, daily_budget_usd=0.01)
    p.admit()
    p.charge(100, 0.011)
    with pytest.raises(QuotaExceeded) as e:
        p.admit()
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "60"
    clock.day += dt.timedelta(minutes=2)  # past midnight
    p.admit()


def test_allowed_tasks_backends_and_adhoc() -> None:
    p = principal(Clock(), tasks=["invoice"], backends=["cheap"])
    p.authorize("invoice", "cheap")
    with pytest.raises(Forbidden):
        p.authorize("receipt", "cheap")
    with pytest.raises(Forbidden):
        p.authorize("invoice", "expensive")
    with pytest.raises(Forbidden, match="ad-hoc"):
        p.authorize(None, "cheap")
    principal(Clock(), tasks=["adhoc"]).authorize(None, "any")


def test_authenticator_checks_bearer_keys_by_hash() -> None:
    auth = Authenticator([ApiKeyConfig(name="a", key_sha256=hash_key("sk-a"))])
    assert auth.authenticate("Bearer sk-a").name == "a"  # type: ignore[union-attr]
    for header in (None, "", "Basic sk-a", "Bearer ", "Bearer sk-b"):
        with pytest.raises(Unauthorized) as e:
            auth.authenticate(header)
        assert e.value.status == 401 and "Bearer" in e.value.headers["WWW-Authenticate"]
    assert Authenticator([]).authenticate(None) is None  # off without keys


def test_key_config_errors_stop_start_up(make_settings: Callable[..., Settings]) -> None:
    entry = {"mock": backend_entry("http://127.0.0.1:9/v1")}
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        AppState.build(make_settings(entry, auth={"keys": [{"name": "x", "key_env": "NO_SUCH_KEY_VAR"}]}))
    same = {"keys": [{"name": "x", "key_sha256": hash_key("k")}, {"name": "y", "key_sha256": hash_key("k")}]}
    with pytest.raises(ConfigError, match="same key"):
        AppState.build(make_settings(entry, auth=same))


@pytest.mark.parametrize("value", ["", " , ", ","])
def test_api_keys_variable_set_but_empty_stops_start_up_instead_of_turning_auth_off(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("EXTRACTION_API_KEYS", value)  # e.g. "$SECRET" with the secret missing
    with pytest.raises(ConfigError, match="EXTRACTION_API_KEYS is set but holds no key"):
        AppState.build(make_settings({"mock": backend_entry("http://127.0.0.1:9/v1")}))


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"keys: [unclosed", "cannot be read as YAML"), (b"- a\n", "must hold a mapping with a `keys` list"),
     (b"keys:\n  - {name: x}\n", "keys[0]"), (b"keys: caf\xe9", "cannot be read as YAML")],
)  # fmt: skip
def test_a_broken_key_file_is_a_config_error_naming_it(
    make_settings: Callable[..., Settings], tmp_path: Path, content: bytes, message: str
) -> None:
    keyfile = tmp_path / "keys.yaml"
    keyfile.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        AppState.build(make_settings({"mock": backend_entry("http://127.0.0.1:9/v1")}, auth={"key_file": str(keyfile)}))
    r = CliRunner().invoke(cli, ["keys", "create", "team", "--file", str(keyfile)])
    assert r.exit_code == 2 and "Traceback" not in r.output and keyfile.read_bytes() == content, r.output


def test_keys_create_into_a_folder_or_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["keys", "create", "team", "--file", str(tmp_path)])
    assert r.exit_code == 2 and "is a folder" in r.output, r.output
    r = CliRunner().invoke(cli, ["keys", "create", "team", "--file", str(tmp_path / "missing-dir" / "keys.yaml")])
    assert r.exit_code == 2 and "cannot write the key file" in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_keys_create_warns_of_a_task_the_config_does_not_have(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["keys", "create", "t", "--file", str(tmp_path / "k.yaml"), "--tasks", "nope,invoice"])
    assert r.exit_code == 0 and "task 'nope' is not in this config" in r.output and "'invoice'" not in r.output


def test_keys_create_stores_only_the_hash(tmp_path: Path) -> None:
    file = tmp_path / "keys.yaml"
    r = CliRunner().invoke(cli, ["keys", "create", "team", "--file", str(file), "--tasks", "invoice", "--rpm", "5"])
    assert r.exit_code == 0, r.output
    key = r.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-ex-") and key not in file.read_text()
    stored = yaml.safe_load(file.read_text())["keys"]
    assert stored == [{"name": "team", "key_sha256": hash_key(key), "tasks": ["invoice"], "requests_per_minute": 5}]
    before = file.read_text()
    again = CliRunner().invoke(cli, ["keys", "create", "team", "--file", str(file)])
    assert again.exit_code == 2 and file.read_text() == before


def test_keys_create_under_a_file_or_onto_a_fifo_is_one_line_and_a_symlink_is_followed(tmp_path: Path) -> None:
    (tmp_path / "some_file").write_text("x")
    r = CliRunner().invoke(cli, ["keys", "create", "a", "--file", str(tmp_path / "some_file" / "k.yaml")])
    assert r.exit_code == 2 and "cannot write the key file" in r.output and "Not a directory" in r.output, r.output
    assert "Traceback" not in r.output  # was NotADirectoryError from the cleanup
    fifo = tmp_path / "fifo"  # a FIFO stands in for a device node, which the rename replaced
    os.mkfifo(fifo)
    r = CliRunner().invoke(cli, ["keys", "create", "a", "--file", str(fifo)])
    assert r.exit_code == 2 and "it is a FIFO" in r.output and stat.S_ISFIFO(fifo.stat().st_mode), r.output
    target = tmp_path / "keys.yaml"
    (tmp_path / "link.yaml").symlink_to(target.name)
    assert CliRunner().invoke(cli, ["keys", "create", "a", "--file", str(tmp_path / "link.yaml")]).exit_code == 0
    assert (tmp_path / "link.yaml").is_symlink() and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [k["name"] for k in yaml.safe_load(target.read_text())["keys"]] == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "keys.yaml", "link.yaml", "some_file"]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["", ], "NAME: a key needs a name"), (["  "], "NAME: a key needs a name"),
     (["a", "--daily-budget-usd", "inf"], "--daily-budget-usd: Input should be a finite number"),
     (["a", "--daily-budget-usd", "nan"], "--daily-budget-usd: Input should be a finite number"),
     (["a", "--daily-budget-usd", "0"], "--daily-budget-usd: Input should be greater than 0")],
)  # fmt: skip
def test_keys_create_refuses_an_empty_name_and_a_budget_that_is_no_finite_amount(
    tmp_path: Path, args: list[str], message: str
) -> None:
    r = CliRunner().invoke(cli, ["keys", "create", *args, "--file", str(tmp_path / "k.yaml")])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "k.yaml").exists()


class Api:
    def __init__(self, app: Any, url: str) -> None:
        self.app = app
        self.http = httpx.Client(base_url=url, timeout=30)

    def extract(self, key: str | None, **body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.http.post("/v1/extract", json={"task": "invoice", "text": "x", **body}, headers=headers)


@pytest.fixture
def api(
    upstream: MockUpstream, make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Api]:
    url = f"{upstream.url}/v1"  # type: ignore[attr-defined]
    keyfile = tmp_path / "keys.yaml"
    keyfile.write_text(yaml.safe_dump({"keys": [
        {"name": "limited", "key_sha256": hash_key("sk-limited"), "tasks": ["invoice"], "backends": ["mock"],
         "requests_per_minute": 2},
    ]}))  # fmt: skip
    monkeypatch.setenv("EXTRACTION_API_KEYS", "sk-admin-1, sk-admin-2")
    settings = make_settings(
        {"mock": backend_entry(url), "other": backend_entry(url, model="other-model")},
        auth={"key_file": str(keyfile), "protect_metrics": True},
        limits={"max_body_bytes": 20_000},
    )
    app = create_app(settings)
    with ServerThread(app) as server:
        a = Api(app, server.url)
        yield a
        a.http.close()


def test_http_auth_answers_401_403_429_and_serves_good_keys(api: Api, upstream: MockUpstream) -> None:
    upstream.enqueue(*(Reply(content=json.dumps(GOOD)) for _ in range(4)))
    r = api.extract(None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert api.extract("sk-wrong").status_code == 401
    assert api.extract("sk-admin-2").status_code == 200  # EXTRACTION_API_KEYS
    r = api.extract("sk-limited", task="receipt")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = api.http.post("/v1/extract", json={"task": "invoice", "text": "x"},
                      headers={"Authorization": "Bearer sk-limited", "X-Extraction-Backend": "other"})  # fmt: skip
    assert r.status_code == 403 and "backend 'other'" in r.json()["error"]["message"]
    assert api.extract("sk-limited").status_code == 200
    assert api.extract("sk-limited").status_code == 200
    r = api.extract("sk-limited")
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) > 0
    assert len(upstream.requests) == 3  # rejected requests never reach the upstream
    registry = api.app.state.extraction.metrics.registry
    assert (
        sample(registry, "extraction_requests_total", task="-", backend="-", outcome="rejected") == 5
    )  # 2 x 401, 2 x 403, 1 x 429


def test_http_batch_checks_each_item_and_counts_items_against_the_rate(api: Api, upstream: MockUpstream) -> None:
    upstream.enqueue(Reply(content=json.dumps(GOOD)))
    items = [{"task": "invoice", "text": "x"}, {"task": "receipt", "text": "y"}]
    r = api.http.post("/v1/extract/batch", json={"items": items}, headers={"Authorization": "Bearer sk-limited"})
    assert r.status_code == 200
    assert [(i["ok"], i["status"]) for i in r.json()["results"]] == [(True, 200), (False, 403)]
    r = api.http.post("/v1/extract/batch", json={"items": items}, headers={"Authorization": "Bearer sk-limited"})
    assert r.status_code == 429


def test_protected_metrics_and_open_health(api: Api) -> None:
    assert api.http.get("/metrics").status_code == 401
    assert api.http.get("/metrics", headers={"Authorization": "Bearer sk-admin-1"}).status_code == 200
    assert api.http.get("/healthz").status_code == 200
    catalogue = api.http.get("/v1/backends", headers={"Authorization": "Bearer sk-admin-1"}).text
    assert "sk-" not in catalogue and hash_key("sk-limited") not in catalogue


def test_the_catalogue_is_behind_the_keys_and_shows_a_key_only_its_own(api: Api, upstream: MockUpstream) -> None:
    for path in ("/v1/tasks", "/v1/tasks/invoice", "/v1/backends", "/v1/nothing"):
        r = api.http.get(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
        assert api.http.get(path, headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
    limited, admin = ({"Authorization": f"Bearer {k}"} for k in ("sk-limited", "sk-admin-1"))
    assert [t["name"] for t in api.http.get("/v1/tasks", headers=limited).json()] == ["invoice"]
    assert len(api.http.get("/v1/tasks", headers=admin).json()) == 6
    assert api.http.get("/v1/tasks/invoice", headers=limited).json()["schema"]["type"] == "object"
    r = api.http.get("/v1/tasks/receipt", headers=limited)  # exists, but not for this key: as unknown as "nope"
    assert r.status_code == 404 and r.json()["error"]["details"] == {"available": ["invoice"]}
    assert api.http.get("/v1/tasks/receipt", headers=admin).status_code == 200
    backends = api.http.get("/v1/backends", headers=limited).json()
    assert [(b["name"], b["base_url"]) for b in backends] == [("mock", None)]
    r = api.http.get("/v1/backends", headers=admin)
    assert [(b["name"], b["base_url"]) for b in r.json()] == [("mock", None), ("other", None)]
    assert upstream.url.removeprefix("http://") not in r.text  # type: ignore[attr-defined]
    registry = api.app.state.extraction.metrics.registry  # catalogue calls are not extractions
    assert sample(registry, "extraction_requests_total", task="-", backend="-", outcome="rejected") == 0


BIG = b'{"task": "invoice", "text": "' + b"x" * 30_000 + b'"}'  # over the fixture's max_body_bytes


@pytest.mark.parametrize(
    ("body", "chunked"),
    [
        (b'{"task": "invoice", "text": ', False),  # malformed JSON
        (b'{"task": "invoice", "text": "\xff"}', False),  # invalid UTF-8
        (b'{"task": "invoice", "text": "x", "surprise": 1}', False),  # not our shape
        (BIG, False),
        (BIG, True),  # no Content-Length: found too large only while reading
    ],
)
@pytest.mark.parametrize("path", ["/v1/extract", "/v1/extract/batch"])
def test_without_a_valid_key_any_body_gets_401_first(api: Api, body: bytes, chunked: bool, path: str) -> None:
    def send(auth: dict[str, str]) -> httpx.Response:
        content = iter([body[:100], body[100:]]) if chunked else body
        return api.http.post(path, content=content, headers={"content-type": "application/json"} | auth)

    for auth in ({}, {"Authorization": "Bearer sk-wrong"}):
        r = send(auth)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
    registry = api.app.state.extraction.metrics.registry
    assert sample(registry, "extraction_requests_total", task="-", backend="-", outcome="rejected") == 2
    r = send({"Authorization": "Bearer sk-admin-1"})  # with a key, the body's own error
    assert r.status_code == (413 if body is BIG else 400)
    assert r.json()["error"]["code"] == ("payload_too_large" if body is BIG else "bad_request")


def test_with_keys_off_base_urls_show_only_when_the_operator_says_so(
    upstream: MockUpstream, make_settings: Callable[..., Settings]
) -> None:
    url = f"{upstream.url}/v1"  # type: ignore[attr-defined]
    for show in (False, True):
        app = create_app(make_settings({"mock": backend_entry(url)}, auth={"show_base_urls": show}))
        with ServerThread(app) as server:
            backends = httpx.get(f"{server.url}/v1/backends").json()
        assert backends[0]["base_url"] == (url if show else None)
