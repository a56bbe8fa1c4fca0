"""Researchers over Arrow Flight SQL (ADBC): the released rows equal what
`kexin query` prints, with the outcome as metadata; refusals carry the same
code as on the CLI; the TLS pin holds; 32 clients at once."""

import concurrent.futures
import json

import pyarrow as pa
import pytest

import kexin_client.flight as kf
from kexin_client import PinError, load_key

SQL = "SELECT sex, count(*) AS n, avg(age) AS mean_age FROM patients GROUP BY sex"


def connect(space, node, member="alice", scene="diabetes-2027", node_key=None):
    who, key = load_key(str(space.key(member)))
    return kf.connect(node["flight"], space=node["space"], node="h1",
                      node_key=node_key or node["node_key"], member=who, key=key, scene=scene)


def cli(space, member, sql, scene="diabetes-2027"):
    out = space.kexin("query", "--space", str(space.dir), "--node", "h1", "--scene", scene,
                      "--as", member, "--format", "json", sql)
    return json.loads(out.stdout)


def test_adbc_gets_the_rows_kexin_query_prints(space, node):
    with connect(space, node) as conn, conn.cursor() as cur:
        cur.execute(SQL)
        tbl = cur.fetch_arrow_table()
        outcome = cur.outcome
    expected = cli(space, "alice", SQL)
    assert expected["status"] == "released"
    assert tbl.column_names == expected["columns"]
    assert [list(r.values()) for r in tbl.to_pylist()] == expected["rows"]
    assert tbl.schema.field("n").type == pa.int64()
    assert outcome["audit_seq"] > 0 and outcome["checkpoint"].startswith("kexin/")
    assert outcome["explanation"] == expected["explanation"]


def test_a_refusal_carries_the_cli_code_and_no_data(space, node):
    sql = "SELECT age FROM patients"
    expected = cli(space, "alice", sql)
    assert expected["status"] == "refused"
    with connect(space, node) as conn, conn.cursor() as cur:
        with pytest.raises(Exception) as e:
            cur.execute(sql)
            cur.fetch_arrow_table()
    assert f'{expected["code"]}: {expected["rule"]}' in str(e.value)


def test_one_cursor_runs_query_after_query(space, node):
    with connect(space, node) as conn, conn.cursor() as cur:
        cur.execute(SQL)
        first = cur.fetch_arrow_table().to_pylist()
        with pytest.raises(Exception) as e:
            cur.execute("SELECT age FROM patients")
            cur.fetch_arrow_table()
        assert "KX-AUTH" not in str(e.value) and "KX-" in str(e.value)
        cur.execute(SQL)
        assert cur.fetch_arrow_table().to_pylist() == first


def test_a_query_signed_by_another_key_is_refused(space, node):
    who, key = load_key(str(space.key("bob")))
    conn = kf.connect(node["flight"], space=node["space"], node="h1", node_key=node["node_key"],
                      member="alice", key=key, scene="diabetes-2027")
    with conn, conn.cursor() as cur:
        with pytest.raises(Exception) as e:
            cur.execute(SQL)
            cur.fetch_arrow_table()
    assert "KX-AUTH" in str(e.value)


def test_the_pin_refuses_another_node(space, node):
    with pytest.raises(PinError):
        connect(space, node, node_key=node["keys"]["node-h2"])


def test_thirty_two_clients_at_once(space, node):
    def one(_):
        with connect(space, node) as conn, conn.cursor() as cur:
            cur.execute(SQL)
            return cur.fetch_arrow_table().to_pylist()

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        tables = list(pool.map(one, range(32)))
    assert len(tables) == 32 and tables[0]
    assert all(t == tables[0] for t in tables)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (lengths under 128)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def _any(message: str, body: bytes) -> bytes:
    url = f"type.googleapis.com/arrow.flight.protocol.sql.{message}".encode()
    return _field(1, url) + _field(2, body)


def test_malformed_flight_calls_are_refused_and_change_nothing(space, node):
    import pyarrow.flight as fl

    # Invalid-argument statuses arrive as ArrowInvalid, the others as FlightError.
    errors = (fl.FlightError, pa.ArrowException)

    host, port = node["flight"].removeprefix("grpc+tls://").rsplit(":", 1)
    pem = kf.pinned_certificate(host, int(port), bytes.fromhex(node["node_key"]))
    raw = fl.FlightClient(node["flight"], tls_root_certs=pem.encode(), override_hostname="localhost")
    # A statement without a signed query.
    cmd = _any("CommandStatementQuery", _field(1, SQL.encode()))
    with pytest.raises(errors) as e:
        raw.get_flight_info(fl.FlightDescriptor.for_command(cmd))
    assert "KX-AUTH" in str(e.value)
    # A ticket for no released result, and a ticket that is not one.
    ticket = _any("TicketStatementQuery", _field(1, bytes(32)))
    with pytest.raises(errors) as e:
        raw.do_get(fl.Ticket(ticket)).read_all()
    assert "KX-REQUEST" in str(e.value)
    with pytest.raises(errors):
        raw.do_get(fl.Ticket(b"\xff\x00garbage")).read_all()
    raw.close()
    # The node still answers.
    with connect(space, node) as conn, conn.cursor() as cur:
        cur.execute(SQL)
        assert cur.fetch_arrow_table().num_rows > 0
