"""schemathesis against the live OpenAPI schema: no 500s, and every response matches what /docs promises."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import content_type_conformance
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from loadtest.mock_upstream import MockUpstream, ServerThread
from service.app import create_app
from service.config import Settings
from tests.conftest import backend_entry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.conftest import write_config

    mock = MockUpstream()
    with ServerThread(mock.app) as upstream:
        path = write_config(tmp_path_factory.mktemp("fuzz") / "config.yaml",
                            {"mock": backend_entry(f"{upstream.url}/v1", api_key_env=None, kind="vllm")})  # fmt: skip
        with ServerThread(create_app(Settings(config=path))) as api:  # type: ignore[call-arg]
            yield api.url


@schemathesis.check
def no_internal_error(ctx: Any, response: Any, case: Any) -> None:
    """502/503/504 are documented answers about upstreams and deadlines; a 500 never is."""
    if response.status_code == 500:
        raise AssertionError(f"500 from {case.method} {case.path}: {response.text[:300]}")


CHECKS = [no_internal_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_api_never_errors_and_matches_its_schema(live: str) -> None:
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            case.call_and_validate(checks=CHECKS)

        run()
