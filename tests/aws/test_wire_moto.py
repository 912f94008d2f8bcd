"""What goes over the wire to API Gateway, seen by a real proxy in front of moto_server (DESIGN §10).

* PutRestApi receives the committed definition text, byte for byte;
* a CreateDeployment whose answer is lost is not sent again blindly: the
  backend looks for a deployment of that hash first, so each definition has
  exactly one deployment, and the next plan is in sync.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.aws.conftest import Aws, AwsRepo
from tests.aws.proxy import lossy_proxy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEPLOYMENTS = r"/restapis/[^/]+/deployments"

PETS_SPECS = """\
apiVersion: reconciler/v1
kind: RestApi
metadata: {name: pets}
spec:
  definition: pets.yaml
  failOnWarnings: false  # moto then skips its strict OpenAPI check, which refuses the unquoted date AWS imports
---
apiVersion: reconciler/v1
kind: Stage
metadata: {name: prod}
spec:
  api: pets
  variables: {petsHost: pets.example.com}
"""


def test_put_rest_api_receives_the_committed_text(aws_repo: AwsRepo, aws: Aws) -> None:
    """The body of PutRestApi is the committed YAML itself (yes/on/0755 untouched), not a JSON re-serialisation.

    moto's importer needs a ``uri`` and ``httpMethod`` on every integration, mock ones included (AWS does
    not), so the mock OPTIONS integration gets both here.
    """
    text = (EXAMPLES / "pets-openapi3.yaml").read_text(encoding="utf-8")
    committed = text.replace("type: mock\n", "type: mock\n        httpMethod: POST\n        uri: https://example.com\n")
    committed_bytes = committed.encode("utf-8")
    aws_repo.write("deploy_specs/pets.yaml", committed)
    aws_repo.write("deploy_specs/specs.yaml", PETS_SPECS)
    aws_repo.commit("pets, as committed")
    with lossy_proxy(aws.url) as proxy:
        result = aws_repo.cli("apply", "--backend", "aws", "--endpoint-url", proxy.url, "--region", "us-east-1")
    assert result.code == 0, result.stderr
    bodies = [r.body for r in proxy.matching("PUT", r"/restapis/[^/]+")]
    assert bodies and all(body == committed_bytes for body in bodies)
    assert b"enum: [yes, no, on, off]" in bodies[0]


def test_lost_create_deployment_answer_still_makes_one_deployment_per_definition(aws_repo: AwsRepo, aws: Aws) -> None:
    """CreateDeployment acted on but its answer lost: no second deployment, apply succeeds, plan in sync."""
    with lossy_proxy(aws.url) as proxy:
        proxy.drop, proxy.drops_left = ("POST", re.compile(DEPLOYMENTS)), 1
        result = aws_repo.cli("apply", "--backend", "aws", "--endpoint-url", proxy.url, "--region", "us-east-1")
        assert proxy.drops_left == 0  # the answer was lost
    assert result.code == 0, result.stderr
    hashes = [json.loads(d["description"])["sha256"] for d in aws.deployments()]
    assert len(hashes) == len(set(hashes)) == 2  # openapi.yaml and openapi-v1.yaml, once each
    assert aws_repo.aws_json("plan")["in_sync"] is True


def test_read_maps_every_deployment_to_its_hash(aws_repo: AwsRepo, aws: Aws) -> None:
    """A stage on a second deployment of the same definition (made by an older version) is not drift."""
    assert aws_repo.aws("apply").code == 0
    api_id = aws.api()["id"]
    prod = aws.stages()["prod"]
    original = next(d for d in aws.deployments() if d["id"] == prod["deploymentId"])
    twin = aws.apigateway.create_deployment(restApiId=api_id, description=original["description"])
    patch = [{"op": "replace", "path": "/deploymentId", "value": twin["id"]}]
    aws.apigateway.update_stage(restApiId=api_id, stageName="prod", patchOperations=patch)
    plan = aws_repo.aws_json("plan")
    assert plan["in_sync"] is True, plan["actions"]
    status = aws_repo.aws_json("status")
    assert status["stages"]["orders/prod"]["definition_sha256"] == json.loads(original["description"])["sha256"]
