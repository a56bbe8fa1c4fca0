"""What benches/flight.sh prints, all on one space in one run:

1. A small gated query over Flight SQL to a warm node (ADBC, an open
   connection; each query signed afresh) against the same query as a whole
   `kexin query --local` process (start-up, opening the node, the query):
   medians of interleaved pairs.
2. Queries per second of concurrent small gated queries over Flight: 32
   clients at once (eight each for four researchers), BURST queries in all.
3. The gated query over Flight against plain DataFusion (the Python
   bindings of DataFusion 55) running the same SQL in process on the same
   Parquet file: what the gate, TLS and the round trip add.
"""

import concurrent.futures
import json
import os
import statistics
import subprocess
import time
import tomllib

import kexin_client
import kexin_client.flight as kf

DIR, KEXIN, FLIGHT = os.environ["DIR"], os.environ["KEXIN"], os.environ["FLIGHT"]
PAIRS, BURST = int(os.environ["PAIRS"]), int(os.environ["BURST"])
SQL = "SELECT sex, count(*) AS n, avg(age) AS mean_age FROM patients GROUP BY sex"

space = tomllib.load(open(f"{DIR}/space.toml", "rb"))["space"]["name"]
ids = subprocess.run([KEXIN, "id", "list", "--space", DIR, "--format", "json"],
                     capture_output=True, text=True, check=True).stdout
node_key = next(m["public_key"] for m in map(json.loads, ids.splitlines()) if m["member"] == "node-h1")


def connect(member, scene):
    who, key = kexin_client.load_key(f"{DIR}/keys/{member}.key")
    return kf.connect(FLIGHT, space=space, node="h1", node_key=node_key, member=who, key=key,
                      scene=scene)


def ms(f):
    t0 = time.perf_counter()
    f()
    return (time.perf_counter() - t0) * 1000


conn = connect("alice", "diabetes-2027")
cur = conn.cursor()


def over_flight():
    cur.execute(SQL)
    cur.fetch_arrow_table()


def whole_process():
    subprocess.run([KEXIN, "query", "--local", "--space", DIR, "--scene", "diabetes-2027",
                    "--as", "alice", SQL], capture_output=True, check=True)


over_flight()  # warm
flight, local = [], []
for _ in range(PAIRS):
    flight.append(ms(over_flight))
    local.append(ms(whole_process))
f, l = statistics.median(flight), statistics.median(local)
print(f"small gated query, {PAIRS} interleaved pairs (median): over Flight to a warm node "
      f"{f:.1f} ms, whole in-process `kexin query --local` {l:.1f} ms, ratio {l / f:.1f}x")

researchers = [("alice", "diabetes-2027"), ("bob", "service-planning"),
               ("grace", "hk-outcomes"), ("erin", "diabetes-2027")]


def client(i):
    member, scene = researchers[i % 4]
    answered = 0
    with connect(member, scene) as c, c.cursor() as k:
        for _ in range(BURST // 32):
            try:
                k.execute(SQL)
                k.fetch_arrow_table()
            except Exception:  # a refusal is an answer too
                pass
            answered += 1
    return answered


t0 = time.perf_counter()
with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
    answered = sum(pool.map(client, range(32)))
dt = time.perf_counter() - t0
print(f"concurrent over Flight: {answered} queries answered by 32 clients at once (4 researchers) "
      f"in {dt * 1000:.0f} ms: {answered / dt:.1f} queries/s")

try:
    import datafusion
except ImportError:
    print("plain DataFusion baseline skipped: pip install datafusion")
else:
    ctx = datafusion.SessionContext()
    ctx.register_parquet("patients", f"{DIR}/h1/patients.parquet")
    plain_sql = SQL
    ctx.sql(plain_sql).collect()
    gated, plain = [], []
    for _ in range(PAIRS):
        gated.append(ms(over_flight))
        plain.append(ms(lambda: ctx.sql(plain_sql).collect()))
    g, p = statistics.median(gated), statistics.median(plain)
    print(f"gated over Flight vs plain DataFusion {datafusion.__version__} in process, {PAIRS} pairs "
          f"(median): {g:.1f} ms vs {p:.1f} ms, ratio {g / p:.1f}x")
conn.close()
