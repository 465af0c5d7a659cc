"""A free TCP port for the distributed tests' rendezvous: never a fixed one, since tests run in parallel workers."""

import socket


def free_port() -> int:
    """A TCP port free on this machine now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
