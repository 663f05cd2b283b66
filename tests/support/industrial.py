"""Real industrial servers for the source tests: an asyncua OPC UA server and a TCP server that
accepts connections and never answers (a PLC that hangs). The Modbus side uses the agent's own
`PlcSimulator` (pymodbus' server)."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

from tests.support.broker import free_port


class OpcUaTestServer:
    """An asyncua server on a free loopback port with one object per asset and one Double
    variable per feature, node ids `ns=2;s=<asset>.<feature>`. `set(asset, feature, value)`
    writes a value (from any thread)."""

    def __init__(self, assets: dict[str, dict[str, object]], port: int | None = None,
                 certificate: Path | None = None, private_key: Path | None = None) -> None:
        """With a certificate and key the server offers Basic256Sha256 (SignAndEncrypt) only."""
        self.assets = assets
        self.certificate, self.private_key = certificate, private_key
        self.port = port or free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/pdm/"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._vars: dict[tuple[str, str], object] = {}
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.ns = 2

    def node_id(self, asset: str, feature: str) -> str:
        return f"ns={self.ns};s={asset}.{feature}"

    async def _main(self) -> None:
        from asyncua import Server, ua

        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        if self.certificate is not None:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.ns = await server.register_namespace("urn:pdm:test")
        for asset, values in self.assets.items():
            obj = await server.nodes.objects.add_object(self.ns, asset)
            for feature, value in values.items():
                var = await obj.add_variable(ua.NodeId(f"{asset}.{feature}", self.ns),
                                             feature, value)
                self._vars[(asset, feature)] = var
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with server:
            self._ready.set()
            await self._stop.wait()

    def start(self) -> OpcUaTestServer:
        self._ready.clear()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"OPC UA test server did not start on {self.url}")
        return self

    def set(self, asset: str, feature: str, value: object) -> None:
        from asyncua import ua

        var = self._vars[(asset, feature)]
        variant = ua.Variant(value, ua.VariantType.Double) if isinstance(value, float) \
            else ua.Variant(value)
        asyncio.run_coroutine_threadsafe(var.write_value(variant), self._loop).result(10)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)
        self._loop = self._stop = self._thread = None


class SilentServer:
    """Accepts TCP connections and never answers: every request times out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def make_opcua_certificate(folder: Path, name: str, server: bool) -> tuple[Path, Path]:
    """A self-signed OPC UA application certificate (DER) and its key (PEM) for 127.0.0.1."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.der", folder / f"{name}.pem"
    use = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    asyncio.run(setup_self_signed_certificate(key, cert, f"urn:pdm:test:{name}", "127.0.0.1",
                                              use, {"commonName": name}))
    return cert, key
