"""Generate the Python stubs (_pb2, _pb2_grpc and their .pyi) from proto/.

`python scripts/gen_proto.py` writes them next to the package (xinyi/v1/);
`python scripts/gen_proto.py --out DIR` writes them under DIR instead, which is how the
staleness test compares a fresh generation with what is committed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from grpc_tools import protoc
import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out: Path) -> list[Path]:
    protos = sorted(PROTO_DIR.glob("xinyi/v1/*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *[str(p.relative_to(PROTO_DIR)) for p in protos],
    ]
    out.mkdir(parents=True, exist_ok=True)
    # protoc finds the mypy plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the message above")
    return sorted((out / "xinyi" / "v1").glob("*_pb2*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write xinyi/v1/ under")
    args = parser.parse_args()
    files = generate(args.out)
    print(f"generated {len(files)} files under {args.out / 'xinyi' / 'v1'}", file=sys.stderr)


if __name__ == "__main__":
    main()
