"""infra/k8s: the KubeRay and Kubernetes manifests parse and agree on what matters.

No Kubernetes here: these checks read the YAML (image, GPUs, entrypoints, schedules, shared
volumes, secrets, RBAC) and keep the four manifests that repeat one Ray cluster in step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra import schedule

pytestmark = pytest.mark.unit

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"
IMAGE = "ghcr.io/YOUR-ORG/incept:0.1.0"
TRAIN = "incept train --config configs/imagenet.yaml train.num_workers=32 train.batch_size=32"
RETRAIN = "incept retrain --src /mnt/shared/imagenet --config configs/imagenet.yaml --workdir /mnt/shared/work train.num_workers=32 train.batch_size=32"


def load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def one(name: str, kind: str) -> dict:
    docs = [d for d in load(name) if d["kind"] == kind]
    assert len(docs) == 1, (name, kind)
    return docs[0]


def rayjob_specs() -> dict[str, dict]:
    """Every RayJob spec in the folder, by where it lives."""
    configmap = one("cronjob-retrain.yaml", "ConfigMap")
    embedded = yaml.safe_load(configmap["data"]["rayjob.yaml"])
    assert embedded["kind"] == "RayJob" and embedded["apiVersion"] == "ray.io/v1"
    return {
        "train": one("rayjob-train.yaml", "RayJob")["spec"],
        "raycronjob": one("raycronjob-retrain.yaml", "RayCronJob")["spec"]["jobTemplate"],
        "cronjob": embedded["spec"],
    }


def cluster_specs() -> dict[str, dict]:
    specs = {name: spec["rayClusterSpec"] for name, spec in rayjob_specs().items()}
    specs["raycluster"] = one("raycluster.yaml", "RayCluster")["spec"]
    return specs


def pod_templates() -> list[tuple[str, str, dict]]:
    """(cluster, group, pod spec) for the head and every worker group of every cluster."""
    out = []
    for name, spec in cluster_specs().items():
        out.append((name, "head", spec["headGroupSpec"]["template"]["spec"]))
        for group in spec["workerGroupSpecs"]:
            out.append((name, group["groupName"], group["template"]["spec"]))
    return out


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_every_file_parses_with_the_expected_kinds():
    kinds = {p.name: [d["kind"] for d in load(p.name)] for p in sorted(K8S.glob("*.yaml"))}
    assert kinds == {
        "cronjob-retrain.yaml": ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"],
        "raycluster.yaml": ["RayCluster"],
        "raycronjob-retrain.yaml": ["RayCronJob"],
        "rayjob-train.yaml": ["RayJob"],
        "shared-storage.yaml": ["PersistentVolumeClaim"],
    }


def test_one_image_and_the_installed_ray_version_everywhere():
    import ray

    for name, spec in cluster_specs().items():
        assert spec["rayVersion"] == ray.__version__, name
    for name, group, pod in pod_templates():
        assert [c["image"] for c in pod["containers"]] == [IMAGE], (name, group)
    for name, spec in rayjob_specs().items():
        submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
        assert submitter["image"] == IMAGE, name
    for path in K8S.glob("*.yaml"):
        for line in path.read_text().splitlines():
            if f"image: {IMAGE}" in line:
                assert "CHANGE" in line, (path.name, line)


def test_gpu_workers_and_a_cpu_only_head():
    for name, group, pod in pod_templates():
        (container,) = pod["containers"]
        res = container["resources"]
        if group == "head":
            assert "nvidia.com/gpu" not in res.get("limits", {}), name
            continue
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 8, name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    for name, spec in cluster_specs().items():
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name


def test_job_clusters_are_fixed_size_and_torn_down():
    for name, spec in rayjob_specs().items():
        assert spec["shutdownAfterJobFinishes"] is True, name
        for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
            assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] > 0, name
    long_lived = one("raycluster.yaml", "RayCluster")["spec"]
    assert long_lived["enableInTreeAutoscaling"] is True
    (gpu,) = long_lived["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]


def test_entrypoints():
    specs = rayjob_specs()
    assert specs["train"]["entrypoint"] == f"cd /app && {TRAIN}"
    assert specs["raycronjob"]["entrypoint"] == specs["cronjob"]["entrypoint"] == f"cd /app && {RETRAIN}"


def test_both_retrain_schedulers_run_the_same_job():
    # The fallback must stay a drop-in for RayCronJob: same RayJob spec, same schedule.
    specs = rayjob_specs()
    assert specs["raycronjob"] == specs["cronjob"]
    cron = one("raycronjob-retrain.yaml", "RayCronJob")["spec"]["schedule"]
    cronjob = one("cronjob-retrain.yaml", "CronJob")["spec"]
    assert cronjob["schedule"] == cron
    schedule.validate_cron(cron)  # the same 5-field form `incept schedule --cron` takes
    assert cronjob["timeZone"] == "Etc/UTC"  # as incept schedule reads cron
    assert cronjob["concurrencyPolicy"] == "Forbid"
    assert cronjob["startingDeadlineSeconds"] > 0


def test_shared_volume_and_shm_on_every_ray_pod():
    pvc = one("shared-storage.yaml", "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "incept-shared"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, group, pod in pod_templates():
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == "incept-shared", (name, group)
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts == {"shared": "/mnt/shared", "dshm": "/dev/shm"}, (name, group)


def test_mlflow_and_ray_token_come_from_secrets():
    for name, group, pod in pod_templates():
        env = env_of(pod["containers"][0])
        uri = env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]
        assert (uri["name"], uri["key"]) == ("incept-mlflow", "tracking-uri"), (name, group)
        for optional in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert env[optional]["valueFrom"]["secretKeyRef"]["optional"] is True
        assert env["INCEPT_WORKDIR"]["value"].startswith("/mnt/shared/")
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "incept-ray-token"
    for name, spec in rayjob_specs().items():
        env = env_of(spec["submitterPodTemplate"]["spec"]["containers"][0])
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"


def test_no_secret_values_and_no_exposed_services():
    for path in K8S.glob("*.yaml"):
        text = path.read_text()
        assert "LoadBalancer" not in text and "NodePort" not in text, path.name
        for doc in load(path.name):
            _assert_no_literal_secrets(doc, path.name)


def _assert_no_literal_secrets(node, where):
    if isinstance(node, dict):
        if "name" in node and "value" in node:
            name = str(node["name"]).upper()
            if any(m in name for m in ("PASSWORD", "TOKEN", "SECRET")):
                raise AssertionError(f"{where}: {node['name']} has a literal value")
        for value in node.values():
            _assert_no_literal_secrets(value, where)
    elif isinstance(node, list):
        for value in node:
            _assert_no_literal_secrets(value, where)


def test_fallback_cronjob_may_create_rayjobs_and_nothing_else():
    role = one("cronjob-retrain.yaml", "Role")
    assert role["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list"]}
    ]
    binding = one("cronjob-retrain.yaml", "RoleBinding")
    account = one("cronjob-retrain.yaml", "ServiceAccount")["metadata"]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    pod = one("cronjob-retrain.yaml", "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account
    (container,) = pod["containers"]
    script = container["args"][0]
    assert "kubectl create -f /etc/incept/rayjob.yaml" in script
    assert container["volumeMounts"][0]["mountPath"] == "/etc/incept"
    assert pod["volumes"][0]["configMap"]["name"] == one("cronjob-retrain.yaml", "ConfigMap")["metadata"]["name"]
    # Its RayJobs carry the label its one-at-a-time check selects on.
    embedded = yaml.safe_load(one("cronjob-retrain.yaml", "ConfigMap")["data"]["rayjob.yaml"])
    assert embedded["metadata"]["labels"]["app.kubernetes.io/component"] == "retrain"
    assert "-l app.kubernetes.io/component=retrain" in script
