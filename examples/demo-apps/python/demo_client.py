#!/usr/bin/env python3
"""A plain grpcio client for the demo's UserService: no Reprise code, stubs generated at run
time from the repository's proto/demo/v1/demo.proto. It proves an unmodified app in another
language gets one correct stream through the sidecar.

    demo_client.py users --target 127.0.0.1:15001 [--role R] [--limit N] [--after ID]
        [--label K=V]... [--metadata K=V]... [--timeout SECONDS]
        [--expect-users N] [--skip ID]... [--record FILE]

Prints one JSON line (the same summary as the Rust demo-client) and exits 0 iff the stream was
exactly right, 1 if not, 2 on a usage or local error.
"""

import argparse
import bisect
import hashlib
import importlib
import json
import os
import sys
import tempfile
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "..", "proto"))

# The user generator, identical to the Rust one (reprise_demo::users).
ROLES = ("admin", "member", "guest")
CREATED_AT_BASE = 1_700_000_000

_STUBS_DIR = None


def user_id(index):
    """First 16 bytes of SHA-256("user-{index}") as an RFC 9562 version-8 UUID."""
    raw = bytearray(hashlib.sha256(f"user-{index}".encode("ascii")).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def demo_users(n):
    """The first n users as (user_id, name, email, role, created_at), sorted by user_id."""
    users = [
        (
            user_id(i),
            f"User {i}",
            f"user{i}@example.com",
            ROLES[i % 3],
            CREATED_AT_BASE + 60 * i,
        )
        for i in range(n)
    ]
    # UTF-8 of these ids is ASCII: str order is the Rust bytewise order.
    users.sort(key=lambda u: u[0])
    return users


def expected_user_ids(users, role, after, limit, skip):
    ids = [u[0] for u in users]
    start = bisect.bisect_right(ids, after) if after else 0
    out = []
    for u in users[start:]:
        if role and u[3] != role:
            continue
        if u[0] in skip:
            continue
        out.append(u[0])
        if limit and len(out) >= limit:
            break
    return out


def load_stubs(proto_root):
    """Compiles demo.proto with grpc_tools.protoc into a temporary directory and imports it."""
    from grpc_tools import protoc

    if not os.path.isfile(os.path.join(proto_root, "demo", "v1", "demo.proto")):
        raise SystemExit(f"demo_client.py: no demo/v1/demo.proto under {proto_root}")
    # Removed when the interpreter exits; the imported modules need it until then.
    global _STUBS_DIR
    _STUBS_DIR = tempfile.TemporaryDirectory(prefix="demo-stubs-")
    out = _STUBS_DIR.name
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "demo/v1/demo.proto",
        ]
    )
    if rc != 0:
        raise SystemExit(f"demo_client.py: protoc failed with {rc}")
    sys.path.insert(0, out)
    pb2 = importlib.import_module("demo.v1.demo_pb2")
    pb2_grpc = importlib.import_module("demo.v1.demo_pb2_grpc")
    return pb2, pb2_grpc


def metadata_json(metadata):
    out = {}
    for key, value in metadata or ():
        text = value.hex() if isinstance(value, bytes) else value
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def key_value(text):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def run_users(args, pb2, pb2_grpc):
    skip = set(args.skip)
    expected = None
    by_id = None
    if args.expect_users is not None:
        users = demo_users(args.expect_users)
        expected = expected_user_ids(users, args.role, args.after, args.limit, skip)
        by_id = {u[0]: u for u in users}
    record = open(args.record, "a", encoding="utf-8") if args.record else None

    summary = {
        "kind": "users",
        "received": 0,
        "duplicates": 0,
        "out_of_order": 0,
        "missing": 0,
        "unexpected": 0,
        "corrupt": 0,
        "first": "",
        "last": "",
        "status": "OK",
        "message": "",
        "elapsed_ms": 0,
        "ok": False,
        "headers": {},
        "trailers": {},
    }
    seen = set()
    highest = None
    not_after = 0

    request = pb2.ListUsersRequest(
        after_user_id=args.after, role=args.role, limit=args.limit, labels=dict(args.label)
    )
    metadata = [(k.lower(), v.encode() if k.lower().endswith("-bin") else v) for k, v in args.metadata]
    started = time.monotonic()
    with grpc.insecure_channel(args.target) as channel:
        stub = pb2_grpc.UserServiceStub(channel)
        call = stub.ListUsers(request, metadata=metadata, timeout=args.timeout)
        try:
            for user in call:
                uid = user.user_id
                if record:
                    record.write(uid + "\n")
                    record.flush()
                if summary["received"] == 0:
                    summary["first"] = uid
                summary["received"] += 1
                summary["last"] = uid
                wrong_role = bool(args.role) and user.role != args.role
                want = by_id.get(uid) if by_id is not None else None
                got = (uid, user.name, user.email, user.role, user.created_at)
                if wrong_role or (want is not None and want != got):
                    summary["corrupt"] += 1
                if uid in seen:
                    summary["duplicates"] += 1
                    continue
                if highest is not None and uid <= highest:
                    summary["out_of_order"] += 1
                else:
                    highest = uid
                if args.after and uid <= args.after:
                    not_after += 1
                seen.add(uid)
        except grpc.RpcError as err:
            summary["status"] = err.code().name
            summary["message"] = err.details() or ""
        summary["headers"] = metadata_json(call.initial_metadata())
        summary["trailers"] = metadata_json(call.trailing_metadata())
    if record:
        record.close()

    if expected is not None:
        expected_set = set(expected)
        summary["missing"] = sum(1 for uid in expected if uid not in seen)
        summary["unexpected"] = sum(1 for uid in seen if uid not in expected_set)
    else:
        summary["unexpected"] = not_after
    summary["elapsed_ms"] = int((time.monotonic() - started) * 1000)
    summary["ok"] = summary["status"] == "OK" and all(
        summary[k] == 0 for k in ("duplicates", "out_of_order", "missing", "unexpected", "corrupt")
    )
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proto-root", default=DEFAULT_PROTO_ROOT,
                        help="directory holding demo/v1/demo.proto (default: the repository's proto/)")
    sub = parser.add_subparsers(dest="command", required=True)
    users = sub.add_parser("users", help="ListUsers, checked for order, duplicates and exactness")
    users.add_argument("--target", default="127.0.0.1:15001", help="host:port (no scheme)")
    users.add_argument("--role", default="")
    users.add_argument("--limit", type=int, default=0)
    users.add_argument("--after", default="")
    users.add_argument("--label", type=key_value, action="append", default=[])
    users.add_argument("--metadata", type=key_value, action="append", default=[])
    users.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    users.add_argument("--expect-users", type=int, default=None)
    users.add_argument("--skip", action="append", default=[])
    users.add_argument("--record", default=None)
    args = parser.parse_args()

    # Accept the Rust client's URL form too; grpcio wants host:port (or dns:///host:port).
    if args.target.startswith("http://"):
        args.target = args.target[len("http://"):]

    try:
        pb2, pb2_grpc = load_stubs(args.proto_root)
        summary = run_users(args, pb2, pb2_grpc)
    except OSError as err:
        print(f"demo_client.py: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, separators=(",", ":")))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
