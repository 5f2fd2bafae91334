"""What the client matrix's Python scripts share (node/tests/client_matrix.rs runs one script per
client against one `keel dev` cluster): the records each scenario writes, and the line that tells
the harness a capability was checked.

Every script checks contents, not exit codes: records read back equal those written (partition,
offset order, key, value), the group's committed offsets equal what it consumed, and a
read_committed consumer sees the committed transactions' records and none of the aborted one's.
"""

from interop_common import check_eq, log

PARTITIONS = 3
REPLICATION = 3
RECORDS = 30


def records(prefix, n=RECORDS):
    """n (partition, key, value) triples spread round-robin over the partitions."""
    return [(i % PARTITIONS, f"{prefix}-k{i}", f"{prefix}-v{i}") for i in range(n)]


def by_partition(triples):
    """{partition: [(key, value)] in write order} for (partition, key, value) triples."""
    out = {p: [] for p in range(PARTITIONS)}
    for p, k, v in triples:
        out[p].append((k, v))
    return out


def check_read_back(got, written, what):
    """`got` ({partition: [(key, value)]} in offset order) equals what `written` put there."""
    check_eq(got, by_partition(written), what)


def checked(capability, detail):
    """Tells the harness that `capability` (admin, produce, consume, group, transactions) was
    checked; client_matrix.rs requires one line per capability the client has."""
    log(f"CHECKED {capability}: {detail}")


def txn_plan(prefix):
    """The transactions scenario: commit, abort, commit; returns (batches, committed) where
    batches is [(commit?, triples)] and committed the triples read_committed must see."""
    first = records(f"{prefix}-c1", 6)
    aborted = records(f"{prefix}-ab", 6)
    second = records(f"{prefix}-c2", 6)
    return [(True, first), (False, aborted), (True, second)], first + second
