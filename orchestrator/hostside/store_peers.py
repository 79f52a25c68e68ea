"""Count the TCP connections from this host to the rank 0 rendezvous store.

Every torch.distributed rank that joined through env:// (or tcp://) holds a connection to the
TCPStore on MASTER_ADDR:MASTER_PORT for as long as its process group lives, so the count per
host tells which ranks of each host reached the rendezvous, without any help from the program.

Usage: store_peers ADDR PORT
Prints `connected=N` (established connections whose remote end is ADDR:PORT), or
`connected=?` where /proc/net/tcp cannot be read (not Linux): the caller then does not judge.
"""

import socket
import struct
import sys

ESTABLISHED = "01"


def _hex_endpoint(address, port):
    """An IPv4 endpoint as /proc/net/tcp writes it, e.g. `0100007F:1F90` (address in host byte order)."""
    packed = socket.inet_aton(address)
    return "%08X:%04X" % (struct.unpack("=I", packed)[0], port)


def count(table_text, address, port):
    want = _hex_endpoint(address, port)
    found = 0
    for line in table_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[2] == want and fields[3] == ESTABLISHED:
            found += 1
    return found


def main(argv):
    address, port = argv[0], int(argv[1])
    try:
        with open("/proc/net/tcp") as f:
            text = f.read()
    except OSError:
        print("connected=?")
        return 0
    print("connected=%d" % count(text, address, port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
