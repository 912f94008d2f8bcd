"""deploy/kubernetes/: the manifests agree with each other, with the image and with the CLI.

Structural checks with PyYAML (kinds, probes against the container port, the security context,
the Secret keys that the README's Running-in-a-cluster section tells people to create,
kustomization listing every file), plus a strict schema check with ``kubernetes-validate``
(in the test extra).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import options_of

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
DOCS = ROOT / "README.md"
DOCKERFILE = ROOT / "Dockerfile"

EXPECTED_KINDS = {"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
SECRET_ENV = {
    "RECONCILER_GIT_TOKEN",
    "RECONCILER_WEBHOOK_SECRET",
    "RECONCILER_NOTIFY",  # a Slack URL is a secret
    "RECONCILER_NOTIFY_SECRET",
    "RECONCILER_GITHUB_TOKEN",
}


def load_documents() -> dict[str, list[dict[str, Any]]]:
    """Every manifest file (but kustomization.yaml) -> its documents."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        for path in sorted(MANIFESTS.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


DOCUMENTS = load_documents()
RESOURCES = [doc for docs in DOCUMENTS.values() for doc in docs]


def one(kind: str) -> dict[str, Any]:
    found = [doc for doc in RESOURCES if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def container_port(port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container port number it names."""
    for entry in container()["ports"]:
        if port in (entry["containerPort"], entry.get("name")):
            number: int = entry["containerPort"]
            return number
    raise AssertionError(f"port {port!r} is not a port of the container")


def image_uid() -> int:
    match = re.search(r"^ARG UID=(\d+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "the Dockerfile declares no ARG UID=<number>"
    return int(match[1])


def run_options() -> set[str]:
    return options_of("run")


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml names exactly the manifest files in the folder."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(DOCUMENTS)


def test_manifests_are_the_expected_kinds() -> None:
    """One of each: Namespace, ServiceAccount, ConfigMap, Deployment, Service, PodDisruptionBudget."""
    assert sorted(doc["kind"] for doc in RESOURCES) == sorted(EXPECTED_KINDS)
    for doc in RESOURCES:
        assert doc["apiVersion"] and doc["metadata"]["name"], doc


def test_deployment_runs_two_replicas_with_the_dynamodb_lock() -> None:
    """Two replicas need leader election: --lock dynamodb://TABLE."""
    deployment = one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    args = container()["args"]
    assert args[:2] == ["reconciler", "run"]
    assert args[args.index("--lock") + 1] == "dynamodb://reconciler-lock"
    assert args[args.index("--listen") + 1] == "0.0.0.0:8080"


def test_deployment_args_are_flags_of_run() -> None:
    """Every flag in the container's args is a flag that `reconciler run` accepts."""
    options = run_options()
    flags = [arg for arg in container()["args"] if arg.startswith("--")]
    assert "--lock" in flags
    assert set(flags) <= options


def test_probes_hit_healthz_and_readyz_on_the_container_port() -> None:
    """Liveness and startup on /healthz, readiness on /readyz, all on the port the daemon listens on."""
    spec = container()
    listen_port = int(spec["args"][spec["args"].index("--listen") + 1].rpartition(":")[2])
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        http = spec[probe]["httpGet"]
        assert http["path"] == path, probe
        assert container_port(http["port"]) == listen_port, probe


def test_service_maps_port_80_to_the_container_port() -> None:
    """The webhook Service: port 80 -> the container's 8080, selecting the Deployment's pods."""
    service = one("Service")
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    assert container_port(port["targetPort"]) == 8080
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_pods_run_as_the_images_non_root_user_with_nothing_to_escalate() -> None:
    """runAsNonRoot with the Dockerfile's numeric uid, no privilege escalation, no capabilities, read-only root."""
    pod = one("Deployment")["spec"]["template"]["spec"]
    security = container()["securityContext"]
    uid = image_uid()
    assert uid != 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["fsGroup"] == uid
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == uid
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]


def test_state_dir_and_tmp_are_writable_empty_dirs() -> None:
    """With a read-only root, the state dir (and the clone in it) and /tmp are emptyDir mounts."""
    pod = one("Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container()["volumeMounts"]}
    state_dir = one("ConfigMap")["data"]["RECONCILER_STATE_DIR"]
    for path in (state_dir, "/tmp"):
        assert path in mounts, f"{path} is not mounted"
        assert "emptyDir" in volumes[mounts[path]], f"{path} is not an emptyDir"


def test_resources_have_requests_and_limits() -> None:
    """CPU and memory requests and limits are all set."""
    resources = container()["resources"]
    for bound in ("requests", "limits"):
        assert set(resources[bound]) == {"cpu", "memory"}, bound


def test_service_account_carries_the_irsa_role() -> None:
    """The pods use the ServiceAccount whose eks.amazonaws.com/role-arn names an IAM role."""
    account = one("ServiceAccount")
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", role)
    assert one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_config_map_keys_are_flags_of_run() -> None:
    """Every ConfigMap key is RECONCILER_<FLAG> for a flag of `reconciler run`, and none is a secret."""
    config = one("ConfigMap")
    options = run_options()
    ref = container()["envFrom"][0]["configMapRef"]["name"]
    assert ref == config["metadata"]["name"]
    for key, value in config["data"].items():
        assert key not in SECRET_ENV, f"{key} belongs in the Secret"
        assert re.fullmatch(r"RECONCILER_[A-Z_]+", key), key
        flag = "--" + key.removeprefix("RECONCILER_").lower().replace("_", "-")
        assert flag in options, f"{key}: reconciler run has no {flag}"
        assert isinstance(value, str), f"{key}: ConfigMap values must be strings"


def test_secret_refs_name_keys_the_docs_tell_people_to_create() -> None:
    """Tokens, secrets and sinks come from Secret keys that the README's Running-in-a-cluster section creates."""
    docs = DOCS.read_text(encoding="utf-8")
    command = re.search(r"kubectl[^\n]*create secret generic (?P<name>[\w-]+)(?P<rest>(?:[^\n]*\\\n)*[^\n]*)", docs)
    assert command, 'the README\'s "Running in a cluster" has no `kubectl create secret generic` command'
    documented = set(re.findall(r"--from-(?:literal|file)=([\w.-]+)=", command["rest"]))
    refs = {
        env["name"]: env["valueFrom"]["secretKeyRef"]
        for env in container()["env"]
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert set(refs) == SECRET_ENV
    for env, ref in refs.items():
        assert ref["name"] == command["name"], env
        assert ref["key"] in documented, f"{env}: key {ref['key']!r} is not in the documented command"


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_manifest_matches_the_kubernetes_schema(name: str) -> None:
    """Each manifest validates strictly against the Kubernetes API schema (kubernetes-validate)."""
    validator = pytest.importorskip("kubernetes_validate")
    for doc in DOCUMENTS[name]:
        validator.validate(doc, validator.latest_version(), strict=True)
