"""A client of a kexin node's HTTP JSON API.

Every call but the public ones (the node's identity, checkpoint, audit
proofs and OpenAPI document) is signed with the member's ed25519 key: the
``Kexin-Request`` header carries a signed request that binds the space, the
node, the member, the method, the path with its query string, the SHA-256
of the body, a fresh nonce and the time. What a state-changing call asks
for (a consent receipt, a contract action, an airlock decision, a query) is
a second signed body, made here exactly as the ``kexin`` CLI makes it.

TLS is pinned to the node's certified ed25519 key (from the space's
``federation.toml`` and certificates, or ``kexin node`` operators): the
certificate's names and issuer are not used; its key must be the node's.

    from kexin_client import Node, load_key
    member, key = load_key("keys/p00000.key")
    h1 = Node("https://127.0.0.1:8443", space="hubei-demo", node="h1",
              node_key="<hex>", member=member, key=key)
    h1.grant("diabetes-consent", until="2027-12-31")
    h1.history()
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import json
import os
import secrets
import ssl
import stat
from typing import Any, Optional
from urllib.parse import urlencode, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "Node",
    "LogError",
    "check_log",
    "open_checkpoint",
    "Refused",
    "PinError",
    "load_key",
    "sign",
    "canonical",
    "TAGS",
]

#: Domain tags: what a signature is for (the engine's `identity::tag`).
TAGS = {
    "request": "kexin/request/v1",
    "query": "kexin/query-request/v1",
    "consent": "kexin/consent-receipt/v1",
    "contract": "kexin/contract/v1",
    "review": "kexin/airlock-decision/v1",
    "dispute": "kexin/dispute/v1",
}


class Refused(Exception):
    """A refusal: HTTP status, the fixed ``KX-…`` code, the rule that fired
    and the audit entry that recorded it (if any). Never data."""

    def __init__(self, status: int, code: str, rule: str, audit_seq: Optional[int]):
        super().__init__(f"{code}: {rule}")
        self.status = status
        self.code = code
        self.rule = rule
        self.audit_seq = audit_seq


class PinError(Exception):
    """The server's certificate does not carry the node's key."""


def load_key(path: str) -> tuple[str, Ed25519PrivateKey]:
    """A kexin key file: (member, signing key). Refuses a file other users
    can read, as the CLI does."""
    st = os.stat(path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} is readable by other users; run chmod 600 on it")
    with open(path, encoding="utf-8") as f:
        kf = json.load(f)
    if kf.get("kexin_key") != 1 or set(kf) != {"kexin_key", "member", "seed"}:
        raise ValueError(f"{path} is not a kexin key file")
    seed = bytes.fromhex(kf["seed"])
    if len(seed) != 32:
        raise ValueError(f"{path} is not a kexin key file")
    return kf["member"], Ed25519PrivateKey.from_private_bytes(seed)


def canonical(body: Any) -> bytes:
    """The body's JSON as the engine serializes it: fields in declaration
    order (pass dicts in that order), no spaces, UTF-8."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign(tag: str, body: dict, key: Ed25519PrivateKey) -> dict:
    """A signed envelope: ed25519 over ``tag ‖ 0x00 ‖ JSON(body)``."""
    sig = key.sign(tag.encode("utf-8") + b"\x00" + canonical(body))
    return {"body": body, "signature": sig.hex()}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _nonce() -> str:
    return secrets.token_hex(16)


class Node:
    """One node's API, called as one member (or anonymously)."""

    def __init__(
        self,
        url: str,
        *,
        space: str,
        node: str,
        node_key: str,
        member: Optional[str] = None,
        key: Optional[Ed25519PrivateKey] = None,
        timeout: float = 60.0,
    ):
        u = urlsplit(url)
        if u.scheme != "https" or not u.hostname or not u.port:
            raise ValueError("the API's URL is https://HOST:PORT")
        self.host, self.port = u.hostname, u.port
        self.space, self.node = space, node
        self.node_key = bytes.fromhex(node_key)
        self.member, self.key = member, key
        self.timeout = timeout

    # ------------------------------------------------------------ transport

    def _connect(self) -> http.client.HTTPSConnection:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        # Pinned by key below, not by a certificate authority or a name.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=self.timeout)
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
        pub = x509.load_der_x509_certificate(der).public_key()
        if not isinstance(pub, Ed25519PublicKey) or (
            pub.public_bytes(Encoding.Raw, PublicFormat.Raw) != self.node_key
        ):
            conn.close()
            raise PinError(f"the server at {self.host}:{self.port} is not node {self.node}")
        return conn

    def request_header(self, method: str, target: str, body: bytes) -> str:
        """The ``Kexin-Request`` header of one call."""
        if self.member is None or self.key is None:
            raise ValueError("an anonymous client cannot sign")
        env = sign(
            TAGS["request"],
            {
                "space": self.space,
                "node": self.node,
                "member": self.member,
                "method": method,
                "target": target,
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "nonce": _nonce(),
                "time": _now(),
            },
            self.key,
        )
        return base64.urlsafe_b64encode(canonical(env)).rstrip(b"=").decode("ascii")

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Optional[dict] = None,
        signed: bool = True,
        header: Optional[str] = None,
    ) -> Any:
        """One call; the answer's JSON, or :class:`Refused`."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        target = path + ("?" + urlencode(query) if query else "")
        data = b"" if body is None else canonical(body)
        headers = {"Content-Type": "application/json", "Connection": "close"}
        if header is not None:
            headers["Kexin-Request"] = header
        elif signed and self.member is not None:
            headers["Kexin-Request"] = self.request_header(method, target, data)
        conn = self._connect()
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
        finally:
            conn.close()
        answer = json.loads(raw) if raw else None
        if status != 200:
            a = answer if isinstance(answer, dict) else {}
            raise Refused(status, a.get("code", "KX-INTERNAL"), a.get("rule", ""), a.get("audit_seq"))
        return answer

    # ---------------------------------------------------------------- anyone

    def info(self) -> dict:
        return self.call("GET", "/v1/node", signed=False)

    def checkpoint(self) -> dict:
        return self.call("GET", "/v1/checkpoint", signed=False)

    def proof(self, seq: int, signed: bool = True) -> dict:
        """The inclusion proof of audit entry ``seq`` (the entry itself only
        to its actor, the node's holders and the operator)."""
        return self.call("GET", f"/v1/audit/{int(seq)}/proof", signed=signed)

    def openapi(self) -> dict:
        return self.call("GET", "/v1/openapi.json", signed=False)

    def audit_page(self, size: Optional[int] = None, start: int = 1,
                   limit: Optional[int] = None, signed: bool = True) -> dict:
        """One page of the node's audit log: ``{page, verifier}`` (see
        :func:`check_log`)."""
        return self.call("GET", "/v1/audit", params={"size": size, "from": start, "limit": limit},
                         signed=signed)

    def read_log(self, signed: bool = True, limit: Optional[int] = None) -> tuple[list, str]:
        """Every page of the node's audit log under one checkpoint (the
        latest when the first page is read), and the node's verifier key:
        all leaf hashes, and the entries the caller may see (their own; all
        for the node's holders and the operator; none anonymously)."""
        pages, verifier, size = [], None, None
        while True:
            start = pages[-1]["from"] + len(pages[-1]["leaves"]) if pages else 1
            a = self.audit_page(size, start, limit, signed)
            if verifier is None:
                verifier = a["verifier"]
            elif a["verifier"] != verifier:
                raise LogError("the node changed its verifier key between pages")
            page = a["page"]
            size = page["size"]
            pages.append(page)
            if not page["leaves"] or page["from"] + len(page["leaves"]) > size:
                return pages, verifier

    # ---------------------------------------------------------- individuals

    def scenes(self) -> list:
        return self.call("GET", "/v1/scenes")

    def _receipt(self, scene: str, action: str, until: Optional[str], modifiers: list) -> dict:
        sc = next((s for s in self.scenes() if s["name"] == scene), None)
        if sc is None:
            raise ValueError(f"no scene {scene!r} in the space")
        body = {
            "space": self.space,
            "person": self.member,
            "scene": scene,
            "action": action,
            "purpose": sc["purpose_code"],
            "modifiers": list(modifiers),
            "requester": sc["requester"],
            "until": until,
            "nonce": _nonce(),
            "time": _now(),
        }
        return self.call("POST", "/v1/consents", sign(TAGS["consent"], body, self.key))

    def grant(self, scene: str, until: Optional[str] = None, modifiers: tuple = ()) -> dict:
        """Grant ``scene`` (until a day, inclusive, or until revoked)."""
        return self._receipt(scene, "grant", until, list(modifiers))

    def revoke(self, scene: str) -> dict:
        return self._receipt(scene, "revoke", None, [])

    def consents(self, person: Optional[str] = None, scene: Optional[str] = None) -> list:
        return self.call("GET", "/v1/consents", params={"person": person, "scene": scene})

    def history(self) -> list:
        """Every audited use of the calling person's records."""
        return self.call("GET", "/v1/history")

    # ----------------------------------------------------------- researchers

    def query(self, scene: str, sql: str, contract: Optional[str] = None) -> dict:
        """A query's outcome, as ``kexin query --format json`` prints it."""
        body = {
            "space": self.space,
            "node": self.node,
            "member": self.member,
            "scene": scene,
            "contract": contract,
            "sql": sql,
            "nonce": _nonce(),
            "time": _now(),
        }
        return self.call("POST", "/v1/queries", sign(TAGS["query"], body, self.key))

    def budgets(self, actor: Optional[str] = None, scene: Optional[str] = None) -> list:
        return self.call("GET", "/v1/budgets", params={"actor": actor, "scene": scene})

    # ------------------------------------------------------ contracts, airlock

    def contracts(self) -> list:
        return self.call("GET", "/v1/contracts")

    def contract_action(self, contract: str, action: str) -> dict:
        """``agree`` (the requester), ``finalize`` or ``terminate``."""
        body = {
            "space": self.space,
            "node": self.node,
            "contract": contract,
            "action": action,
            "member": self.member,
            "nonce": _nonce(),
            "time": _now(),
        }
        return self.call("POST", "/v1/contracts/actions", sign(TAGS["contract"], body, self.key))

    def airlock(self) -> list:
        return self.call("GET", "/v1/airlock")

    def decide(self, held_id: int, action: str, output_sha256: str) -> dict:
        """``approve``, ``reject`` or ``fetch`` a held result, over the digest
        of the bytes reviewed."""
        body = {
            "space": self.space,
            "node": self.node,
            "id": int(held_id),
            "action": action,
            "member": self.member,
            "output_sha256": output_sha256,
            "nonce": _nonce(),
            "time": _now(),
        }
        return self.call("POST", "/v1/airlock/decisions", sign(TAGS["review"], body, self.key))

    def udfs(self, scene: Optional[str] = None) -> list:
        return self.call("GET", "/v1/udfs", params={"scene": scene})

    # -------------------------------------------------------------- disputes

    def statement(self, date_from: Optional[str] = None, date_to: Optional[str] = None) -> dict:
        """The node's signed accounting statement for the caller:
        ``{statement: {body, signature}, vouch}``."""
        return self.call("GET", "/v1/accounting/statement",
                         params={"from": date_from, "to": date_to})

    def disputes(self) -> list:
        """The disputes on the node the caller may see."""
        return self.call("GET", "/v1/disputes")

    def open_dispute(self, seq: int, reason: str) -> dict:
        """Open a dispute over audit entry ``seq`` (as a party to it)."""
        body = {
            "space": self.space,
            "node": self.node,
            "seq": int(seq),
            "member": self.member,
            "reason": reason,
            "nonce": _nonce(),
            "time": _now(),
        }
        return self.call("POST", "/v1/disputes", sign(TAGS["dispute"], body, self.key))

    def resolve_dispute(self, dispute: int, outcome: str, note: str) -> dict:
        """``upheld`` or ``dismissed`` (a data holder, the operator), or
        ``withdrawn`` (the member who opened it)."""
        body = {
            "space": self.space,
            "node": self.node,
            "dispute": int(dispute),
            "member": self.member,
            "outcome": outcome,
            "note": note,
            "nonce": _nonce(),
            "time": _now(),
        }
        return self.call(
            "POST", "/v1/disputes/resolutions", sign(TAGS["dispute"], body, self.key)
        )


# ---------------------------------------------------- the audit log, checked


class LogError(ValueError):
    """A node's log or checkpoint that does not verify."""


def _sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def merkle_root(leaves: list) -> bytes:
    """RFC 9162 section 2.1.1: the Merkle tree hash of a list of leaf hashes."""
    n = len(leaves)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return _sha256(b"\x01", merkle_root(leaves[:k]), merkle_root(leaves[k:]))


def open_checkpoint(note: str, verifier: str) -> tuple[str, int, bytes]:
    """Check a C2SP signed note (tlog-checkpoint) against a note verifier key
    ``<name>+<hex key id>+<base64(0x01 || ed25519 key)>``; its origin, tree
    size and root hash."""
    name, key_id, key = verifier.strip().split("+", 2)
    raw = base64.b64decode(key)
    if len(raw) != 33 or raw[0] != 1:
        raise LogError("the verifier key is not an Ed25519 note key")
    if _sha256(name.encode(), b"\n\x01", raw[1:])[:4].hex() != key_id:
        raise LogError("the verifier key's id does not match")
    public = Ed25519PublicKey.from_public_bytes(raw[1:])
    body, sep, sigs = note.partition("\n\n")
    if not sep:
        raise LogError("the checkpoint has no signature block")
    body += "\n"
    verified = False
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            raise LogError("a malformed signature line")
        signer, _, b64 = line[2:].partition(" ")
        blob = base64.b64decode(b64)
        if signer != name or len(blob) != 68 or blob[:4].hex() != key_id:
            continue
        try:
            public.verify(blob[4:], body.encode())
        except Exception as e:
            raise LogError("the checkpoint's signature does not verify") from e
        verified = True
    if not verified:
        raise LogError("no signature by the node's key")
    lines = body.splitlines()
    return lines[0], int(lines[1]), base64.b64decode(lines[2])


def check_log(pages: list, verifier: str, origin: str, kept: tuple = ()) -> dict:
    """Check pages read with :meth:`Node.read_log`, independently of the
    node's code: the checkpoint is signed by ``verifier`` and names
    ``origin`` (``kexin/<space>/<node>``); the pages cover leaves 1 to its
    size in order; the leaves make its root; each entry shown hashes to its
    leaf at its own place; and every signed checkpoint in ``kept`` (saved
    earlier) is the root of a prefix of the log. Returns ``{size, root,
    shown, checkpoint}``; raises :class:`LogError`."""
    if not pages:
        raise LogError("no page")
    note = pages[0]["checkpoint"]
    got_origin, size, root = open_checkpoint(note, verifier)
    if got_origin != origin:
        raise LogError(f"the checkpoint is of log {got_origin!r}, not {origin!r}")
    leaves, shown = [], []
    for page in pages:
        if page["checkpoint"] != note or page["size"] != size:
            raise LogError("the pages were read under different checkpoints")
        if page["from"] != len(leaves) + 1:
            raise LogError("the pages are not contiguous")
        start = len(leaves)
        leaves.extend(bytes.fromhex(h) for h in page["leaves"])
        last = 0
        for text in page["entries"]:
            e = json.loads(text)
            seq = e["seq"]
            if not (page["from"] <= seq < page["from"] + len(page["leaves"])) or seq <= last:
                raise LogError(f"entry {seq} is shown outside its place")
            last = seq
            if _sha256(b"\x00", text.encode()) != leaves[start + seq - page["from"]]:
                raise LogError(f"entry {seq} does not hash to its leaf: it was edited")
            shown.append(e)
    if len(leaves) != size:
        raise LogError(f"the pages hold {len(leaves)} leaves but the checkpoint covers {size}")
    if any(len(x) != 32 for x in leaves) or merkle_root(leaves) != root:
        raise LogError("the leaves do not make the checkpoint's root")
    for old in kept:
        o, n, r = open_checkpoint(old, verifier)
        if o != origin or n > size or merkle_root(leaves[:n]) != r:
            raise LogError(f"a kept checkpoint (size {n}) is not a prefix of the log")
    return {"size": size, "root": root.hex(), "shown": shown, "checkpoint": note}
