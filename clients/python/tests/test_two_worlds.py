"""The node's front ends, tested the two-worlds way.

A researcher with a valid scene knows one patient's exact weight (a rare
value) and wants to learn whether her height is exactly 212.3 cm. Two
copies of one generated space differ in that height alone (212.3 in world
A, 212.2 in world B), each served by its own node. Every attack query goes
to both worlds over the HTTP API and over Flight SQL, and everything a
researcher sees there must be the same: HTTP status and body (rows,
`suppressed_groups`, code, rule, explanation, audit entry number), Flight
rows, schema and its metadata, or the gRPC error and its trailers. The
engine's own two-worlds suite covers many more queries in process; this
one checks that the ports add nothing that depends on the data."""

import shutil

import pyarrow.parquet as pq
import pytest

import kexin_client.flight as kf
from kexin_client import Node, load_key

from conftest import make_space, renumber_ports, start_node, stop_node

WEIGHT = 187.9
VICTIM = f"weight_kg = {WEIGHT} AND height_cm = 212.3"

#: Queries whose every legitimate release is the same in both worlds:
#: the victim alone, conditions on her secret in filters, subqueries,
#: aggregate arguments and ORDER BY/LIMIT, and arithmetic that fails only
#: in one world.
ATTACKS = [
    f"SELECT count(*) FROM patients WHERE {VICTIM}",
    f"SELECT sex, count(*) FROM patients WHERE EXISTS (SELECT 1 FROM patients WHERE {VICTIM}) GROUP BY sex",
    f"SELECT count(*) FROM patients WHERE sex IN (SELECT sex FROM patients WHERE {VICTIM})",
    f"SELECT sum(x) FROM (SELECT CASE WHEN {VICTIM} THEN 100000 ELSE 1000 END AS x FROM patients) t",
    "SELECT avg(1.0 / (height_cm - 212.3)) FROM patients",
    f"SELECT sex, count(*) FROM patients WHERE sqrt(CASE WHEN {VICTIM} THEN -1 ELSE 1 END) > 0 GROUP BY sex",
    f"SELECT region, count(*) FROM patients WHERE {VICTIM} GROUP BY region",
    "SELECT region, count(*) AS n FROM patients WHERE height_cm > 200 GROUP BY region ORDER BY n DESC LIMIT 1",
    "SELECT sex, count(*) FROM patients WHERE height_cm > 205 GROUP BY sex",
    "SELECT sex, count(*) AS n, avg(age) AS mean_age FROM patients GROUP BY sex",
]


def set_victim(path, height):
    """The first patient of the file becomes the victim."""
    t = pq.read_table(path)
    cols = {}
    for name, value in (("height_cm", height), ("weight_kg", WEIGHT)):
        col = t.column(name).to_pylist()
        col[0] = value
        cols[name] = col
    for name, col in cols.items():
        i = t.schema.get_field_index(name)
        t = t.set_column(i, t.schema.field(i), [col])
    pq.write_table(t, path)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    a = make_space(tmp_path_factory.mktemp("world-a"))
    b_dir = tmp_path_factory.mktemp("world-b") / "space"
    shutil.copytree(a.dir, b_dir)
    b = type(a)(b_dir)
    renumber_ports(b)
    set_victim(a.dir / "h1" / "patients.parquet", 212.3)
    set_victim(b.dir / "h1" / "patients.parquet", 212.2)
    # The node reads its loaded copy: load the changed file in each world.
    for w in (a, b):
        out = w.kexin("dataset", "add", "--space", str(w.dir), "--node", "h1", "--dataset", "patients")
        assert out.returncode == 0, out.stderr
    started = [start_node(w) for w in (a, b)]
    yield [(w, info) for w, (_, info) in zip((a, b), started)]
    for proc, _ in started:
        stop_node(proc)


def http_seen(world, info, sql):
    space, _ = world, info
    who, key = load_key(str(space.key("alice")))
    node = Node(info["url"], space=info["space"], node="h1", node_key=info["node_key"],
                member=who, key=key)
    out = node.query("diabetes-2027", sql)
    # The checkpoint is a signature over the log, whose entries carry their
    # times: the same requests sign different notes. Everything else stays.
    out.pop("checkpoint", None)
    return out


def flight_seen(world, info, sql):
    who, key = load_key(str(world.key("alice")))
    with kf.connect(info["flight"], space=info["space"], node="h1", node_key=info["node_key"],
                    member=who, key=key, scene="diabetes-2027") as conn, conn.cursor() as cur:
        try:
            cur.execute(sql)
            tbl = cur.fetch_arrow_table()
        except Exception as e:  # the gRPC status, its message and trailers
            return {"error": type(e).__name__, "text": str(e)}
        meta = {k: v for k, v in (tbl.schema.metadata or {}).items() if k != b"kexin.checkpoint"}
        return {
            "schema": [(f.name, str(f.type), f.nullable) for f in tbl.schema],
            "rows": sorted(map(repr, tbl.to_pylist())),
            "metadata": meta,
        }


def test_the_data_worlds_differ(worlds):
    (a, _), (b, _) = worlds
    # What the nodes read: their loaded copies.
    ha = pq.read_table(a.dir / "h1" / "data" / "patients.parquet").column("height_cm")[0].as_py()
    hb = pq.read_table(b.dir / "h1" / "data" / "patients.parquet").column("height_cm")[0].as_py()
    assert (ha, hb) == (212.3, 212.2)


@pytest.mark.parametrize("sql", ATTACKS)
def test_http_and_flight_show_the_same_in_both_worlds(worlds, sql):
    (a, ia), (b, ib) = worlds
    http_a, http_b = http_seen(a, ia, sql), http_seen(b, ib, sql)
    assert http_a == http_b, sql
    flight_a, flight_b = flight_seen(a, ia, sql), flight_seen(b, ib, sql)
    assert flight_a == flight_b, sql
