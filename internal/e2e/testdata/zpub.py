"""A pyzmq publisher: zpub.py ENDPOINT MODE FRAMES...

MODE "connect" or "bind". The socket is an XPUB so the script can wait for
the first subscription before sending (a plain PUB drops everything sent
before the subscriber's handshake). It prints "ready PORT" once bound or
connected. Each FRAMES argument is one message: parts separated by "|";
a part "#N" is N as an 8-byte big-endian sequence.
"""
import struct
import sys

import zmq

endpoint, mode, messages = sys.argv[1], sys.argv[2], sys.argv[3:]
ctx = zmq.Context()
sock = ctx.socket(zmq.XPUB)
if mode == "bind":
    port = sock.bind_to_random_port(endpoint)
else:
    sock.connect(endpoint)
    port = 0
print("ready", port, flush=True)
sock.recv()  # the first subscription
for m in messages:
    parts = []
    for p in m.split("|"):
        parts.append(struct.pack(">Q", int(p[1:])) if p.startswith("#") else p.encode())
    sock.send_multipart(parts)
sock.close(linger=5000)
ctx.term()
print("sent", len(messages), flush=True)
