"""A free TCP port for a torchrun rendezvous, so parallel test runs never collide on a fixed port."""
import socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
