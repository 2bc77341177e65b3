"""`incept demo`: the whole flow on one machine with embedded defaults.

sample digits -> shards (Ray Data) -> `incept train` with configs/demo.yaml (Ray Train, 2 CPU
workers) -> multi-crop evaluation -> registered challenger -> champion when there is none ->
a registry lookup and a prediction. Each step resumes: a second run reuses the data and shards.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from infra import config as config_module
from infra import registry, tracking
from infra.ray_runtime import init_ray
from infra.training import train
from pipelines.sample_data import make_sample_set
from pipelines.shard import ShardOptions, plan_job, run_job

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def run_demo(*, workdir: Path, overrides: list[str] = (), train_per_class: int = 150, val_per_class: int = 20) -> dict:
    started = time.perf_counter()
    data, shards = workdir / "data", workdir / "shards"
    if not (data / "train").is_dir():
        say(f"writing sample digits to {data}")
        make_sample_set(data, classes=10, train_per_class=train_per_class, val_per_class=val_per_class, source="digits", quirks=True)
    init_ray()
    for split in ("train", "val"):
        # 100 per shard: the 200 validation images make 2 shards, one per evaluation actor (one per CPU).
        result = run_job(plan_job(str(data), split, str(shards / split), ShardOptions(shard_size=100)))
        say(f"{split}: {result.summary()}")

    config = config_module.load(DEMO_CONFIG, [f"data.train={shards / 'train'}", f"data.val={shards / 'val'}", *overrides])
    outcome = train(config, config_path=str(DEMO_CONFIG))
    name = config.registry.model_name
    version = outcome["model_version"]
    current = registry.list_models()
    has_champion = any(m["name"] == name and registry.CHAMPION in m.get("aliases", {}) for m in current)
    if version and not has_champion:
        registry.promote(name, version, reason="demo: first model, no champion yet", evidence=outcome["metrics"])
        say(f"promoted {name}/{version} to champion")
    shown = registry.show(f"{name}@{registry.CHAMPION}")
    image = sorted((data / "val").rglob("*.JPEG"))[0]
    top5 = registry.predict(f"{name}@{registry.CHAMPION}", [image])[0]
    return {
        "run_id": outcome["run_id"],
        "version": version,
        "champion": shown.version,
        "metrics": outcome["metrics"],
        "prediction": {"image": str(image), "top5": top5},
        "tracking_uri": tracking.redact(tracking.tracking_uri()),
        "seconds": round(time.perf_counter() - started, 1),
    }
