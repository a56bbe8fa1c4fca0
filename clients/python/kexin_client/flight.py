"""Arrow Flight SQL to a kexin node, through ADBC.

    import kexin_client.flight as kf
    member, key = kexin_client.load_key("space/keys/alice.key")
    conn = kf.connect("grpc+tls://127.0.0.1:8815", space="hubei-demo", node="h1",
                      node_key="<node-h1's public_key>", member=member, key=key,
                      scene="diabetes-2027")
    cur = conn.cursor()
    cur.execute("SELECT sex, count(*) FROM patients GROUP BY sex")
    tbl = cur.fetch_arrow_table()      # pyarrow.Table; tbl.to_pandas(), polars.from_arrow(tbl)
    cur.outcome                        # audit_seq, checkpoint, explanation, dp, contract

Each ``execute`` signs the query (``kexin/query-request/v1``) with the
member's key and sends it in the ``kexin-query`` call header (ADBC's
per-statement RPC headers); the node runs it through the same gate as
``kexin query``. A refusal raises the ADBC error whose message starts with
the ``KX-…`` code.

TLS is pinned to the node's key: the certificate is fetched, its key checked
against ``node_key``, and that exact certificate is the only root ADBC's TLS
accepts.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
from typing import Any, Optional
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from . import TAGS, PinError, _nonce, _now, canonical, sign

CALL_HEADER = "adbc.flight.sql.rpc.call_header.kexin-query"


def pinned_certificate(host: str, port: int, node_key: bytes, timeout: float = 30.0) -> str:
    """The server's certificate (PEM), once its key is checked to be the
    node's."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    pub = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(pub, Ed25519PublicKey) or (
        pub.public_bytes(Encoding.Raw, PublicFormat.Raw) != node_key
    ):
        raise PinError(f"the server at {host}:{port} does not hold the node's key")
    return ssl.DER_cert_to_PEM_cert(der)


def query_header(
    space: str,
    node: str,
    member: str,
    key: Ed25519PrivateKey,
    scene: str,
    sql: str,
    contract: Optional[str] = None,
) -> str:
    """The ``kexin-query`` header for ``sql``: the signed query, sent with
    its ``sql`` field empty (the node puts the statement's SQL back before
    it checks the signature)."""
    body = {
        "space": space,
        "node": node,
        "member": member,
        "scene": scene,
        "contract": contract,
        "sql": sql,
        "nonce": _nonce(),
        "time": _now(),
    }
    env = sign(TAGS["query"], body, key)
    env["body"] = dict(body, sql="")
    return base64.urlsafe_b64encode(canonical(env)).rstrip(b"=").decode("ascii")


class Cursor:
    """A DB-API cursor whose every ``execute`` is a signed query."""

    def __init__(self, conn: "Connection"):
        self._conn = conn
        self._cur = None
        self.outcome: Optional[dict] = None

    def execute(self, sql: str, parameters: Any = None) -> "Cursor":
        if parameters is not None:
            raise ValueError("kexin takes no bound parameters: the signed SQL is the query")
        c = self._conn
        header = query_header(c.space, c.node, c.member, c.key, c.scene, sql, c.contract)
        # A new ADBC statement for each query: the driver adds call headers
        # to a statement's earlier ones rather than replacing them.
        if self._cur is not None:
            self._cur.close()
        self._cur = c.adbc.cursor()
        self._cur.adbc_statement.set_options(**{CALL_HEADER: header})
        self.outcome = None
        self._cur.execute(sql)
        return self

    def _executed(self):
        if self._cur is None:
            raise RuntimeError("execute a query first")
        return self._cur

    def fetch_arrow_table(self):
        tbl = self._executed().fetch_arrow_table()
        self.outcome = outcome_of(tbl.schema)
        return tbl

    def fetchall(self):
        return self._executed().fetchall()

    @property
    def description(self):
        return self._executed().description

    def close(self) -> None:
        if self._cur is not None:
            self._cur.close()
            self._cur = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def outcome_of(schema) -> dict:
    """The outcome the node put in a released table's schema metadata."""
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    out: dict = {}
    for k, v in meta.items():
        if not k.startswith("kexin."):
            continue
        name = k[len("kexin."):]
        if name in ("explanation", "dp"):
            out[name] = json.loads(v)
        elif name in ("audit_seq", "suppressed_groups"):
            out[name] = int(v)
        else:
            out[name] = v
    return out


class Connection:
    """An ADBC Flight SQL connection that signs each statement."""

    def __init__(self, adbc, *, space, node, member, key, scene, contract):
        self.adbc = adbc
        self.space, self.node, self.member, self.key = space, node, member, key
        self.scene, self.contract = scene, contract

    def cursor(self) -> Cursor:
        return Cursor(self)

    def close(self) -> None:
        self.adbc.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(
    url: str,
    *,
    space: str,
    node: str,
    node_key: str,
    member: str,
    key: Ed25519PrivateKey,
    scene: str,
    contract: Optional[str] = None,
) -> Connection:
    """Connect to a node's Flight SQL port (``grpc+tls://HOST:PORT``) as
    ``member``, asking under ``scene`` (and ``contract``, else the member's
    agreed contract for the scene)."""
    import adbc_driver_flightsql.dbapi as flightsql
    from adbc_driver_flightsql import DatabaseOptions

    u = urlsplit(url)
    if u.scheme != "grpc+tls" or not u.hostname or not u.port:
        raise ValueError("the Flight SQL URL is grpc+tls://HOST:PORT")
    pem = pinned_certificate(u.hostname, u.port, bytes.fromhex(node_key))
    adbc = flightsql.connect(
        url,
        db_kwargs={
            DatabaseOptions.TLS_ROOT_CERTS.value: pem,
            # The pinned certificate names localhost; trust is the pin.
            DatabaseOptions.TLS_OVERRIDE_HOSTNAME.value: "localhost",
        },
        autocommit=True,
    )
    return Connection(adbc, space=space, node=node, member=member, key=key, scene=scene,
                      contract=contract)
