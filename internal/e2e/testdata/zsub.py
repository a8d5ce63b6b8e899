"""A pyzmq subscriber: zsub.py ENDPOINT MODE PREFIX COUNT

Prints "ready PORT", then one JSON line per message received (its frames,
text where possible, sequences decoded), and exits after COUNT messages.
"""
import json
import struct
import sys

import zmq

endpoint, mode, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = zmq.Context()
sock = ctx.socket(zmq.SUB)
sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
if mode == "bind":
    port = sock.bind_to_random_port(endpoint)
else:
    sock.connect(endpoint)
    port = 0
print("ready", port, flush=True)
for _ in range(count):
    parts = sock.recv_multipart()
    out = {"frames": len(parts), "channel": parts[0].decode()}
    if len(parts) > 1:
        out["data"] = parts[1].decode("utf-8", "replace")
    if len(parts) > 2 and len(parts[2]) == 8:
        out["seq"] = struct.unpack(">Q", parts[2])[0]
    print(json.dumps(out), flush=True)
sock.close(linger=0)
ctx.term()
