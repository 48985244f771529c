#!/usr/bin/env python3
"""The app side of `resume: deliver` in plain grpcio: serves reprise.v1.ResumeSink, decodes each
delivered message as the app's own type (demo.v1.User or demo.v1.Event), appends its key
(user_id, or the event's cursor.seq) to --record FILE and only then acknowledges it. Stubs are
generated at start-up from the repository's proto/ directory, as demo_client.py does.

    resume_sink.py [--listen 127.0.0.1:15002] [--record FILE] [--proto-root DIR]

Prints `listening on ADDR` once bound; logs go to stderr. SIGTERM/SIGINT stop it gracefully.
"""

import argparse
import importlib
import os
import signal
import sys
import tempfile
import threading
from concurrent import futures

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "..", "proto"))
PROTOS = ("demo/v1/demo.proto", "reprise/v1/sink.proto")

_STUBS_DIR = None


def load_stubs(proto_root):
    """Compiles PROTOS with grpc_tools.protoc into a temporary directory and imports them."""
    from grpc_tools import protoc

    for proto in PROTOS:
        if not os.path.isfile(os.path.join(proto_root, proto)):
            raise SystemExit(f"resume_sink.py: no {proto} under {proto_root}")
    # Removed when the interpreter exits; the imported modules need it until then.
    global _STUBS_DIR
    _STUBS_DIR = tempfile.TemporaryDirectory(prefix="sink-stubs-")
    out = _STUBS_DIR.name
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_root}", f"-I{include}",
         f"--python_out={out}", f"--grpc_python_out={out}", *PROTOS]
    )
    if rc != 0:
        raise SystemExit(f"resume_sink.py: protoc failed with {rc}")
    sys.path.insert(0, out)
    demo = importlib.import_module("demo.v1.demo_pb2")
    sink = importlib.import_module("reprise.v1.sink_pb2")
    sink_grpc = importlib.import_module("reprise.v1.sink_pb2_grpc")
    return demo, sink, sink_grpc


def log(text):
    print(f"resume_sink.py: {text}", file=sys.stderr, flush=True)


def make_sink(demo, sink, sink_grpc, record):
    # The app's own response type and ordering key for each method it may be handed.
    types = {
        "ListUsers": (demo.User, lambda user: user.user_id),
        "StreamEvents": (demo.Event, lambda event: str(event.cursor.seq)),
    }
    lock = threading.Lock()  # jobs may be delivered concurrently: one line at a time

    def handle(key):
        """The app's real work; here: append the key to the record file and flush it."""
        if record:
            with lock:
                record.write(key + "\n")
                record.flush()

    class ResumeSink(sink_grpc.ResumeSinkServicer):
        def Deliver(self, deliveries, context):
            kind = None
            for d in deliveries:
                which = d.WhichOneof("kind")
                if which == "start":  # which job this is; the rest of its stream follows
                    kind = types.get(d.start.method.rsplit("/", 1)[-1])
                    log(f"job {d.start.job_id} ({d.start.method}) from pod {d.start.from_pod} "
                        f"({d.start.reason}), after offset {d.start.offset!r}")
                    if kind is None:
                        context.abort(grpc.StatusCode.UNIMPLEMENTED, d.start.method)
                elif which == "message":  # decode as our own type, handle, then acknowledge
                    message_type, key_of = kind
                    handle(key_of(message_type.FromString(d.message.payload)))
                    yield sink.Ack(seq=d.message.seq)  # only once handled: never lost
                elif which == "end":  # the upstream stream's status; 0 = complete
                    log(f"end: code {d.end.code} {d.end.message!r}")

    return ResumeSink()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:15002", help="host:port to serve on")
    parser.add_argument("--record", default=None,
                        help="append each delivered message's key here before acknowledging it")
    parser.add_argument("--proto-root", default=DEFAULT_PROTO_ROOT,
                        help="directory holding demo/v1 and reprise/v1 (default: the repository's proto/)")
    args = parser.parse_args()

    demo, sink, sink_grpc = load_stubs(args.proto_root)
    record = open(args.record, "a", encoding="utf-8") if args.record else None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    sink_grpc.add_ResumeSinkServicer_to_server(make_sink(demo, sink, sink_grpc, record), server)
    port = server.add_insecure_port(args.listen)
    if port == 0:
        log(f"cannot listen on {args.listen}")
        return 2
    server.start()
    print(f"listening on {args.listen.rsplit(':', 1)[0]}:{port}", flush=True)

    # A call cut short here is not lost: the sidecar resumes from the last Ack.
    def stop(signum, _frame):
        log(f"{signal.Signals(signum).name}: stopping")
        server.stop(grace=5)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait_for_termination()
    if record:
        record.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
