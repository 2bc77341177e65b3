"""The registry against real `mlflow server` processes (plain and basic-auth) and the embedded
SQLite default: registration, idempotency, look-ups, alias moves under concurrency, loading
and prediction, and the CLI's failure lines.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infra import registry, tracking
from pipelines.errors import UserError

TAGS = {"data_fingerprint": "fp-123", "config_sha256": "c" * 64, "git_commit": "abc1234", "ray_job_id": ""}
METRICS = {"top1_1crop": 0.61, "top5_1crop": 0.83}


def _name(prefix: str = "incept-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _register(tiny_model, new_run, name: str, *, seed: int = 0, alias="challenger", metrics=METRICS):
    module, metadata, example = tiny_model(seed=seed)
    run_id = new_run()
    info = registry.register(
        model=module, input_example=example, metadata=metadata, metrics=metrics,
        tags=TAGS, run_id=run_id, model_name=name, alias=alias,
    )
    return info, run_id


def _aliases(name: str) -> dict[str, str]:
    import mlflow

    return {a: str(v) for a, v in mlflow.MlflowClient().get_registered_model(name).aliases.items()}


def _images(tmp_path, n: int = 3) -> list[str]:
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        size = (48 + 8 * i, 40)  # not square, not the model's size: the crop does the work
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------------------------
# Registration, idempotency, look-ups


@pytest.mark.e2e
def test_register_is_idempotent_and_show_reads_everything_back(mlflow_server, use_server, tiny_model, new_run, capsys):
    import argparse

    import mlflow

    from infra.commands.registry import run_show

    use_server(mlflow_server)
    name = _name()
    info, run_id = _register(tiny_model, new_run, name)
    assert info.created_now and info.version == "1"
    assert info.aliases == ["challenger"]
    assert info.metrics == METRICS
    assert info.tags["run_id"] == run_id and info.tags["data_fingerprint"] == "fp-123"
    assert "ray_job_id" not in info.tags  # empty: there was no Ray job
    assert info.model_id and info.source == f"models:/{info.model_id}"
    client = mlflow.MlflowClient()
    logged = client.get_logged_model(info.model_id)
    assert logged.experiment_id == client.get_run(run_id).info.experiment_id  # not Default ("0")
    assert str(logged.status) == "READY"

    # A rerun after a failure: the same version comes back, nothing is duplicated. Its evaluation
    # (training's, on data.val) names the validation set this time.
    val = {"val_fingerprint": "fp-val-0", "val_shards": "/data/val-0"}
    module, metadata, example = tiny_model()
    again = registry.register(model=module, input_example=example, metadata=metadata, metrics=METRICS,
                              tags=TAGS, run_id=run_id, model_name=name, **val)
    assert not again.created_now and again.version == info.version
    assert again.metrics == METRICS and (again.val_fingerprint, again.val_shards) == ("fp-val-0", "/data/val-0")
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
    assert [v.version for v in versions] == ["1"]
    logged = len(client.get_logged_model(info.model_id).metrics)
    # ... and a rerun never drags the alias back from a newer version, nor logs the same evaluation twice.
    newer = client.create_model_version(name, source=info.source, run_id=new_run(), model_id=info.model_id).version
    client.set_registered_model_alias(name, "challenger", newer)
    registry.register(model=module, input_example=example, metadata=metadata, metrics=METRICS,
                      tags=TAGS, run_id=run_id, model_name=name, **val)
    assert _aliases(name) == {"challenger": newer}
    assert len(client.get_logged_model(info.model_id).metrics) == logged
    client.set_registered_model_alias(name, "challenger", "1")

    # Metrics: on the LoggedModel (what get_model_info shows) and on the source run.
    model_info = mlflow.models.get_model_info(f"models:/{name}@challenger")
    assert {m.key: m.value for m in model_info.metrics} == METRICS
    assert mlflow.MlflowClient().get_run(run_id).data.metrics == METRICS
    # The data config travels in the MLmodel file.
    assert model_info.metadata["classes"] == metadata["classes"]
    assert model_info.metadata["resolution"] == 32 and model_info.metadata["crop_fraction"] == 0.875

    for ref in (f"{name}@challenger", f"{name}/1", f"models:/{name}@challenger", f"models:/{name}/1"):
        assert registry.resolve(ref) == registry.VersionRef(name, "1", "challenger" if "@" in ref else None)
    shown = registry.show(f"{name}@challenger")
    assert shown.metrics == METRICS and shown.run_id == run_id
    assert shown.data_config["num_classes"] == 7 and shown.data_config["resolution"] == 32

    # Re-evaluation: the last evaluation's metrics are the version's, with the set they came from;
    # an older one's 144-crop figures on another set no longer show.
    first = registry.set_version_metrics(f"{name}/1", {"top1_1crop": 0.65, "top1_144crop": 0.7, "top5_144crop": 0.9},
                                         val_fingerprint="fp-val-a", val_shards="/data/val-a")
    assert first.metrics == {"top1_1crop": 0.65, "top1_144crop": 0.7, "top5_144crop": 0.9}
    assert (first.val_fingerprint, first.val_shards) == ("fp-val-a", "/data/val-a")
    registry.set_version_metrics(f"{name}/1", {"top1_1crop": 0.64, "top1_10crop": 0.66},
                                 val_fingerprint="0123456789abcdef-val-b", val_shards="s3://KEY:SECRET@bucket/val-b")
    shown = registry.show(f"{name}/1")
    assert shown.metrics == {"top1_1crop": 0.64, "top1_10crop": 0.66}
    assert shown.val_fingerprint == "0123456789abcdef-val-b" and shown.val_shards == "s3://***@bucket/val-b"
    assert shown.tags["evaluation.metrics"] == "top1_10crop,top1_1crop"
    assert "SECRET" not in json.dumps(shown.to_dict())
    run_show(argparse.Namespace(ref=f"{name}/1", json=False))
    assert "metrics:    on validation set 0123456789ab (s3://***@bucket/val-b)" in capsys.readouterr().out

    # A version from before these tags (the bare `newer` one, on the same LoggedModel): every
    # metric it holds, newest value per name, from no named set.
    old_style = registry.show(f"{name}/{newer}")
    assert old_style.metrics == {"top1_1crop": 0.64, "top5_1crop": 0.83, "top1_10crop": 0.66, "top1_144crop": 0.7, "top5_144crop": 0.9}
    assert old_style.val_fingerprint is None
    run_show(argparse.Namespace(ref=f"{name}/{newer}", json=False))
    assert "metrics:    validation set not recorded" in capsys.readouterr().out

    listed = {m["name"]: m for m in registry.list_models()}
    assert listed[name]["aliases"] == {"challenger": "1"}
    listed_1 = next(v for v in listed[name]["versions"] if v["version"] == "1")
    assert listed_1["metrics"] == shown.metrics and listed_1["val_fingerprint"] == "0123456789abcdef-val-b"


@pytest.mark.e2e
def test_resolve_errors_name_what_exists(mlflow_server, use_server, clone_model):
    use_server(mlflow_server)
    name = clone_model()
    with pytest.raises(UserError, match=rf"no registered model 'nope-{name}'.*models: .*{name}"):
        registry.resolve(f"nope-{name}@champion")
    with pytest.raises(UserError, match=r"has no alias 'champion'; aliases: challenger -> 1"):
        registry.resolve(f"{name}@champion")
    with pytest.raises(UserError, match=r"has no version 9; versions: 1"):
        registry.resolve(f"{name}/9")
    with pytest.raises(UserError, match="expected NAME@ALIAS or NAME/VERSION"):
        registry.resolve(name)
    with pytest.raises(UserError, match="unknown model-version metric 'accuracy'"):
        registry.set_version_metrics(f"{name}/1", {"accuracy": 0.5}, val_fingerprint="fp", val_shards="/data/val")


@pytest.mark.e2e
def test_version_without_logged_model_keeps_metrics_in_tags(mlflow_server, use_server, new_run):
    """The older-server path: a version registered from runs:/ has no LoggedModel behind it."""
    import mlflow

    use_server(mlflow_server)
    name = _name()
    client = mlflow.MlflowClient()
    run_id = new_run()
    client.create_registered_model(name)
    version = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id).version
    info = registry.set_version_metrics(f"{name}/{version}", {"top1_1crop": 0.5}, val_fingerprint="fp-a", val_shards="/data/a")
    assert info.metrics == {"top1_1crop": 0.5} and info.val_fingerprint == "fp-a"
    assert client.get_model_version(name, version).tags["metric.top1_1crop"] == "0.5"
    # Another evaluation with other protocols: its metrics only, though the older tag stays.
    info = registry.set_version_metrics(f"{name}/{version}", {"top1_10crop": 0.55}, val_fingerprint="fp-b", val_shards="/data/b")
    assert info.metrics == {"top1_10crop": 0.55} and (info.val_fingerprint, info.val_shards) == ("fp-b", "/data/b")


# ---------------------------------------------------------------------------------------------
# Alias moves


@pytest.mark.e2e
def test_promote_and_rollback_move_aliases_and_write_the_decision(mlflow_server, use_server, clone_model):
    import mlflow

    use_server(mlflow_server)
    name = clone_model(versions=3)
    v2, v3 = "2", "3"

    first = registry.promote(name, "1", reason="first champion", evidence={"top1_1crop": 0.61})
    assert first["changed"] and first["previous_champion"] is None
    assert _aliases(name) == {"challenger": "1", "champion": "1"}

    second = registry.promote(name, v2, reason="beats champion", evidence={"top1_1crop": 0.7, "margin": 0.09})
    assert second["previous_champion"] == "1"
    assert _aliases(name) == {"challenger": "1", "champion": v2, "previous-champion": "1"}
    tags = mlflow.MlflowClient().get_model_version(name, v2).tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.reason"] == "beats champion"
    assert json.loads(tags["promotion.evidence"]) == {"margin": 0.09, "previous_champion": "1", "top1_1crop": 0.7}
    assert tags["promotion.evidence.margin"] == "0.09"
    assert mlflow.MlflowClient().get_model_version(name, "1").tags["demotion.replaced_by"] == v2

    assert registry.promote(name, v2, reason="again")["changed"] is False

    registry.promote(name, v3, reason="third")
    assert _aliases(name) == {"challenger": "1", "champion": v3, "previous-champion": v2}
    back = registry.rollback(name, reason="v3 regressed in production")
    assert back["version"] == v2 and back["previous_champion"] == v3
    assert _aliases(name) == {"challenger": "1", "champion": v2, "previous-champion": v3}
    assert mlflow.MlflowClient().get_model_version(name, v2).tags["promotion.decision"] == "rollback"
    registry.rollback(name)  # a rollback of the rollback swaps them back
    assert _aliases(name) == {"challenger": "1", "champion": v3, "previous-champion": v2}

    # The lock models used as server-side mutexes are gone and never listed.
    assert all(not m["name"].endswith(registry.LOCK_SUFFIX) for m in registry.list_models())
    assert not mlflow.MlflowClient().search_registered_models(f"name = '{name}{registry.LOCK_SUFFIX}'")


@pytest.mark.e2e
def test_rollback_without_previous_champion_is_a_clear_error(mlflow_server, use_server, clone_model):
    use_server(mlflow_server)
    name = clone_model()
    registry.promote(name, "1", reason="first")
    with pytest.raises(UserError, match=r"nothing to roll back to: model .* has no 'previous-champion' alias"):
        registry.rollback(name)


_PROMOTER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from mlflow import MlflowClient
    from infra import registry, tracking

    # A slow network: each alias write lands 0.5 s after its read, so two unserialised
    # promoters would both read the same old champion (and one alias would be lost).
    _set = MlflowClient.set_registered_model_alias
    def slow_set(self, *args, **kwargs):
        time.sleep(0.5)
        return _set(self, *args, **kwargs)
    MlflowClient.set_registered_model_alias = slow_set

    tracking.connect()
    go = Path(os.environ["GO_FILE"])
    Path(f"{go}.ready-{os.environ['VERSION']}").touch()
    while not go.exists():
        time.sleep(0.01)
    result = registry.promote(os.environ["NAME"], os.environ["VERSION"], reason="race")
    print(result["previous_champion"])
    """
)


@pytest.mark.e2e
@pytest.mark.parametrize("shared_workdir", [True, False], ids=["file-lock", "server-lock-only"])
def test_concurrent_promotions_lose_no_alias(mlflow_server, use_server, clone_model, spawn_python, tmp_path, shared_workdir):
    """Two processes promote at the same moment: one after the other, never interleaved.

    With a shared work dir the file lock serialises them; with separate work dirs (two
    machines) only the server-side mutex does.
    """
    use_server(mlflow_server)
    name = clone_model(versions=3)
    registry.promote(name, "1", reason="initial champion")
    va, vb = "2", "3"
    go = tmp_path / "go"
    procs = []
    for version in (va, vb):
        workdir = tmp_path / ("work" if shared_workdir else f"work-{version}")
        env = mlflow_server.env(INCEPT_WORKDIR=str(workdir), NAME=name, VERSION=version, GO_FILE=str(go))
        procs.append(spawn_python(_PROMOTER, env))
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.ready-{v}").exists() for v in (va, vb)):  # both past their imports
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    previous = [out.strip() for out, _ in outs]
    aliases = _aliases(name)
    # Serialised: the second promoter saw the first's version as champion.
    assert sorted([aliases["champion"], aliases["previous-champion"]]) == sorted([va, vb]), aliases
    assert sorted(previous) == sorted(["1", aliases["previous-champion"]]), previous


# ---------------------------------------------------------------------------------------------
# Loading and prediction


@pytest.mark.e2e
def test_load_model_by_alias_matches_registry_predict(mlflow_server, use_server, clone_model, tmp_path, center_crop):
    import mlflow
    import torch

    use_server(mlflow_server)
    name = clone_model()
    registry.promote(name, "1", reason="serve it")
    images = _images(tmp_path)

    predictions = registry.predict(f"{name}@champion", images)

    # What a plain MLflow user does, with nothing from this project but the crop.
    model = mlflow.pytorch.load_model(f"models:/{name}@champion")
    meta = mlflow.models.get_model_info(f"models:/{name}@champion").metadata
    batch = np.concatenate([center_crop(Image.open(p).convert("RGB"), meta["resolution"], meta["crop_fraction"]) for p in images])
    with torch.no_grad():
        probs = model(torch.from_numpy(batch))
    assert probs.shape == (3, 7)
    for row, top in zip(probs, predictions):
        values, indices = row.topk(5)
        assert [wnid for wnid, _, _ in top] == [meta["classes"][i] for i in indices.tolist()]
        assert [words for _, words, _ in top] == [meta["words"][i] for i in indices.tolist()]
        np.testing.assert_allclose([p for _, _, p in top], values.numpy(), rtol=1e-5, atol=1e-6)

    module, metadata = registry.load(f"{name}/1")
    assert metadata["words"][0] == "class 0"
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(batch)).numpy(), probs.numpy(), rtol=1e-5, atol=1e-6)

    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"this is not a JPEG")
    with pytest.raises(UserError, match=r"cannot read image .*not-an-image\.jpg"):
        registry.predict(f"{name}@champion", [images[0], str(bad)])
    with pytest.raises(UserError, match=r"image .*missing\.jpg does not exist"):
        registry.predict(f"{name}@champion", [str(tmp_path / "missing.jpg")])


@pytest.mark.e2e
def test_a_pickled_model_version_is_never_unpickled(mlflow_server, use_server, new_run, tiny_model, tmp_path):
    """Whoever can register a version must not be able to make `load` or `predict` run their code."""
    import mlflow

    use_server(mlflow_server)
    run_id = new_run()
    module, metadata, _ = tiny_model()
    marker = tmp_path / "unpickled"

    class Tripwire(type(module)):
        def __setstate__(self, state):  # runs when pickle rebuilds the module
            marker.write_text("code ran on load")
            super().__setstate__(state)

    module.__class__ = Tripwire
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(module, name="model", serialization_format="pickle", metadata=metadata,
                                        pip_requirements=["torch"])  # no requirement inference: it loads the model
    marker.unlink(missing_ok=True)
    client = mlflow.MlflowClient()
    name = _name("incept-pickled")
    client.create_registered_model(name)
    client.create_model_version(name, source=info.model_uri, run_id=run_id, model_id=info.model_id)
    with pytest.raises(UserError, match=rf"refusing to load {name}/1: it is not a pickle-free torch.export \(pt2\) model"):
        registry.load(f"{name}/1")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Through the CLI: failure lines, basic auth, the embedded default


@pytest.mark.e2e
def test_cli_unreachable_server_is_one_line_fast(incept, closed_port, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    uri = f"http://127.0.0.1:{closed_port}"
    env.update(MLFLOW_TRACKING_URI=uri, INCEPT_WORKDIR=str(tmp_path / "work"))
    start = time.monotonic()
    proc = incept("registry", "list", env=env, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert uri in lines[0] and "unreachable" in lines[0] and "MLFLOW_TRACKING_URI" in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert elapsed < 20, elapsed


@pytest.mark.e2e
def test_basic_auth_server_end_to_end_without_leaking_credentials(mlflow_auth_server, use_server, tiny_model, new_run, incept, tmp_path):
    server = use_server(mlflow_auth_server)
    name = _name()
    info, run_id = _register(tiny_model, new_run, name)
    registry.promote(name, info.version, reason="auth works")

    env = server.env(INCEPT_WORKDIR=str(tmp_path / "work"))
    outputs = []
    show = incept("registry", "show", f"{name}@champion", "--json", env=env)
    outputs.append(show)
    assert show.returncode == 0, show.stderr
    shown = json.loads(show.stdout)
    assert shown["version"] == info.version and shown["aliases"] == ["challenger", "champion"]
    assert shown["metrics"] == METRICS and shown["run_id"] == run_id

    wrong = incept("registry", "list", env={**env, "MLFLOW_TRACKING_PASSWORD": "wrong-" + server.password}, timeout=60)
    outputs.append(wrong)
    assert wrong.returncode == 2
    assert "rejected the credentials (HTTP 401)" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1

    # Credentials in the URI itself are redacted from messages.
    host = server.uri.split("//", 1)[1]
    in_uri = incept("registry", "show", f"{name}@nope", env={**env, "MLFLOW_TRACKING_URI": f"http://admin:{server.password}@{host}"})
    outputs.append(in_uri)
    assert in_uri.returncode == 2 and "has no alias 'nope'" in in_uri.stderr, in_uri.stderr

    for proc in outputs:
        assert server.password not in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_embedded_sqlite_default(embedded_env, tiny_model, new_run, incept):
    assert tracking.tracking_uri() == f"sqlite:///{embedded_env / 'mlflow.db'}"
    name = _name()
    info, _ = _register(tiny_model, new_run, name)
    assert (embedded_env / "mlflow.db").is_file()
    assert any((embedded_env / "mlartifacts").rglob("MLmodel")), "artifacts belong under <workdir>/mlartifacts"

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = incept("registry", "list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    models = {m["name"]: m for m in json.loads(proc.stdout)["models"]}
    assert models[name]["versions"][0]["metrics"] == METRICS
    promoted = incept("registry", "promote", f"{name}/1", "--reason", "cli", "--evidence", '{"margin": 0.1}', "--json", env=env)
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(promoted.stdout)["aliases"]["champion"] == "1"


@pytest.mark.e2e
def test_cli_predict(mlflow_server, use_server, shared_model, incept, tmp_path, center_crop):
    server = use_server(mlflow_server)
    name = shared_model.name
    images = _images(tmp_path, 2)
    env = server.env(INCEPT_WORKDIR=str(tmp_path / "work"))
    proc = incept("registry", "predict", f"{name}@challenger", *images, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [p["image"] for p in out["predictions"]] == images
    top = out["predictions"][0]["top"]
    assert len(top) == 5 and top[0]["wnid"].startswith("n") and top[0]["words"].startswith("class ")
    assert all(a["probability"] >= b["probability"] for a, b in zip(top, top[1:]))



# ---------------------------------------------------------------------------------------------
# Pure parts


@pytest.mark.unit
@pytest.mark.parametrize(
    "ref, parsed",
    [
        ("inception-v3@champion", ("inception-v3", "champion", None)),
        ("models:/inception-v3@previous-champion", ("inception-v3", "previous-champion", None)),
        ("inception-v3/12", ("inception-v3", None, "12")),
        ("models:/inception-v3/3", ("inception-v3", None, "3")),
    ],
)
def test_reference_forms(ref, parsed):
    assert registry._parse_ref(ref) == parsed


@pytest.mark.unit
@pytest.mark.parametrize("bad", ["inception-v3", "models:/", "@champion", "a@b@c", ""])
def test_bad_references_say_which_forms_work(bad):
    with pytest.raises(UserError, match="expected NAME@ALIAS or NAME/VERSION"):
        registry._parse_ref(bad)


@pytest.mark.unit
@pytest.mark.parametrize("metrics, message", [
    ({"top1_1crop": 1.5}, "not a fraction"),
    ({"top1_1crop": float("nan")}, "not a fraction"),
    ({"top1": 0.5}, "unknown model-version metric 'top1'"),
])
def test_metric_checks(metrics, message):
    with pytest.raises(UserError, match=message):
        registry._check_metrics(metrics)


@pytest.mark.unit
def test_metric_names_follow_the_design():
    assert registry.METRIC_NAMES == (
        "top1_1crop", "top5_1crop", "top1_10crop", "top5_10crop",
        "top1_12crop", "top5_12crop", "top1_144crop", "top5_144crop",
    )


@pytest.mark.unit
@pytest.mark.parametrize("action", ["list", "show", "promote", "rollback", "predict"])
def test_every_registry_action_has_help(action, capsys):
    from infra.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["registry", action, "--help"])
    assert exit_.value.code == 0
    assert "usage: incept registry " + action in capsys.readouterr().out


@pytest.mark.unit
def test_metadata_words_line_up_with_classes():
    # Manifests keep words as wnid -> words; the registered metadata is a list beside `classes`.
    meta = registry._clean_metadata({"classes": ["n1", "n2"], "words": {"n2": "two"}, "resolution": 75, "crop_fraction": 0.875})
    assert meta["words"] == ["n1", "two"]
    assert registry._clean_metadata({"classes": ["n1"], "resolution": 75, "crop_fraction": 0.875})["words"] == ["n1"]
    with pytest.raises(ValueError, match="1 words for 2 classes"):
        registry._clean_metadata({"classes": ["n1", "n2"], "words": ["one"], "resolution": 75, "crop_fraction": 0.875})
