"""incept registry list|show|promote|rollback|predict: registry look-ups and alias moves.

Every sub-verb talks to MLFLOW_TRACKING_URI, or the embedded SQLite store under the work
directory when it is unset; an unreachable server is one error line within seconds.
"""

from __future__ import annotations

import argparse
import json

from infra.output import emit
from pipelines.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "registry",
        help="look up registered models, promote, roll back, predict",
        description=(
            "The MLflow model registry: list models and versions, show one version, move the "
            "champion alias (promote, rollback), predict with a registered model. "
            "MLFLOW_TRACKING_URI names the server; unset, the SQLite store in $INCEPT_WORKDIR (./work)."
        ),
    )
    p.set_defaults(func=run)
    verbs = p.add_subparsers(dest="registry_verb", metavar="ACTION", required=True)

    ls = verbs.add_parser("list", help="models, versions, aliases and headline metrics",
                          description="A table of registered models, their versions, aliases and top-1/top-5 (1 crop).")
    ls.add_argument("--max-versions", type=int, default=20, help="newest versions shown per model (aliased ones always)")
    ls.add_argument("--json", action="store_true", help="print the result as one JSON object")

    show = verbs.add_parser("show", help="one version: aliases, metrics, tags, source run",
                            description="Show one model version: aliases, the metrics of its last evaluation and the validation set "
                                        "they came from, tags, source run, checkpoint, data config.")
    show.add_argument("ref", help="NAME@ALIAS or NAME/VERSION, e.g. inception-v3@champion (models:/ prefix allowed)")
    show.add_argument("--json", action="store_true", help="print the result as one JSON object")

    promote = verbs.add_parser(
        "promote", help="make a version the champion",
        description="Move the champion alias to REF's version; the old champion becomes previous-champion. "
                    "The reason and evidence are written to the version's tags.",
    )
    promote.add_argument("ref", help="the version to promote: NAME/VERSION or NAME@ALIAS (e.g. inception-v3@challenger)")
    promote.add_argument("--reason", required=True, help="why, in words (written to tag promotion.reason)")
    promote.add_argument("--evidence", default="{}", metavar="JSON",
                         help='a JSON object of evidence, e.g. \'{"top1_1crop": 0.78, "margin": 0.01}\'')
    promote.add_argument("--json", action="store_true", help="print the result as one JSON object")

    rollback = verbs.add_parser("rollback", help="swap champion and previous-champion",
                                description="Swap the champion and previous-champion aliases of a registered model.")
    rollback.add_argument("name", nargs="?", default="inception-v3", help="registered model (default inception-v3)")
    rollback.add_argument("--reason", default="rollback", help="why (written to tag promotion.reason)")
    rollback.add_argument("--json", action="store_true", help="print the result as one JSON object")

    predict = verbs.add_parser(
        "predict", help="top-5 classes for images",
        description="Classify images with a registered model (single central crop, the model's own resolution "
                    "and crop fraction); print the top-5 wnids, words and probabilities.",
    )
    predict.add_argument("ref", help="NAME@ALIAS or NAME/VERSION, e.g. inception-v3@champion")
    predict.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    predict.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    predict.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _mlflow_errors(fn):
    """An MlflowException from the server becomes one UserError line (the CLI exits 2)."""

    def wrapped(args) -> int:
        from mlflow.exceptions import MlflowException

        from infra import tracking

        try:
            return fn(args)
        except MlflowException as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            uri = tracking.redact(tracking.tracking_uri())
            raise UserError(f"MLflow at {uri}: {first[:400]}") from None

    return wrapped


def _metric(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


@_mlflow_errors
def run_list(args) -> int:
    from infra import registry

    models = registry.list_models(max_versions=args.max_versions)
    rows = [("MODEL", "VERSION", "ALIASES", "TOP1_1CROP", "TOP5_1CROP", "CREATED")]
    for model in models:
        for v in model["versions"]:
            rows.append((model["name"], v["version"], ",".join(v["aliases"]) or "-",
                         _metric(v["metrics"].get("top1_1crop")), _metric(v["metrics"].get("top5_1crop")), v["created"]))
    if len(rows) == 1:
        human = "no registered models"
    else:
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        human = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    emit({"models": models}, as_json=args.json, human=human)
    return 0


def _evaluated_on(info) -> str:
    """Where the version's metrics came from: the last evaluation's validation set."""
    if not info.val_fingerprint:
        return "validation set not recorded"
    return f"on validation set {info.val_fingerprint[:12]} ({info.val_shards or 'shards not recorded'})"


@_mlflow_errors
def run_show(args) -> int:
    from infra import registry

    info = registry.show(args.ref)
    lines = [
        f"{info.name} version {info.version}  ({info.uri})",
        f"  aliases:    {', '.join(info.aliases) or '-'}",
        f"  status:     {info.status}, created {info.created}",
        f"  source run: {info.run_id or '-'}",
        f"  model id:   {info.model_id or '-'}",
        f"  checkpoint: {info.checkpoint or '-'}",
        "  metrics:" + (f"    {_evaluated_on(info)}" if info.metrics else " -"),
        *[f"    {k:<14} {v:.4f}" for k, v in sorted(info.metrics.items())],
        "  tags:" + ("" if info.tags else " -"),
        *[f"    {k} = {v}" for k, v in sorted(info.tags.items())],
    ]
    if info.data_config:
        lines.append("  data config: " + json.dumps(info.data_config, sort_keys=True))
    emit(info.to_dict(), as_json=args.json, human="\n".join(lines))
    return 0


def _evidence(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--evidence is not valid JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(value, dict):
        raise UserError("--evidence must be a JSON object, e.g. '{\"top1_1crop\": 0.78}'")
    return value


@_mlflow_errors
def run_promote(args) -> int:
    from infra import registry

    evidence = _evidence(args.evidence)
    ref = registry.resolve(args.ref)
    result = registry.promote(ref.name, ref.version, reason=args.reason, evidence=evidence)
    if result["changed"]:
        was = f" (previous-champion: {result['previous_champion']})" if result["previous_champion"] else ""
        human = f"{ref.name} version {ref.version} is now champion{was}"
    else:
        human = f"{ref.name} version {ref.version} is already champion; nothing changed"
    emit(result, as_json=args.json, human=human)
    return 0


@_mlflow_errors
def run_rollback(args) -> int:
    from infra import registry

    result = registry.rollback(args.name, reason=args.reason)
    human = f"{args.name}: champion is now version {result['version']} (previous-champion: {result['previous_champion']})"
    emit(result, as_json=args.json, human=human)
    return 0


@_mlflow_errors
def run_predict(args) -> int:
    from infra import registry

    if args.top < 1:
        raise UserError("--top must be at least 1")
    results = registry.predict(args.ref, args.images, top=args.top)
    out = {
        "model": args.ref,
        "predictions": [
            {"image": str(path), "top": [{"wnid": w, "words": words, "probability": p} for w, words, p in top]}
            for path, top in zip(args.images, results)
        ],
    }
    lines = []
    for path, top in zip(args.images, results):
        lines.append(str(path))
        lines.extend(f"  {p:7.4f}  {w}  {words}" for w, words, p in top)
    emit(out, as_json=args.json, human="\n".join(lines))
    return 0


ACTIONS = {"list": run_list, "show": run_show, "promote": run_promote, "rollback": run_rollback, "predict": run_predict}


def run(args: argparse.Namespace) -> int:
    return ACTIONS[args.registry_verb](args)
