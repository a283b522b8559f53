"""schemathesis against the app's own OpenAPI schema, on a real server with the tiny model: whatever the
generated request, no 5xx, only statuses the schema declares, and the content types it declares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from voxtral_local.api import create_app
from voxtral_local.config import Settings

from .conftest import running_server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def fuzz_url(tiny_model_dir: Path) -> Iterator[str]:
    """A server of its own: a model given by directory, so a pull answers at once without the hub."""
    with running_server(model=str(tiny_model_dir), model_aliases="whisper-1") as url:
        yield url


# The schema as the app builds it (building the app loads nothing); the cases go to the running server.
schema = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_only_declared_answers(case: schemathesis.Case, fuzz_url: str) -> None:
    case.call_and_validate(base_url=fuzz_url, checks=CHECKS, timeout=60)


def test_schema_declares_the_multipart_bodies_and_no_422(fuzz_url: str) -> None:
    import httpx

    spec = httpx.get(f"{fuzz_url}/openapi.json").json()
    bodies = {
        path: spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        for path in ("/v1/audio/transcriptions", "/v1/audio/translations")
    }
    for body in bodies.values():
        assert body["properties"]["file"] == {"type": "string", "format": "binary", "description": "The audio file."}
        assert {"file", "model"} <= set(body["required"])
        assert body["additionalProperties"] is False
    assert {"timestamp_granularities[]", "include[]"} <= set(bodies["/v1/audio/transcriptions"]["properties"])
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    errors = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["400"]
    assert errors["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
