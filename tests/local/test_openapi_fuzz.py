"""A bounded schemathesis run over the server's own OpenAPI: no 5xx, no response that breaks
the schema. Chat completions are left to their own tests (random prompts are slow to generate).

schemathesis' pytest plugin does not work with pytest 9.2 ('Function' object has no attribute
'_nodeid'), so its strategies are driven with hypothesis directly.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

EXAMPLES = 12


@pytest.mark.slow
def test_api_has_no_server_errors_and_matches_its_schema(backend):
    root = backend.base_url.removesuffix("/v1")
    schema = schemathesis.openapi.from_url(f"{root}/openapi.json").exclude(
        path_regex="chat/completions"
    )
    headers = {"Authorization": f"Bearer {backend.api_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            case.call_and_validate(
                base_url=root,
                headers=headers,
                checks=[not_a_server_error, response_schema_conformance],
            )

        check()
