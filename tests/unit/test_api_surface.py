"""What the API port shows a stranger and a browser (issue #12 item 19): no
metrics (every school's totals, a database query per scrape: those are on
PRODUCER_METRICS_PORT), and an OpenAPI document that declares the bearer
token, so /docs can authorize its calls."""

from __future__ import annotations

from fastapi.testclient import TestClient

from producer.app import create_app


def test_the_api_port_serves_no_metrics():
    api = TestClient(create_app(dispatch=False))
    assert api.get("/metrics").status_code == 404


def test_every_operation_declares_the_bearer_token():
    document = TestClient(create_app(dispatch=False)).get("/openapi.json").json()

    schemes = document["components"]["securitySchemes"]
    assert [(s["type"], s["scheme"]) for s in schemes.values()] == [("http", "bearer")]
    [name] = schemes
    operations = [op for path in document["paths"].values() for op in path.values()]
    assert operations, "the document lists the API's operations"
    assert [op.get("security") for op in operations] == [[{name: []}]] * len(operations)


def test_a_producer_and_a_worker_pool_on_one_host_do_not_share_a_metrics_port():
    from shared.settings import Settings

    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert defaults["producer_metrics_port"] != defaults["metrics_port"]
