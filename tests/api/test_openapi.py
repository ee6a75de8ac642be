import io

import pytest
import yaml
from django.core.management import call_command
from rest_framework.test import APIClient


def test_schema_is_valid_openapi_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out), stderr=io.StringIO())
    schema = yaml.safe_load(out.read_text())
    assert schema["openapi"].startswith("3.")
    operations = {(path, method) for path, item in schema["paths"].items() for method in item}
    assert ("/api/v1/jobs/", "post") in operations and ("/api/v1/jobs/{job_id}/cancel/", "post") in operations
    create = schema["paths"]["/api/v1/jobs/"]["post"]
    assert set(create["responses"]) >= {"202", "400", "401", "413", "422", "429", "503"}
    assert "examples" in create["requestBody"]["content"]["application/json"]
    assert create["security"] == [{"tokenAuth": []}]
    assert "security" not in schema["paths"]["/api/v1/health/"]["get"]  # no token needed
    # Images in storage: the retention's expiry on jobs, each image's state, a 410 for an expired one, the store.
    components = schema["components"]["schemas"]
    for name in ("JobDetail", "JobSummary"):
        assert components[name]["properties"]["expires_at"]["nullable"] is True, name
    assert {"expired", "png_base64", "url"} <= set(components["Image"]["properties"])
    image_route = schema["paths"]["/api/v1/jobs/{job_id}/images/{index}.png"]["get"]
    assert {"200", "404", "410", "503"} <= set(image_route["responses"])
    assert "storage" in components["Health"]["properties"]


@pytest.mark.django_db
def test_schema_and_docs_are_served_without_a_cdn():
    client = APIClient()
    schema = client.get("/api/schema/")
    assert schema.status_code == 200 and b"openapi: 3" in schema.content
    docs = client.get("/api/docs/")
    page = docs.content.decode()
    assert docs.status_code == 200 and "swagger-ui" in page
    assert "cdn" not in page.lower() and "/static/drf_spectacular_sidecar/swagger-ui-dist/" in page
    assert client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js").status_code == 200
