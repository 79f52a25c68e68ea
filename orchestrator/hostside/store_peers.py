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


def _words(packed):
    """The kernel prints an address as 32-bit words, each in host byte order."""
    return "".join("%08X" % struct.unpack("=I", packed[i:i + 4])[0] for i in range(0, len(packed), 4))


def endpoints(address, port):
    """ADDR:PORT as /proc/net/tcp and /proc/net/tcp6 write it: TCPStore listens on a dual-stack
    socket, so its peers often show up in tcp6 with the IPv4-mapped address (::ffff:a.b.c.d)."""
    v4 = socket.inet_aton(address)
    return ("%s:%04X" % (_words(v4), port), "%s:%04X" % (_words(b"\0" * 10 + b"\xff\xff" + v4), port))


def count(table_text, wanted):
    found = 0
    for line in table_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[2] in wanted and fields[3] == ESTABLISHED:
            found += 1
    return found


def main(argv):
    wanted = endpoints(argv[0], int(argv[1]))
    total, readable = 0, False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                total += count(f.read(), wanted)
            readable = True
        except OSError:
            pass
    print("connected=%d" % total if readable else "connected=?")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
