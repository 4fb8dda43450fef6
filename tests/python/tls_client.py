"""A streambus client in Python (grpcio) over TLS with a bearer token.

Generates the stubs from proto/streambus/v1/bus.proto with grpcio-tools, then on one
`Connect` stream: hello, welcome, subscribe, publish (acked), and the delivery of what
it published. Without the token the server must refuse the stream (UNAUTHENTICATED).

Environment: STREAMBUS_ADDR (host:port), STREAMBUS_CA (PEM file), STREAMBUS_TOKEN.
Prints "ok" and exits 0 when every step held.
"""

import os
import pathlib
import queue
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def stubs():
    out = tempfile.mkdtemp(prefix="streambus-py-")
    # Debian's grpcio-tools refuses proto3 `optional` fields; without the label they
    # encode the same on the wire (a value left at zero is simply not sent).
    src = pathlib.Path(out) / "proto" / "streambus" / "v1"
    src.mkdir(parents=True)
    text = (ROOT / "proto" / "streambus" / "v1" / "bus.proto").read_text()
    (src / "bus.proto").write_text(text.replace("  optional ", "  "))
    status = protoc.main([
        "protoc",
        f"-I{pathlib.Path(out) / 'proto'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(src / "bus.proto"),
    ])
    if status != 0:
        sys.exit(f"protoc failed with {status}")
    sys.path.insert(0, out)
    from streambus.v1 import bus_pb2, bus_pb2_grpc  # noqa: E402
    return bus_pb2, bus_pb2_grpc


def frames(pb, outgoing):
    """The request stream: whatever the test puts in `outgoing`, until None."""
    while True:
        frame = outgoing.get()
        if frame is None:
            return
        yield frame


def main():
    pb, rpc = stubs()
    addr, token = os.environ["STREAMBUS_ADDR"], os.environ["STREAMBUS_TOKEN"]
    ca = pathlib.Path(os.environ["STREAMBUS_CA"]).read_bytes()
    options = [("grpc.ssl_target_name_override", "localhost")]

    # Without credentials: refused before anything is admitted.
    channel = grpc.secure_channel(addr, grpc.ssl_channel_credentials(root_certificates=ca), options)
    outgoing = queue.Queue()
    outgoing.put(pb.ClientFrame(hello=pb.Hello(client_name="python-anonymous")))
    try:
        next(rpc.BusStub(channel).Connect(frames(pb, outgoing)))
        sys.exit("an unauthenticated stream was admitted")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAUTHENTICATED:
            sys.exit(f"expected UNAUTHENTICATED, got {e.code()}")
    outgoing.put(None)
    channel.close()

    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca),
        grpc.access_token_call_credentials(token),
    )
    channel = grpc.secure_channel(addr, credentials, options)
    outgoing = queue.Queue()
    outgoing.put(pb.ClientFrame(hello=pb.Hello(client_name="python")))
    responses = rpc.BusStub(channel).Connect(frames(pb, outgoing), timeout=30)
    welcome = next(responses)
    assert welcome.WhichOneof("frame") == "welcome", welcome
    outgoing.put(pb.ClientFrame(subscribe=pb.Subscribe(request_id=1, filter="py.>")))
    subscribed = next(responses)
    assert subscribed.WhichOneof("frame") == "subscribed", subscribed
    message = pb.PublishMessage(topic="py.hello", payload=b"from python")
    outgoing.put(pb.ClientFrame(publish=pb.PublishBatch(publish_id=7, messages=[message])))
    seen_ack = seen_delivery = False
    while not (seen_ack and seen_delivery):
        frame = next(responses)
        kind = frame.WhichOneof("frame")
        if kind == "publish_ack":
            assert frame.publish_ack.publish_id == 7, frame
            seen_ack = True
        elif kind == "deliveries":
            assert frame.deliveries.topic == "py.hello", frame
            assert frame.deliveries.deliveries[0].payload == b"from python", frame
            seen_delivery = True
        else:
            sys.exit(f"unexpected frame {frame}")
    outgoing.put(None)
    channel.close()
    print("ok")


if __name__ == "__main__":
    main()
