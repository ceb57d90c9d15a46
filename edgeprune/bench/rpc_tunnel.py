"""Measure on an SSH device through TVM RPC, with every connection inside the SSH session.

MetaSchedule times candidate kernels through TVM RPC: a tracker hands out boards by key
and the client talks to the board's RPC server. For a board edgeprune already reaches over
SSH (``devices.yaml``), :func:`ssh_rpc_board` sets that up without opening a port to the
network on either side:

* a tracker on this host, bound to 127.0.0.1;
* on the board, ``python -m tvm.exec.rpc_server`` bound to the board's 127.0.0.1,
  registering with the tracker through an SSH *reverse* forward (board 127.0.0.1:R ->
  the tracker here);
* the server announces itself as ``127.0.0.2:S`` (``--custom-addr``); this host listens
  on 127.0.0.2:S and pipes each connection to the board's 127.0.0.1:S through the SSH
  transport (a *local* forward). A second loopback address keeps the host's listener
  apart from the server's port even when the "board" is this machine.

The board needs only the TVM runtime (``pip install apache-tvm``) and numpy. The server
runs under a pseudo-terminal, so closing the session stops it.

The forwards are pumped by threads of *this* process. Talk to the tracker from another
process, as MetaSchedule's RPC runner does (it runs in popen workers): some TVM RPC
client calls (e.g. loading a Relax VM on the board) block in C++ while holding the GIL,
so a client in this process would wait for bytes that its own forwarding threads can
no longer move (measured: ``run_tvm_artifact`` here hangs in ``VirtualMachine()``,
the same call from a child process returns in a second).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

from edgeprune.bench.rpc import TrackerAddress, list_farm, start_local_tracker
from edgeprune.config.devices import Device
from edgeprune.errors import DeviceError

Log = Callable[[str], None]


def _pipe(a, b) -> None:
    """Copy bytes both ways between two socket-like objects until either side closes."""

    def one(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except (OSError, EOFError):
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(Exception):
                    s.close()

    for src, dst in ((a, b), (b, a)):
        threading.Thread(target=one, args=(src, dst), daemon=True).start()


def _free_port() -> socket.socket:
    """A listening socket on a free port of 127.0.0.2 (127.0.0.1 where that does not
    exist), kept open so nobody else takes it."""
    for host in ("127.0.0.2", "127.0.0.1"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, 0))
        except OSError:
            s.close()
            continue
        s.listen(16)
        return s
    raise DeviceError("cannot listen on a loopback port for the RPC tunnel")


@contextlib.contextmanager
def ssh_rpc_board(device: Device, key: str, log: Log = lambda _m: None,
                  register_timeout_s: float = 300.0) -> Iterator[TrackerAddress]:
    """A tracker on this host with ``device``'s board registered under ``key``.

    Yields the tracker address for MetaSchedule's RPC runner. Raises DeviceError when the
    board cannot be reached or its RPC server does not come up (e.g. TVM missing there).
    """
    if device.kind != "ssh":
        raise DeviceError(f"device '{device.name}' is not an SSH device")
    from edgeprune.bench.ssh import SSHConnection, build_command

    conn = SSHConnection(device)  # resolves the address (a config error raises here, before anything starts)
    tracker = start_local_tracker()
    listener = None
    stop = threading.Event()
    chan = None
    try:
        listener = _free_port()
        local_addr, port = listener.getsockname()
        transport = conn.transport  # connects; forwards ride on the session's own transport

        def to_tracker(channel, _origin, _server) -> None:
            try:
                sock = socket.create_connection(("127.0.0.1", tracker.port), timeout=10)
            except OSError:
                channel.close()
                return
            _pipe(channel, sock)

        remote_port = transport.request_port_forward("127.0.0.1", 0, handler=to_tracker)

        def accept_loop() -> None:
            listener.settimeout(0.5)
            while not stop.is_set():
                try:
                    client, peer = listener.accept()
                except socket.timeout:
                    continue
                except OSError:
                    return
                try:
                    ch = transport.open_channel("direct-tcpip", ("127.0.0.1", port), peer)
                except Exception:  # noqa: BLE001 - the board refused: drop this connection
                    client.close()
                    continue
                _pipe(client, ch)

        threading.Thread(target=accept_loop, daemon=True).start()
        argv = [device.python, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                "--port-end", str(port + 1), "--tracker", f"127.0.0.1:{remote_port}", "--key", key,
                "--custom-addr", local_addr]
        chan = transport.open_session()
        chan.get_pty()  # closing the session hangs the server up
        chan.exec_command(build_command(argv, dict(device.env)))
        log(f"started a TVM RPC server on '{device.name}' (key {key}), tunnelled over SSH")
        addr = TrackerAddress("127.0.0.1", tracker.port)
        deadline = time.monotonic() + register_timeout_s
        output = b""
        while time.monotonic() < deadline:
            if list_farm(addr).get(key, {}).get("free", 0) >= 1:
                break
            while chan.recv_ready():
                output += chan.recv(65536)
            if chan.exit_status_ready():
                while chan.recv_ready():
                    output += chan.recv(65536)
                tail = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise DeviceError(f"the TVM RPC server on '{device.name}' exited: {tail[0]}",
                                  f"on the board: {device.python} -m pip install apache-tvm numpy")
            time.sleep(0.5)
        else:
            raise DeviceError(f"the TVM RPC server on '{device.name}' did not register within "
                              f"{register_timeout_s:.0f} s")
        yield addr
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            if chan is not None:
                chan.close()
        with contextlib.suppress(Exception):
            if listener is not None:
                listener.close()
        with contextlib.suppress(Exception):
            conn.close()
        tracker.terminate()
