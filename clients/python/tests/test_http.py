"""kexin_client against a live node: each role's calls, the same answers
as the CLI, and refusals that carry a fixed code and never data."""

import datetime
import json
import secrets

import pytest

from kexin_client import LogError, Node, PinError, Refused, check_log, load_key, sign, TAGS

SQL = "SELECT sex, count(*) AS n, avg(age) AS mean_age FROM patients GROUP BY sex"


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def client(space, node, member=None):
    key = None
    if member is not None:
        who, key = load_key(str(space.key(member)))
        assert who == member
    return Node(node["url"], space=node["space"], node="h1", node_key=node["node_key"],
                member=member, key=key)


def test_an_individual_grants_lists_revokes_and_sees_their_history(space, node):
    me = client(space, node, "p00000")
    scenes = {s["name"]: s for s in me.scenes()}
    assert scenes["diabetes-consent"]["consent_required"] is True
    granted = me.grant("diabetes-consent", until="2030-12-31")
    assert (granted["person"], granted["scene"], granted["action"]) == ("p00000", "diabetes-consent", "grant")
    revoked = me.revoke("diabetes-consent")
    assert revoked["action"] == "revoke" and revoked["seq"] > granted["seq"]
    mine = me.consents(scene="diabetes-consent")
    assert [r["action"] for r in mine][-2:] == ["grant", "revoke"]
    assert all(r["person"] == "p00000" for r in mine)
    assert isinstance(me.history(), list)
    # Another person's receipts are not shown to them.
    with pytest.raises(Refused) as e:
        me.consents(person="p00001")
    assert (e.value.status, e.value.code) == (403, "KX-AUTH")


def test_a_query_over_the_api_gets_the_cli_rows(space, node):
    alice = client(space, node, "alice")
    out = alice.query("diabetes-2027", SQL)
    cli = space.kexin("query", "--space", str(space.dir), "--node", "h1", "--scene", "diabetes-2027",
                      "--as", "alice", "--format", "json", SQL)
    assert cli.returncode == 0, cli.stderr
    cli = json.loads(cli.stdout)
    assert out["status"] == "released"
    for k in ("columns", "rows", "suppressed_groups", "explanation"):
        assert out[k] == cli[k], k
    refused = alice.query("diabetes-2027", "SELECT age FROM patients")
    assert refused["status"] == "refused" and refused["code"].startswith("KX-")
    assert isinstance(alice.budgets(), list)


def test_refusals_carry_a_code_and_no_data(space, node):
    alice = client(space, node, "alice")
    anon = client(space, node)
    with pytest.raises(Refused) as e:
        anon.call("GET", "/v1/contracts", signed=False)
    assert (e.value.status, e.value.code) == (401, "KX-AUTH")
    # A replayed call.
    h = alice.request_header("GET", "/v1/contracts", b"")
    assert isinstance(alice.call("GET", "/v1/contracts", header=h), list)
    with pytest.raises(Refused) as e:
        alice.call("GET", "/v1/contracts", header=h)
    assert e.value.code == "KX-AUTH" and "replay" in e.value.rule
    # A researcher does not read a person's history.
    with pytest.raises(Refused) as e:
        alice.history()
    assert (e.value.status, e.value.code) == (403, "KX-AUTH")
    # A receipt changed after it was signed: refused by the engine, audited.
    me = client(space, node, "p00001")
    sc = {s["name"]: s for s in me.scenes()}["diabetes-consent"]
    body = {"space": node["space"], "person": "p00001", "scene": "diabetes-consent", "action": "grant",
            "purpose": sc["purpose_code"], "modifiers": [], "requester": sc["requester"], "until": None,
            "nonce": secrets.token_hex(16), "time": now()}
    env = sign(TAGS["consent"], body, me.key)
    env["body"]["until"] = "2099-12-31"
    with pytest.raises(Refused) as e:
        me.call("POST", "/v1/consents", env)
    assert (e.value.status, e.value.code) == (403, "KX-AUTH")
    # A node that is not the pinned one.
    wrong = Node(node["url"], space=node["space"], node="h1", node_key=node["keys"]["node-h2"])
    with pytest.raises(PinError):
        wrong.info()


def test_anyone_reads_the_checkpoint_and_a_proof(space, node):
    alice = client(space, node, "alice")
    anon = client(space, node)
    assert anon.info()["public_key"] == node["node_key"]
    seq = alice.query("diabetes-2027", SQL)["audit_seq"]
    cp = anon.checkpoint()
    assert cp["note"].startswith("kexin/")
    mine = alice.proof(seq)["proof"]
    theirs = anon.proof(seq, signed=False)["proof"]
    assert json.loads(mine["entry"])["actor"] == "alice"
    assert theirs["entry"] is None and theirs["leaf"] == mine["leaf"]
    assert anon.openapi()["openapi"].startswith("3.1")


def test_the_log_read_page_by_page_checks_here_and_agrees_with_the_cli(space, node):
    """The client checks the log with its own Merkle and signed-note code
    (not the node's), and gets the root `kexin audit verify` prints."""
    alice = client(space, node, "alice")
    anon = client(space, node)
    seq = alice.query("diabetes-2027", SQL)["audit_seq"]
    origin = f"kexin/{node['space']}/h1"
    pages, verifier = alice.read_log(limit=3)
    assert len(pages) > 1
    mine = check_log(pages, verifier, origin)
    assert seq in [e["seq"] for e in mine["shown"]]
    assert all(e["actor"] == "alice" for e in mine["shown"])
    # Anonymously: every leaf, no entry, the same root.
    pages_anon, _ = anon.read_log(signed=False)
    nobody = check_log(pages_anon, verifier, origin)
    assert nobody["shown"] == []
    # The CLI through the peer port: the same log (or a longer one, of
    # which this one is a prefix).
    kept = space.dir / "alice.note"
    kept.write_text(mine["checkpoint"])
    cli = space.kexin("audit", "verify", "--space", str(space.dir), "--node", "h1", "--as", "alice",
                      "--checkpoint", str(kept))
    assert cli.returncode == 0, cli.stdout + cli.stderr
    if nobody["size"] == mine["size"]:
        assert nobody["root"] == mine["root"] and mine["root"] in cli.stdout
    # An entry changed in transit, a leaf dropped, another log's name.
    bad = json.loads(json.dumps(pages))
    for p in bad:
        if p["entries"]:
            p["entries"][0] = p["entries"][0].replace('"alice"', '"alicf"')
            break
    with pytest.raises(LogError, match="edited"):
        check_log(bad, verifier, origin)
    short = json.loads(json.dumps(pages))
    short[-1]["leaves"].pop()
    with pytest.raises(LogError):
        check_log(short, verifier, origin)
    with pytest.raises(LogError):
        check_log(pages, verifier, f"kexin/{node['space']}/h2")


def test_a_dispute_over_the_api_is_seen_by_the_parties_and_resolved(space, node):
    alice = client(space, node, "alice")
    carol = client(space, node, "carol")
    bob = client(space, node, "bob")
    seq = alice.query("diabetes-2027", SQL)["audit_seq"]
    # Not a party to alice's entry.
    with pytest.raises(Refused) as e:
        bob.open_dispute(seq, "not mine")
    assert (e.value.status, e.value.code) == (403, "KX-DISPUTE")
    opened = alice.open_dispute(seq, "the released rows differ from my copy")
    assert (opened["state"], opened["opened_by"], opened["seq"]) == ("open", "alice", seq)
    assert any(d["id"] == opened["id"] for d in carol.disputes())
    assert all(d["id"] != opened["id"] for d in bob.disputes())
    # The researcher may not decide it; the data holder does.
    with pytest.raises(Refused) as e:
        alice.resolve_dispute(opened["id"], "upheld", "mine")
    assert e.value.code == "KX-DISPUTE"
    done = carol.resolve_dispute(opened["id"], "dismissed", "the rows match the output digest")
    assert (done["state"], done["resolved_by"]) == ("dismissed", "carol")
    assert [d["state"] for d in alice.disputes() if d["id"] == opened["id"]] == ["dismissed"]


def test_a_data_holder_reads_a_signed_statement(space, node):
    alice = client(space, node, "alice")
    carol = client(space, node, "carol")
    alice.query("diabetes-2027", SQL)
    st = carol.statement()
    body = st["statement"]["body"]
    assert body["node"] == "h1" and body["made_for"] == "carol"
    assert st["vouch"]["certificate"]["body"]["role"] == "node"
    mine = [l for l in body["lines"] if l["requester"] == "alice" and l["scene"] == "diabetes-2027"]
    # One line per contract (refusals before a contract was found have none).
    assert sum(l["released"] for l in mine) >= 1
    # A researcher sees only her own lines.
    assert all(l["requester"] == "alice" for l in alice.statement()["statement"]["body"]["lines"])
