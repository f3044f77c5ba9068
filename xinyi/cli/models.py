"""`xinyi model ...`, `xinyi score`, `xinyi eligibility`: scoring and eligibility where the data lives."""

from __future__ import annotations

import asyncio
from pathlib import Path

from xinyi.cli.common import EXIT_USAGE, CommandError, add_registry_argument, load_identity, print_json, run_client


def add_parser(sub) -> None:
    model = sub.add_parser("model", help="banks submit scoring models; the platform operator approves them")
    model = model.add_subparsers(dest="model_cmd", required=True)
    a = model.add_parser("submit", help="a bank submits an ONNX model over catalogue features")
    a.add_argument("--identity", required=True, help="bank identity directory")
    add_registry_argument(a)
    a.add_argument("--file", required=True, help="the .onnx file")
    a.add_argument("--name", required=True)
    a.add_argument("--features", required=True, help="catalogue features in the model's input order, comma-separated")
    a.add_argument("--min", type=float, default=0.0, help="lowest score the model may give (default 0)")
    a.add_argument("--max", type=float, default=1.0, help="highest score (default 1)")
    a.set_defaults(func=cmd_model)
    a = model.add_parser("approve", help="the platform operator (registry identity) approves a model")
    a.add_argument("--identity", required=True, help="the registry's own identity directory")
    add_registry_argument(a)
    a.add_argument("--model", required=True, help="the model's sha256 (hex)")
    a.set_defaults(func=cmd_model)
    a = model.add_parser("list", help="submitted and approved models")
    a.add_argument("--identity", required=True)
    add_registry_argument(a)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_model)

    for name, text in (("score", "score an enterprise with an approved model (needs a consent)"),
                       ("eligibility", "does an enterprise qualify for a support programme (needs a consent)")):
        a = sub.add_parser(name, help=text)
        a.add_argument("--identity", required=True, help="bank, guarantor or government identity directory")
        add_registry_argument(a)
        a.add_argument("--uscc", required=True)
        a.add_argument("--consent", required=True)
        a.add_argument("--json", action="store_true")
        if name == "score":
            a.add_argument("--model", required=True, help="the approved model's sha256 (hex)")
            a.add_argument("--purpose", default="credit_assessment")
        else:
            a.add_argument("--programme", required=True, help="a programme of policies/eligibility.toml")
            a.add_argument("--purpose", default="policy_matching")
        a.set_defaults(func=cmd_evaluate)


def _sha(text: str) -> bytes:

    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 32:
        raise CommandError("--model: a model is named by its sha256, 64 hex characters", EXIT_USAGE)
    return value


def cmd_model(args) -> None:
    from xinyi.client import BankClient, OperatorModels
    from xinyi.crypto.identity import Role

    if args.model_cmd == "submit":
        identity = load_identity(args.identity, Role.BANK)
        try:
            onnx = Path(args.file).read_bytes()
        except OSError as e:
            raise CommandError(f"--file {args.file}: {e.strerror}", EXIT_USAGE) from None

        async def run():
            async with BankClient(identity, args.registry) as bank:
                return await bank.submit_model(onnx, name=args.name, features=[f.strip() for f in args.features.split(",")],
                                               output_min=args.min, output_max=args.max)

        result = asyncio.run(run_client(run()))
        print(result.sha256.hex())
        print("submitted; the platform operator approves it with `xinyi model approve`", flush=True)
        return
    identity = load_identity(args.identity, Role.REGISTRY) if args.model_cmd == "approve" else load_identity(args.identity)

    async def run():
        async with OperatorModels(identity, args.registry) as client:
            if args.model_cmd == "approve":
                return await client.approve(_sha(args.model))
            return await client.list()

    result = asyncio.run(run_client(run()))
    if args.model_cmd == "approve":
        a = result.approval
        print(f"approved {a.sha256.hex()} ({a.name}); reads {', '.join(a.categories)}; "
              f"published in directory version {result.directory_version}")
        return
    rows = [{"sha256": m.sha256.hex(), "name": m.name, "submitted_by": m.submitted_by, "status": m.status,
             "features": list(m.features)} for m in result]
    if args.json:
        print_json(rows)
    for r in rows if not args.json else []:
        print(f"{r['sha256']}  {r['status']:<9} {r['name']:<20} bank/{r['submitted_by']}  {','.join(r['features'])}")


def cmd_evaluate(args) -> None:
    from xinyi.client import BankClient

    identity = load_identity(args.identity)
    target = {"model_sha256": _sha(args.model)} if hasattr(args, "model") else {"programme": args.programme}

    async def run():
        async with BankClient(identity, args.registry) as client:
            return await client.evaluate(args.uscc, args.purpose, args.consent, **target)

    view = asyncio.run(run_client(run()))
    if args.json:
        print_json({"uscc": args.uscc, **view.to_json()})
        return
    print(f"evaluated by node {view.evaluator} with data from {', '.join(view.nodes)}; signature verified")
    if view.programme:
        print(f"{view.programme}: {'QUALIFIES' if view.qualifies else 'does not qualify'}")
        for criterion, met in view.criteria:
            print(f"  [{'x' if met else ' '}] {criterion}")
    else:
        print(f"score {view.score}")
        for feature, direction in view.reasons:
            print(f"  {feature} {direction} the score")
