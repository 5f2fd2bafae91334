"""Debian's kcat 1.7.1 (librdkafka 2.0.2, the oldest and strictest client here) against keel.

usage: kcat_checks.py HOST:PORT

1. kcat -L (and -L -J) lists the one broker at HOST:PORT.
2. kcat -P -K : -H k=v writes keyed records with headers to an auto-created topic, in several
   runs (so timestamps differ between runs); kcat -L then lists the topic.
3. kcat -C -e -o beginning reads them back exactly (key, value, headers, offset, via -f);
   -o <offset> starts exactly there (also in the middle of a batch); -o -N reads the last N.
4. kcat -Q -t topic:0:<ts> answers, for each record's timestamp, the first offset whose
   timestamp is >= ts; a timestamp past the end answers -1 (Kafka's "no such offset").
"""

import json
import re
import time

from interop_common import bootstrap_from_argv, check, check_eq, fail, kcat_path, log, run, topic_name, wait_until

bootstrap = bootstrap_from_argv()
kcat = kcat_path()
base = [kcat, "-b", bootstrap, "-X", "socket.timeout.ms=10000", "-m", "15"]
topic = topic_name("kcat")

# --- 1. metadata -----------------------------------------------------------------------------
out = run(base + ["-L"]).stdout.decode()
log(out)
check(re.search(r"^ 1 brokers:$", out, re.M), f"kcat -L: expected ' 1 brokers:' in:\n{out}")
m = re.search(r"^  broker (-?\d+) at (\S+)", out, re.M)
check(m, f"kcat -L: no broker line in:\n{out}")
check_eq(m.group(2), bootstrap, "kcat -L: broker address")
broker_id = int(m.group(1))
meta = json.loads(run(base + ["-L", "-J"]).stdout)
check_eq([b["name"] for b in meta["brokers"]], [bootstrap], "kcat -L -J: brokers")
check_eq(meta["brokers"][0]["id"], broker_id, "kcat -L -J: broker id")

# --- 2. produce in runs ----------------------------------------------------------------------
RUNS = 4
PER_RUN = 6
sent = []  # (key, value, headers) in offset order
for r in range(RUNS):
    lines = []
    for j in range(PER_RUN):
        n = r * PER_RUN + j
        key, value = f"key{n % 4}", f"value number {n} of run {r}"
        lines.append(f"{key}:{value}\n")
        sent.append((key, value, f"run=r{r},tag=kcat-test"))
    run(base + ["-P", "-t", topic, "-p", "0", "-K", ":", "-H", f"run=r{r}", "-H", "tag=kcat-test"],
        input_bytes="".join(lines).encode())
    time.sleep(0.05)  # distinct timestamps per run
log(f"kcat -P wrote {len(sent)} records in {RUNS} runs to {topic}")

meta = wait_until(
    f"kcat -L -J -t {topic} to list it",
    lambda: next((t for t in json.loads(run(base + ["-L", "-J", "-t", topic]).stdout)["topics"]
                  if t["topic"] == topic and not t.get("error")), None),
)
check_eq([p["partition"] for p in meta["partitions"]], [0], f"kcat -L: partitions of auto-created {topic}")
check_eq(meta["partitions"][0]["leader"], broker_id, f"kcat -L: leader of {topic}[0]")

# --- 3. consume ------------------------------------------------------------------------------
FMT = "%o|%k|%s|%h|%T\\n"


def consume(offset_arg, expect_count):
    out = run(base + ["-C", "-t", topic, "-p", "0", "-o", offset_arg, "-e", "-f", FMT]).stdout.decode()
    rows = []
    for line in out.splitlines():
        parts = line.split("|")
        check_eq(len(parts), 5, f"kcat -C -o {offset_arg}: line {line!r}")
        rows.append((int(parts[0]), parts[1], parts[2], parts[3], int(parts[4])))
    check_eq(len(rows), expect_count, f"kcat -C -o {offset_arg}: number of records (output:\n{out})")
    return rows


rows = consume("beginning", len(sent))
for off, (got, want) in enumerate(zip(rows, sent)):
    check_eq(got[:4], (off,) + want, f"kcat -C -o beginning: record at offset {off}")
timestamps = [row[4] for row in rows]
check(all(t > 0 for t in timestamps), f"kcat: timestamps {timestamps}")
check(timestamps == sorted(timestamps), f"kcat: timestamps not in order: {timestamps}")
log(f"kcat -C -o beginning: {len(rows)} records match")

for start in (1, PER_RUN + 2, len(sent) - 1):
    part = consume(str(start), len(sent) - start)
    check_eq(part[0][0], start, f"kcat -C -o {start}: first offset")
    check_eq([r[:4] for r in part], [r[:4] for r in rows[start:]], f"kcat -C -o {start}: records")
part = consume("-3", 3)
check_eq([r[:4] for r in part], [r[:4] for r in rows[-3:]], "kcat -C -o -3: the last three records")
log("kcat -C -o <offset> and -o -3: match")

# --- 4. offsets by timestamp -----------------------------------------------------------------
def query(ts):
    out = run(base + ["-Q", "-t", f"{topic}:0:{ts}"]).stdout.decode()
    m = re.search(r"^\S+ \[0\] offset (-?\d+)$", out, re.M)
    check(m, f"kcat -Q -t {topic}:0:{ts}: unexpected output {out!r}")
    return int(m.group(1))


for ts in sorted(set(timestamps)) + [timestamps[0] - 1]:
    want = next(i for i, t in enumerate(timestamps) if t >= ts)
    check_eq(query(ts), want, f"kcat -Q {topic}:0:{ts}")
    if ts > timestamps[0]:
        # one ms earlier still answers the first record at or after it
        want_before = next(i for i, t in enumerate(timestamps) if t >= ts - 1)
        check_eq(query(ts - 1), want_before, f"kcat -Q {topic}:0:{ts - 1}")
check_eq(query(timestamps[-1] + 1), -1, f"kcat -Q {topic}:0:{timestamps[-1] + 1} (past the last record)")
check_eq(query(-1), len(sent), f"kcat -Q {topic}:0:-1 (latest)")
check_eq(query(-2), 0, f"kcat -Q {topic}:0:-2 (earliest)")
log(f"kcat -Q: offsets for {len(set(timestamps))} timestamps, past-the-end, latest and earliest match")
log("OK kcat_checks")
