"""A schema-driven fuzz pass: requests generated from the service's own OpenAPI document
(schemathesis strategies driven by hypothesis) never get a server error, and every error
is JSON {"error", "detail"}."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from s3t.service import create_app
from s3t.service.settings import ServiceSettings
from s3t.system.api import S3T


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(system: S3T) -> None:
    limits = ServiceSettings(
        require_tokens=False, max_inputs=8, max_chars=200, trusted_hosts=("*",)
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(system, limits))
    checked: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            database=None,
            derandomize=True,  # the same requests on every run: CI never flickers
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            response = case.call()
            assert response.status_code < 500 or response.status_code == 503, response.text
            if response.status_code >= 400:
                assert {"error", "detail"} <= set(response.json()), response.text

        fuzz()
        checked.append(operation.label)
    assert len(checked) >= 15  # every operation of the API was fuzzed
