"""A method a path does not take is a 405 that lists the methods it does."""

from __future__ import annotations

from fastapi.testclient import TestClient

from producer.app import create_app
from shared.runtime import current


def test_a_wrong_method_on_an_api_path_lists_the_methods_it_takes(database_url):
    with TestClient(create_app(current(), dispatch=False)) as api:
        answer = api.delete("/v1/batches")
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "GET, POST"
