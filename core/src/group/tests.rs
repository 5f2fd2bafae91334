//! Tests of the group coordinator. Each unit test names the Kafka behaviour it pins (Kafka's
//! `GroupCoordinator.scala`, `GroupMetadata.scala`, `GroupMetadataManager.scala`, the KIPs).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;

fn config_no_delay() -> GroupConfig {
    GroupConfig {
        initial_rebalance_delay_ms: 0,
        ..GroupConfig::default()
    }
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition {
        topic: topic.to_string(),
        partition,
    }
}

fn protocols(names: &[&str]) -> Vec<Protocol> {
    names
        .iter()
        .map(|n| Protocol {
            name: n.to_string(),
            metadata: format!("sub-{n}").into_bytes(),
        })
        .collect()
}

/// The coordinator with a shell around it: virtual time, request ids, and every record and
/// late answer collected. With `auto_durable` every record is acknowledged at once.
struct Harness {
    c: GroupCoordinator,
    now: i64,
    next_request: u64,
    records: Vec<(u64, GroupRecord)>,
    /// The partition's log as the shell would write it: records, transactional records and
    /// markers, in order.
    log: Vec<LogEntry>,
    answers: BTreeMap<RequestId, Response>,
    auto_durable: bool,
}

impl Harness {
    fn new(config: GroupConfig) -> Harness {
        Harness {
            c: GroupCoordinator::new(config, "c1-", 0),
            now: 0,
            next_request: 0,
            records: Vec::new(),
            log: Vec::new(),
            answers: BTreeMap::new(),
            auto_durable: true,
        }
    }

    fn request_id(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// Drains records then answers, as the module doc says; acknowledges if `auto_durable`.
    fn drain(&mut self) {
        let records = self.c.poll_records();
        let mut last = None;
        for OutRecord { seq, record, txn } in records {
            if let Some((prev, _)) = self.records.last() {
                assert_eq!(seq, prev + 1, "records are numbered densely");
            }
            last = Some(seq);
            self.log.push(match txn {
                None => LogEntry::Record(record.clone()),
                Some(p) => LogEntry::Txn {
                    producer_id: p.producer_id,
                    record: record.clone(),
                },
            });
            self.records.push((seq, record));
        }
        if let (true, Some(seq)) = (self.auto_durable, last) {
            self.c.records_committed(seq);
        }
        for (id, r) in self.c.poll_responses() {
            assert!(
                self.answers.insert(id, r).is_none(),
                "one answer per request"
            );
        }
        self.c.check_invariants();
    }

    fn durable(&mut self) {
        let last = self.c.last_record_seq();
        self.c.records_committed(last);
        self.drain();
    }

    fn advance(&mut self, ms: i64) {
        self.now += ms;
        self.c.poll(self.now);
        self.drain();
    }

    fn join_req(&self, member_id: &str, client: &str, protos: &[&str]) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            group_instance_id: None,
            client_id: client.into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
            protocol_type: "consumer".into(),
            protocols: protocols(protos),
            require_known_member_id: true,
        }
    }

    /// Sends a JoinGroup; returns its request id and an immediate answer if any.
    fn join(&mut self, req: JoinRequest) -> (RequestId, Option<JoinResponse>) {
        let id = self.request_id();
        let reply = self.c.handle_join(self.now, id, req);
        self.drain();
        (id, reply.now())
    }

    /// A dynamic member's two-step join (KIP-394); returns its id and the join request id.
    fn new_member(&mut self, client: &str) -> (String, RequestId) {
        let (_, first) = self.join(self.join_req("", client, &["range"]));
        let first = first.expect("first join is answered at once");
        assert_eq!(first.error_code, code::MEMBER_ID_REQUIRED);
        let member_id = first.member_id;
        let (id, now) = self.join(self.join_req(&member_id, client, &["range"]));
        assert_eq!(
            now, None,
            "a join with the given id waits for the rebalance"
        );
        (member_id, id)
    }

    fn join_answer(&mut self, id: RequestId) -> Option<JoinResponse> {
        match self.answers.remove(&id) {
            Some(Response::Join(j)) => Some(j),
            None => None,
            Some(other) => panic!("expected a join answer, got {other:?}"),
        }
    }

    fn sync_answer(&mut self, id: RequestId) -> Option<SyncResponse> {
        match self.answers.remove(&id) {
            Some(Response::Sync(s)) => Some(s),
            None => None,
            Some(other) => panic!("expected a sync answer, got {other:?}"),
        }
    }

    fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
    ) -> (RequestId, Option<SyncResponse>) {
        let id = self.request_id();
        let req = SyncRequest {
            group_id: "g".into(),
            generation_id: generation,
            member_id: member_id.into(),
            group_instance_id: None,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignments,
        };
        let reply = self.c.handle_sync(self.now, id, req);
        self.drain();
        (id, reply.now())
    }

    fn heartbeat(&mut self, member_id: &str, generation: i32) -> i16 {
        let code = self.c.handle_heartbeat(
            self.now,
            &HeartbeatRequest {
                group_id: "g".into(),
                generation_id: generation,
                member_id: member_id.into(),
                group_instance_id: None,
            },
        );
        self.drain();
        code
    }

    fn commit(
        &mut self,
        member_id: &str,
        generation: i32,
        offsets: &[(TopicPartition, i64)],
    ) -> (RequestId, Option<OffsetCommitResponse>) {
        let id = self.request_id();
        let req = OffsetCommitRequest {
            group_id: "g".into(),
            generation_id: generation,
            member_id: member_id.into(),
            group_instance_id: None,
            partitions: offsets
                .iter()
                .map(|(tp, o)| PartitionCommit {
                    partition: tp.clone(),
                    offset: *o,
                    leader_epoch: 3,
                    metadata: Some("m".into()),
                })
                .collect(),
        };
        let reply = self.c.handle_offset_commit(self.now, id, req);
        self.drain();
        (id, reply.now())
    }

    /// A TxnOffsetCommit of producer `pid` (epoch 0) for group `g`.
    fn txn_commit(
        &mut self,
        pid: i64,
        member_id: &str,
        generation: i32,
        offsets: &[(TopicPartition, i64)],
    ) -> (RequestId, Option<OffsetCommitResponse>) {
        let id = self.request_id();
        let req = TxnOffsetCommitRequest {
            group_id: "g".into(),
            producer: TxnProducer {
                producer_id: ProducerId(pid),
                producer_epoch: 0,
            },
            generation_id: generation,
            member_id: member_id.into(),
            group_instance_id: None,
            partitions: offsets
                .iter()
                .map(|(tp, o)| PartitionCommit {
                    partition: tp.clone(),
                    offset: *o,
                    leader_epoch: 3,
                    metadata: None,
                })
                .collect(),
        };
        let reply = self.c.handle_txn_offset_commit(self.now, id, req);
        self.drain();
        (id, reply.now())
    }

    /// The marker of producer `pid` lands on the partition and is durable.
    fn marker(&mut self, pid: i64, commit: bool) {
        self.log.push(LogEntry::Marker {
            producer_id: ProducerId(pid),
            commit,
        });
        self.c.complete_txn(ProducerId(pid), commit);
        self.drain();
    }

    /// The offset OffsetFetch with `require_stable` gives, or its error.
    fn fetched_stable(&self, tp: &TopicPartition) -> Result<i64, ErrorCode> {
        let f = &self
            .c
            .handle_offset_fetch("g", Some(std::slice::from_ref(tp)), true)[0];
        match f.error_code {
            code::NONE => Ok(f.offset),
            e => Err(e),
        }
    }

    fn fetched(&self, tp: &TopicPartition) -> i64 {
        self.c
            .handle_offset_fetch("g", Some(std::slice::from_ref(tp)), false)[0]
            .offset
    }

    fn group(&self) -> &Group {
        self.c.group("g").expect("group g exists")
    }

    /// Joins one member and completes generation 1 with it as leader; Stable.
    fn stable_one(&mut self) -> String {
        let (m1, j1) = self.new_member("c");
        let a = self
            .join_answer(j1)
            .expect("a lone member's join completes at once");
        assert_eq!(a.generation_id, 1);
        let (s1, _) = self.sync(&m1, 1, vec![(m1.clone(), b"a1".to_vec())]);
        assert_eq!(self.sync_answer(s1).unwrap().assignment, b"a1");
        m1
    }

    /// Two members in generation 2, Stable, `m1` leading.
    fn stable_two(&mut self) -> (String, String) {
        let m1 = self.stable_one();
        let (m2, j2) = self.new_member("c");
        assert_eq!(self.group().state(), GroupState::PreparingRebalance);
        let (j1, _) = self.join(self.join_req(&m1, "c", &["range"]));
        let a1 = self.join_answer(j1).unwrap();
        let a2 = self.join_answer(j2).unwrap();
        assert_eq!((a1.generation_id, a2.generation_id), (2, 2));
        let (s2, _) = self.sync(&m2, 2, vec![]);
        let (s1, _) = self.sync(
            &m1,
            2,
            vec![(m1.clone(), b"a1".to_vec()), (m2.clone(), b"a2".to_vec())],
        );
        assert_eq!(self.sync_answer(s1).unwrap().assignment, b"a1");
        assert_eq!(self.sync_answer(s2).unwrap().assignment, b"a2");
        assert_eq!(self.group().state(), GroupState::Stable);
        (m1, m2)
    }

    fn replayed(&self) -> GroupCoordinator {
        GroupCoordinator::load(self.c.config.clone(), "c2-", self.now, self.log.clone())
            .expect("the coordinator's own records load")
    }
}

/// KIP-394 (JoinGroup v4+): a first join without member id is answered MEMBER_ID_REQUIRED with
/// a generated id; the join with that id makes the member the first joiner, hence the leader,
/// and its answer (generation 1, the selected protocol) carries every member's metadata.
#[test]
fn first_join_requires_member_id_then_leads_generation_one() {
    let mut h = Harness::new(config_no_delay());
    let (_, first) = h.join(h.join_req("", "client", &["range"]));
    let first = first.unwrap();
    assert_eq!(first.error_code, code::MEMBER_ID_REQUIRED);
    assert_eq!(first.member_id, "client-c1-1");
    assert_eq!(h.group().state(), GroupState::Empty);
    let (j, now) = h.join(h.join_req(&first.member_id, "client", &["range"]));
    assert_eq!(now, None);
    let answer = h.join_answer(j).unwrap();
    assert_eq!(answer.error_code, code::NONE);
    assert_eq!(answer.generation_id, 1);
    assert_eq!(answer.leader, first.member_id);
    assert_eq!(answer.protocol_name.as_deref(), Some("range"));
    assert_eq!(answer.protocol_type.as_deref(), Some("consumer"));
    assert_eq!(answer.members.len(), 1);
    assert_eq!(answer.members[0].metadata, b"sub-range");
    assert_eq!(h.group().state(), GroupState::CompletingRebalance);
}

/// `doCurrentMemberJoinGroup`: a join with a member id the group does not know (and did not hand
/// out) is UNKNOWN_MEMBER_ID; on a group that does not exist too. JoinGroup before v4 (no
/// require_known_member_id) joins at once with a generated id.
#[test]
fn join_with_unknown_member_id_is_refused_and_old_versions_join_directly() {
    let mut h = Harness::new(config_no_delay());
    let (_, a) = h.join(h.join_req("nobody", "c", &["range"]));
    assert_eq!(a.unwrap().error_code, code::UNKNOWN_MEMBER_ID);
    assert!(h.c.group("g").is_none(), "no group is created for it");
    h.stable_one();
    let (_, a) = h.join(h.join_req("nobody", "c", &["range"]));
    assert_eq!(a.unwrap().error_code, code::UNKNOWN_MEMBER_ID);
    let mut old = h.join_req("", "old", &["range"]);
    old.require_known_member_id = false;
    let (j, now) = h.join(old);
    assert_eq!(now, None, "joined without the extra round trip");
    assert_eq!(h.group().members().count(), 2);
    assert_eq!(h.group().state(), GroupState::PreparingRebalance);
    assert_eq!(h.join_answer(j), None, "waits for the leader to rejoin");
}

/// `GroupCoordinator.handleJoinGroup` validation: an empty group id is INVALID_GROUP_ID, a
/// session timeout outside group.min/max.session.timeout.ms is INVALID_SESSION_TIMEOUT, an
/// empty protocol list or a protocol type or protocols the members do not share is
/// INCONSISTENT_GROUP_PROTOCOL (`supportsProtocols`).
#[test]
fn join_validation_errors() {
    let mut h = Harness::new(config_no_delay());
    let mut r = h.join_req("", "c", &["range"]);
    r.group_id.clear();
    assert_eq!(h.join(r).1.unwrap().error_code, code::INVALID_GROUP_ID);
    let mut r = h.join_req("", "c", &["range"]);
    r.session_timeout_ms = SESSION_TIMEOUT_MIN_MS_DEFAULT - 1;
    assert_eq!(
        h.join(r).1.unwrap().error_code,
        code::INVALID_SESSION_TIMEOUT
    );
    let mut r = h.join_req("", "c", &["range"]);
    r.session_timeout_ms = SESSION_TIMEOUT_MAX_MS_DEFAULT + 1;
    assert_eq!(
        h.join(r).1.unwrap().error_code,
        code::INVALID_SESSION_TIMEOUT
    );
    let r = h.join_req("", "c", &[]);
    assert_eq!(
        h.join(r).1.unwrap().error_code,
        code::INCONSISTENT_GROUP_PROTOCOL
    );
    h.stable_one();
    let r = h.join_req("", "c", &["roundrobin"]);
    assert_eq!(
        h.join(r).1.unwrap().error_code,
        code::INCONSISTENT_GROUP_PROTOCOL
    );
    let mut r = h.join_req("", "c", &["range"]);
    r.protocol_type = "connect".into();
    assert_eq!(
        h.join(r).1.unwrap().error_code,
        code::INCONSISTENT_GROUP_PROTOCOL
    );
}

/// `GroupMetadata.selectProtocol`: only protocols every member supports are candidates; each
/// member votes for its first candidate, and the most votes win (ties: the leader's order).
#[test]
fn protocol_selection_by_votes_among_common_protocols() {
    let mut h = Harness::new(config_no_delay());
    let mut r = h.join_req("", "a", &["cooperative", "range", "roundrobin"]);
    r.require_known_member_id = false;
    let (ja, _) = h.join(r);
    let a = h.join_answer(ja).unwrap();
    assert_eq!(a.protocol_name.as_deref(), Some("cooperative"));
    // Two more members who prefer roundrobin and do not know cooperative.
    let mut joins = Vec::new();
    for client in ["b", "c"] {
        let mut r = h.join_req("", client, &["roundrobin", "range"]);
        r.require_known_member_id = false;
        joins.push(h.join(r).0);
    }
    let (ja, _) = h.join(h.join_req(&a.member_id, "a", &["cooperative", "range", "roundrobin"]));
    let a2 = h.join_answer(ja).unwrap();
    assert_eq!(a2.generation_id, 2);
    assert_eq!(
        a2.protocol_name.as_deref(),
        Some("roundrobin"),
        "2 votes to 1"
    );
    assert_eq!(a2.members.len(), 3, "the leader sees every member");
    assert!(a2.members.iter().all(|m| m.metadata == b"sub-roundrobin"));
    for j in joins {
        let f = h.join_answer(j).unwrap();
        assert!(f.members.is_empty(), "followers get no member list");
        assert_eq!(f.leader, a.member_id, "the first joiner stays leader");
    }
}

/// `DelayedJoin`: a rebalance completes as soon as every known member has rejoined; meanwhile
/// heartbeats answer REBALANCE_IN_PROGRESS (`handleHeartbeat` in PreparingRebalance).
#[test]
fn rebalance_completes_when_all_members_rejoined() {
    let mut h = Harness::new(config_no_delay());
    let m1 = h.stable_one();
    let (m2, j2) = h.new_member("c");
    assert_eq!(h.heartbeat(&m1, 1), code::REBALANCE_IN_PROGRESS);
    assert_eq!(h.join_answer(j2), None);
    let (j1, _) = h.join(h.join_req(&m1, "c", &["range"]));
    let (a1, a2) = (h.join_answer(j1).unwrap(), h.join_answer(j2).unwrap());
    assert_eq!((a1.generation_id, a2.generation_id), (2, 2));
    assert_eq!(a1.leader, m1);
    assert_eq!(a2.leader, m1);
    assert_eq!(a1.members.len(), 2);
    assert_eq!(a2.member_id, m2);
}

/// `DelayedJoin.onExpiration` / `onCompleteJoin`: at the rebalance timeout members that did
/// not rejoin are removed and the rest form the next generation; a leader that did not
/// rejoin loses the leadership.
#[test]
fn rebalance_timeout_removes_members_that_did_not_rejoin() {
    let mut h = Harness::new(config_no_delay());
    let (m1, m2) = h.stable_two();
    let (j2, _) = h.join(h.join_req(&m2, "c", &["roundrobin", "range"]));
    assert_eq!(h.group().state(), GroupState::PreparingRebalance);
    // m1 heartbeats (REBALANCE_IN_PROGRESS) so that its session holds, but never rejoins.
    for _ in 0..(REBALANCE_MS / 5_000) {
        assert_eq!(h.join_answer(j2), None, "not before the rebalance timeout");
        assert_eq!(h.heartbeat(&m1, 2), code::REBALANCE_IN_PROGRESS);
        h.advance(5_000);
    }
    let a2 = h.join_answer(j2).unwrap();
    assert_eq!(a2.generation_id, 3);
    assert_eq!(a2.leader, m2, "the leader left; the remaining member leads");
    assert!(h.group().member(&m1).is_none());
    assert_eq!(h.heartbeat(&m1, 3), code::UNKNOWN_MEMBER_ID);
}

/// `doSyncGroup`: followers wait for the leader's SyncGroup; the leader's assignment goes to
/// every member (members it leaves out get an empty one), and only after the group's record is
/// durable (the `storeGroup` callback). Generation and member checks: ILLEGAL_GENERATION,
/// UNKNOWN_MEMBER_ID, and REBALANCE_IN_PROGRESS while PreparingRebalance.
#[test]
fn sync_distributes_the_leaders_assignment_after_it_is_durable() {
    let mut h = Harness::new(config_no_delay());
    let m1 = h.stable_one();
    let (m2, j2) = h.new_member("c");
    let (_, s) = h.sync(&m2, 1, vec![]);
    assert_eq!(s.unwrap().error_code, code::REBALANCE_IN_PROGRESS);
    let (j1, _) = h.join(h.join_req(&m1, "c", &["range"]));
    h.join_answer(j1).unwrap();
    h.join_answer(j2).unwrap();
    assert_eq!(
        h.sync(&m2, 1, vec![]).1.unwrap().error_code,
        code::ILLEGAL_GENERATION
    );
    assert_eq!(
        h.sync("x", 2, vec![]).1.unwrap().error_code,
        code::UNKNOWN_MEMBER_ID
    );
    let (s2, now) = h.sync(&m2, 2, vec![]);
    assert_eq!(now, None, "a follower waits for the leader");
    assert_eq!(
        h.heartbeat(&m2, 2),
        code::NONE,
        "CompletingRebalance heartbeats are fine"
    );
    h.auto_durable = false;
    let (s1, now) = h.sync(&m1, 2, vec![(m1.clone(), b"x".to_vec())]);
    assert_eq!(now, None);
    assert_eq!(h.group().state(), GroupState::Stable);
    assert!(
        h.answers.is_empty(),
        "nothing is answered before the record is durable"
    );
    let (s2b, now) = h.sync(&m2, 2, vec![]);
    assert_eq!(
        now, None,
        "a late follower in Stable waits for durability too"
    );
    h.durable();
    assert_eq!(h.sync_answer(s1).unwrap().assignment, b"x");
    for s in [s2, s2b] {
        let a2 = h.sync_answer(s).unwrap();
        assert_eq!(
            (a2.error_code, a2.assignment),
            (code::NONE, Vec::new()),
            "left out: empty"
        );
    }
    let (_, now) = h.sync(&m2, 2, vec![]);
    assert_eq!(now.unwrap().protocol_name.as_deref(), Some("range"));
}

/// `handleHeartbeat`: NONE for a member of the current generation in Stable, ILLEGAL_GENERATION
/// for another generation, UNKNOWN_MEMBER_ID for a non-member or an unknown group,
/// INVALID_GROUP_ID for an empty group id.
#[test]
fn heartbeat_checks() {
    let mut h = Harness::new(config_no_delay());
    let m1 = h.stable_one();
    assert_eq!(h.heartbeat(&m1, 1), code::NONE);
    assert_eq!(h.heartbeat(&m1, 0), code::ILLEGAL_GENERATION);
    assert_eq!(h.heartbeat("x", 1), code::UNKNOWN_MEMBER_ID);
    let other = HeartbeatRequest {
        group_id: "other".into(),
        generation_id: 1,
        member_id: m1.clone(),
        group_instance_id: None,
    };
    assert_eq!(h.c.handle_heartbeat(0, &other), code::UNKNOWN_MEMBER_ID);
    let empty = HeartbeatRequest {
        group_id: String::new(),
        ..other
    };
    assert_eq!(h.c.handle_heartbeat(0, &empty), code::INVALID_GROUP_ID);
}

/// `onExpireHeartbeat`: a member silent for session.timeout.ms is removed and the group
/// rebalances; heartbeats keep it; `next_deadline_ms` reports the session deadline.
#[test]
fn session_timeout_removes_member_and_rebalances() {
    let mut h = Harness::new(config_no_delay());
    let (m1, m2) = h.stable_two();
    assert_eq!(h.c.next_deadline_ms(), h.now + i64::from(SESSION_MS));
    h.advance(i64::from(SESSION_MS) / 2);
    assert_eq!(h.heartbeat(&m1, 2), code::NONE);
    h.advance(i64::from(SESSION_MS) / 2);
    assert!(
        h.group().member(&m2).is_none(),
        "m2 was silent for a session"
    );
    assert!(h.group().member(&m1).is_some());
    assert_eq!(h.group().state(), GroupState::PreparingRebalance);
    let (j1, _) = h.join(h.join_req(&m1, "c", &["range"]));
    assert_eq!(h.join_answer(j1).unwrap().generation_id, 3);
}

/// KIP-394: an id handed out with MEMBER_ID_REQUIRED holds up the rebalance until it joins or
/// its session passes (`hasAllMembersJoined` counts pending members).
#[test]
fn pending_member_id_expires_after_session_timeout() {
    let mut h = Harness::new(config_no_delay());
    let m1 = h.stable_one();
    let (_, a) = h.join(h.join_req("", "late", &["range"]));
    assert_eq!(a.unwrap().error_code, code::MEMBER_ID_REQUIRED);
    let mut r = h.join_req("", "old", &["range"]);
    r.require_known_member_id = false;
    let (j3, _) = h.join(r);
    let (j1, _) = h.join(h.join_req(&m1, "c", &["range"]));
    assert_eq!(
        h.join_answer(j1),
        None,
        "the pending member id holds the rebalance"
    );
    h.advance(i64::from(SESSION_MS));
    assert_eq!(h.join_answer(j1).unwrap().generation_id, 2);
    assert_eq!(h.join_answer(j3).unwrap().generation_id, 2);
}

/// `handleLeaveGroup` (v3+ batches): a static member is named by group.instance.id
/// (FENCED_INSTANCE_ID if the member id does not match), an unknown member is UNKNOWN_MEMBER_ID
/// without failing the others; a leave triggers a rebalance, and the last leave empties the
/// group (generation bump, group record written).
#[test]
fn leave_group_batch() {
    let mut h = Harness::new(config_no_delay());
    let mut r = h.join_req("", "c", &["range"]);
    r.group_instance_id = Some("i1".into());
    let (j, _) = h.join(r);
    let a = h.join_answer(j).unwrap();
    assert!(
        a.member_id.starts_with("i1-"),
        "a static member's id starts with its instance id"
    );
    let sid = a.member_id;
    h.sync(&sid, 1, vec![]);
    let leaving = |member_id: &str, instance: Option<&str>| LeavingMember {
        member_id: member_id.into(),
        group_instance_id: instance.map(str::to_string),
    };
    let resp = h.c.handle_leave(
        h.now,
        "g",
        vec![leaving("wrong", Some("i1")), leaving("nobody", None)],
    );
    assert_eq!(resp.error_code, code::NONE);
    let codes: Vec<i16> = resp.members.iter().map(|(_, c)| *c).collect();
    assert_eq!(
        codes,
        vec![code::FENCED_INSTANCE_ID, code::UNKNOWN_MEMBER_ID]
    );
    let before = h.records.len();
    let resp = h.c.handle_leave(h.now, "g", vec![leaving("", Some("i1"))]);
    h.drain();
    assert_eq!(resp.members[0].1, code::NONE);
    assert_eq!(h.group().state(), GroupState::Empty);
    assert_eq!(h.group().generation(), 2);
    let written = &h.records[before..];
    assert!(matches!(
        written,
        [(_, GroupRecord { value: Some(RecordValue::Group(g)), .. })] if g.members.is_empty() && g.generation == 2
    ));
    let unknown = h.c.handle_leave(h.now, "nope", vec![leaving("x", None)]);
    assert_eq!(unknown.members[0].1, code::UNKNOWN_MEMBER_ID);
}

/// KIP-345 `updateStaticMemberAndRebalance`: a static member that rejoins without member id
/// replaces its old member id; in Stable with unchanged protocols there is no rebalance (the
/// generation stays, the new id is persisted first, and the answer shows the leader as it was);
/// the old id is fenced (FENCED_INSTANCE_ID).
#[test]
fn static_member_rejoin_replaces_old_id_without_rebalance() {
    let mut h = Harness::new(config_no_delay());
    let mut r = h.join_req("", "c", &["range"]);
    r.group_instance_id = Some("i1".into());
    let (j, _) = h.join(r.clone());
    let old = h.join_answer(j).unwrap().member_id;
    h.sync(&old, 1, vec![(old.clone(), b"p0".to_vec())]);
    h.auto_durable = false;
    let (j, now) = h.join(r);
    assert_eq!(now, None);
    assert_eq!(
        h.join_answer(j),
        None,
        "answered after the new id is durable"
    );
    h.durable();
    let a = h.join_answer(j).unwrap();
    assert_ne!(a.member_id, old);
    assert_eq!(a.generation_id, 1, "no rebalance");
    assert_eq!(
        a.leader, old,
        "the leader as it was, so the member does not reassign"
    );
    assert_eq!(h.group().state(), GroupState::Stable);
    assert_eq!(h.group().leader(), Some(a.member_id.as_str()));
    assert_eq!(
        h.group().member(&a.member_id).unwrap().assignment(),
        Some(&b"p0"[..])
    );
    let fenced = HeartbeatRequest {
        group_id: "g".into(),
        generation_id: 1,
        member_id: old,
        group_instance_id: Some("i1".into()),
    };
    assert_eq!(
        h.c.handle_heartbeat(h.now, &fenced),
        code::FENCED_INSTANCE_ID
    );
}

/// `InitialDelayedJoin` (group.initial.rebalance.delay.ms): the first rebalance of an Empty
/// group waits the delay, again while new members keep arriving, never longer than the
/// rebalance timeout, and does not complete early even when every member joined.
#[test]
fn initial_rebalance_delay_waits_for_more_members() {
    let mut h = Harness::new(GroupConfig::default());
    let (m1, j1) = h.new_member("c");
    assert_eq!(h.group().state(), GroupState::PreparingRebalance);
    assert_eq!(h.c.next_deadline_ms(), INITIAL_REBALANCE_DELAY_MS_DEFAULT);
    h.advance(2_000);
    let (_m2, j2) = h.new_member("c");
    h.advance(1_000);
    assert_eq!(
        h.join_answer(j1),
        None,
        "a member arrived: wait another delay"
    );
    h.advance(2_999);
    assert_eq!(h.join_answer(j1), None);
    h.advance(1);
    let a1 = h.join_answer(j1).unwrap();
    assert_eq!(a1.generation_id, 1);
    assert_eq!(a1.leader, m1);
    assert_eq!(a1.members.len(), 2);
    assert!(h.join_answer(j2).is_some());
}

/// `handleCommitOffsets` for a group outside group management: generation -1 on an unknown
/// group creates it and commits; generation >= 0 on an unknown group is GROUP_ID_NOT_FOUND
/// (which node answers as ILLEGAL_GENERATION below OffsetCommit v9, as Kafka does).
/// The answer and the offset's visibility to OffsetFetch wait for the record to be durable
/// (`pendingOffsetCommits`). Metadata over offset.metadata.max.bytes is OFFSET_METADATA_TOO_LARGE
/// for that partition only.
#[test]
fn simple_commit_is_acknowledged_and_visible_only_when_durable() {
    let mut h = Harness::new(config_no_delay());
    let (_, a) = h.commit("", 0, &[(tp("t", 0), 5)]);
    assert_eq!(a.unwrap().partitions[0].1, code::GROUP_ID_NOT_FOUND);
    assert!(h.c.group("g").is_none());
    h.auto_durable = false;
    let (id, now) = h.commit("", -1, &[(tp("t", 0), 5), (tp("t", 1), 7)]);
    assert_eq!(now, None);
    assert_eq!(
        h.fetched(&tp("t", 0)),
        -1,
        "not visible before it is durable"
    );
    assert!(h.answers.is_empty());
    h.c.records_committed(1);
    h.drain();
    assert_eq!(h.fetched(&tp("t", 0)), 5);
    assert_eq!(
        h.fetched(&tp("t", 1)),
        -1,
        "its own record is not durable yet"
    );
    assert!(
        h.answers.is_empty(),
        "answered once all its records are durable"
    );
    h.durable();
    let Some(Response::OffsetCommit(r)) = h.answers.remove(&id) else {
        panic!("commit answered")
    };
    assert!(r.partitions.iter().all(|(_, c)| *c == code::NONE));
    let f = &h.c.handle_offset_fetch("g", Some(&[tp("t", 1)]), false)[0];
    assert_eq!((f.offset, f.leader_epoch, f.metadata.as_str()), (7, 3, "m"));

    let req = OffsetCommitRequest {
        group_id: "g".into(),
        generation_id: -1,
        member_id: String::new(),
        group_instance_id: None,
        partitions: vec![
            PartitionCommit {
                partition: tp("t", 0),
                offset: 9,
                leader_epoch: -1,
                metadata: Some("x".repeat(OFFSET_METADATA_BYTES_MAX_DEFAULT + 1)),
            },
            PartitionCommit {
                partition: tp("t", 1),
                offset: 9,
                leader_epoch: -1,
                metadata: None,
            },
        ],
    };
    let id = h.request_id();
    assert_eq!(h.c.handle_offset_commit(h.now, id, req), Reply::Pending);
    h.durable();
    let Some(Response::OffsetCommit(r)) = h.answers.remove(&id) else {
        panic!("commit answered")
    };
    let codes: Vec<i16> = r.partitions.iter().map(|(_, c)| *c).collect();
    assert_eq!(codes, vec![code::OFFSET_METADATA_TOO_LARGE, code::NONE]);
    assert_eq!(
        h.fetched(&tp("t", 0)),
        5,
        "the oversized one is not committed"
    );
    assert_eq!(h.fetched(&tp("t", 1)), 9);
}

/// `validateOffsetCommit`: a non-empty group takes commits only from its members
/// (UNKNOWN_MEMBER_ID), with the current generation (ILLEGAL_GENERATION), not while
/// CompletingRebalance (REBALANCE_IN_PROGRESS); during PreparingRebalance a member of the
/// current generation may still commit.
#[test]
fn member_commit_checks() {
    let mut h = Harness::new(config_no_delay());
    let m1 = h.stable_one();
    let one = [(tp("t", 0), 1)];
    assert_eq!(
        h.commit("", -1, &one).1.unwrap().partitions[0].1,
        code::UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        h.commit("x", 1, &one).1.unwrap().partitions[0].1,
        code::UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        h.commit(&m1, 7, &one).1.unwrap().partitions[0].1,
        code::ILLEGAL_GENERATION
    );
    let (id, now) = h.commit(&m1, 1, &one);
    assert_eq!(now, None);
    assert!(
        h.answers.contains_key(&id),
        "durable at once in this harness"
    );
    let (_m2, _j2) = h.new_member("c");
    assert_eq!(h.group().state(), GroupState::PreparingRebalance);
    let (id, _) = h.commit(&m1, 1, &[(tp("t", 0), 2)]);
    assert!(h.answers.contains_key(&id));
    assert_eq!(h.fetched(&tp("t", 0)), 2);
    let (j1, _) = h.join(h.join_req(&m1, "c", &["range"]));
    h.join_answer(j1).unwrap();
    assert_eq!(h.group().state(), GroupState::CompletingRebalance);
    let r = h.commit(&m1, 2, &one).1.unwrap();
    assert_eq!(r.partitions[0].1, code::REBALANCE_IN_PROGRESS);
}

/// `handleFetchOffsets`: all partitions with an offset when none are named; -1 (and empty
/// metadata) for a named partition without one or an unknown group.
#[test]
fn offset_fetch_all_or_some() {
    let mut h = Harness::new(config_no_delay());
    h.commit("", -1, &[(tp("a", 0), 1), (tp("b", 2), 3)]);
    let all = h.c.handle_offset_fetch("g", None, false);
    let got: Vec<(String, i64)> = all
        .iter()
        .map(|f| (f.partition.topic.clone(), f.offset))
        .collect();
    assert_eq!(got, vec![("a".to_string(), 1), ("b".to_string(), 3)]);
    let some =
        h.c.handle_offset_fetch("g", Some(&[tp("b", 2), tp("c", 0)]), false);
    assert_eq!((some[0].offset, some[1].offset), (3, -1));
    assert_eq!((some[1].leader_epoch, some[1].metadata.as_str()), (-1, ""));
    assert!(h.c.handle_offset_fetch("none", None, false).is_empty());
    assert_eq!(
        h.c.handle_offset_fetch("none", Some(&[tp("a", 0)]), false)[0].offset,
        -1
    );
}

/// `GroupMetadata.summary` and `handleListGroups`: DescribeGroups shows protocol, metadata and
/// assignments only when Stable and an unknown group as Dead; ListGroups filters by state.
#[test]
fn describe_and_list_groups() {
    let mut h = Harness::new(config_no_delay());
    let m1 = h.stable_one();
    let mut r = h.join_req("", "c", &["range"]);
    r.group_id = "g2".into();
    r.require_known_member_id = false;
    h.join(r);
    let d =
        h.c.describe_groups(&["g".into(), "g2".into(), "nope".into()]);
    assert_eq!(
        (d[0].state.as_str(), d[0].protocol_name.as_str()),
        ("Stable", "range")
    );
    assert_eq!(d[0].members[0].member_id, m1);
    assert_eq!(d[0].members[0].assignment, b"a1");
    assert_eq!(d[0].members[0].metadata, b"sub-range");
    assert_eq!(
        d[1].state, "CompletingRebalance",
        "a lone member's rebalance completed"
    );
    assert!(
        d[1].members[0].metadata.is_empty(),
        "no metadata unless Stable"
    );
    assert_eq!((d[2].state.as_str(), d[2].error_code), ("Dead", code::NONE));
    let stable = h.c.list_groups(&[GroupState::Stable]);
    assert_eq!(stable.len(), 1);
    assert_eq!(
        (
            stable[0].group_id.as_str(),
            stable[0].protocol_type.as_str()
        ),
        ("g", "consumer")
    );
    assert_eq!(h.c.list_groups(&[]).len(), 2);
    assert_eq!(
        GroupState::parse("completingrebalance"),
        Some(GroupState::CompletingRebalance)
    );
}

/// `handleDeleteGroups`: GROUP_ID_NOT_FOUND for an unknown group, NON_EMPTY_GROUP for a group
/// with members; an Empty group is removed with tombstones for its offsets and its metadata.
#[test]
fn delete_groups_only_empty_ones() {
    let mut h = Harness::new(config_no_delay());
    h.stable_one();
    let id = h.request_id();
    let req = OffsetCommitRequest {
        group_id: "simple".into(),
        generation_id: -1,
        member_id: String::new(),
        group_instance_id: None,
        partitions: vec![PartitionCommit {
            partition: tp("t", 0),
            offset: 4,
            leader_epoch: -1,
            metadata: None,
        }],
    };
    h.c.handle_offset_commit(h.now, id, req);
    h.drain();
    let before = h.records.len();
    let result =
        h.c.delete_groups(h.now, &["g".into(), "simple".into(), "nope".into()]);
    h.drain();
    let codes: Vec<i16> = result.iter().map(|(_, c)| *c).collect();
    assert_eq!(
        codes,
        vec![code::NON_EMPTY_GROUP, code::NONE, code::GROUP_ID_NOT_FOUND]
    );
    assert!(h.c.group("simple").is_none());
    let tombstones: Vec<&RecordKey> = h.records[before..].iter().map(|(_, r)| &r.key).collect();
    assert_eq!(tombstones.len(), 2);
    assert!(h.records[before..].iter().all(|(_, r)| r.value.is_none()));
    assert!(
        h.replayed().group("simple").is_none(),
        "replay deletes it too"
    );
}

/// KIP-211 (`GroupMetadata.removeExpiredOffsets`, `cleanupGroupMetadata`): an Empty group's
/// offsets expire offsets.retention after it became Empty, and the group then dies (tombstoned);
/// a simple group's offsets expire by commit time; a group with members keeps its offsets.
#[test]
fn offsets_expire_after_retention_from_when_the_group_emptied() {
    let retention = 3_600_000;
    let mut h = Harness::new(GroupConfig {
        offsets_retention_ms: retention,
        ..config_no_delay()
    });
    let m1 = h.stable_one();
    h.commit(&m1, 1, &[(tp("t", 0), 10)]);
    for _ in 0..(2 * retention / 5_000) {
        h.advance(5_000);
        assert_eq!(h.heartbeat(&m1, 1), code::NONE);
    }
    assert_eq!(
        h.fetched(&tp("t", 0)),
        10,
        "a Stable group keeps its offsets"
    );
    let emptied_at = h.now;
    h.c.handle_leave(
        h.now,
        "g",
        vec![LeavingMember {
            member_id: m1.clone(),
            group_instance_id: None,
        }],
    );
    h.drain();
    assert_eq!(h.group().state(), GroupState::Empty);
    assert_eq!(h.group().state_since_ms(), Some(emptied_at));
    h.advance(retention - OFFSETS_RETENTION_CHECK_INTERVAL_MS_DEFAULT);
    assert_eq!(h.fetched(&tp("t", 0)), 10);
    h.advance(OFFSETS_RETENTION_CHECK_INTERVAL_MS_DEFAULT);
    assert_eq!(h.fetched(&tp("t", 0)), -1);
    assert!(
        h.c.group("g").is_none(),
        "an Empty group without offsets is Dead and removed"
    );
    let last = &h.records[h.records.len() - 2..];
    assert!(
        last.iter().all(|(_, r)| r.value.is_none()),
        "offset and group tombstones"
    );
    assert!(h.replayed().group("g").is_none());
}

/// Expiry of a simple group's offsets counts from each commit (`commitTimestamp`), and an
/// offset with a commit in flight is never expired (Kafka skips `pendingOffsetCommits`).
#[test]
fn simple_group_offsets_expire_by_commit_time_but_not_while_a_commit_is_in_flight() {
    let retention = 1_200_000;
    let mut h = Harness::new(GroupConfig {
        offsets_retention_ms: retention,
        ..config_no_delay()
    });
    h.commit("", -1, &[(tp("t", 0), 1), (tp("t", 1), 1)]);
    h.advance(retention / 2);
    h.commit("", -1, &[(tp("t", 1), 2)]);
    h.auto_durable = false;
    h.commit("", -1, &[(tp("t", 0), 3)]);
    h.advance(retention / 2 + 1_000);
    assert_eq!(h.fetched(&tp("t", 0)), 1, "kept: a commit is in flight");
    assert_eq!(
        h.fetched(&tp("t", 1)),
        2,
        "committed later: not expired yet"
    );
    h.durable();
    assert_eq!(h.fetched(&tp("t", 0)), 3);
    assert_eq!(
        h.replayed().group("g").unwrap().offsets(),
        h.group().offsets()
    );
}

/// The records' encoding: every kind round-trips through bytes, tombstones included, and
/// garbage is an error, never a panic.
#[test]
fn records_round_trip_through_bytes() {
    let records = vec![
        GroupRecord::offset(
            "g",
            &tp("t", 3),
            Some(OffsetValue {
                offset: 42,
                leader_epoch: 7,
                metadata: "meta".into(),
                commit_timestamp_ms: 1_000,
            }),
        ),
        GroupRecord::offset("g", &tp("t", 3), None),
        GroupRecord::group(
            "g",
            Some(GroupMetadataValue {
                protocol_type: "consumer".into(),
                generation: 5,
                protocol_name: Some("range".into()),
                leader: Some("m".into()),
                current_state_timestamp_ms: 99,
                members: vec![MemberValue {
                    member_id: "m".into(),
                    group_instance_id: Some("i".into()),
                    client_id: "c".into(),
                    client_host: "/h".into(),
                    rebalance_timeout_ms: 1,
                    session_timeout_ms: 2,
                    subscription: vec![1, 2],
                    assignment: vec![3],
                }],
            }),
        ),
        GroupRecord::group("g", None),
    ];
    for r in &records {
        let (k, v) = r.encode();
        assert_eq!(&GroupRecord::decode(&k, v.as_deref()).unwrap(), r);
    }
    let (k1, _) = records[0].encode();
    let (k2, _) = records[1].encode();
    assert_eq!(
        k1, k2,
        "the same key encodes to the same bytes (compaction)"
    );
    assert!(matches!(
        GroupRecord::decode(&[0x08, 0x09], None),
        Err(RecordError::UnknownKeyKind(9))
    ));
    assert!(GroupRecord::decode(&[0xff, 0xff], None).is_err());
    assert!(GroupRecord::decode(&k1, Some(&[0xff])).is_err());
    let mismatched = GroupRecord {
        key: records[3].key.clone(),
        value: records[0].value.clone(),
    };
    let loaded = GroupCoordinator::load(GroupConfig::default(), "x", 0, [mismatched]);
    assert_eq!(loaded.err(), Some(RecordError::KindMismatch));
}

/// `GroupMetadataManager.loadGroupsAndOffsets`: a coordinator rebuilt from the records (after a
/// leadership move) has the same groups: a Stable group with its generation, leader, protocol,
/// members and assignments, and every durable offset; its members' sessions start at load.
#[test]
fn replaying_the_records_rebuilds_the_same_state() {
    let mut h = Harness::new(config_no_delay());
    let (m1, m2) = h.stable_two();
    h.commit(&m1, 2, &[(tp("t", 0), 11), (tp("t", 1), 12)]);
    h.commit(&m2, 2, &[(tp("t", 1), 13)]);
    let loaded = h.replayed();
    let (a, b) = (h.group(), loaded.group("g").unwrap());
    assert_eq!(b.state(), GroupState::Stable);
    assert_eq!(
        (
            a.generation(),
            a.leader(),
            a.protocol_name(),
            a.protocol_type()
        ),
        (
            b.generation(),
            b.leader(),
            b.protocol_name(),
            b.protocol_type()
        )
    );
    type MemberView = (String, Option<Vec<u8>>, Option<Vec<u8>>);
    let view = |g: &Group| -> Vec<MemberView> {
        g.members()
            .map(|m| {
                (
                    m.member_id().to_string(),
                    m.assignment().map(<[u8]>::to_vec),
                    m.metadata("range").map(<[u8]>::to_vec),
                )
            })
            .collect()
    };
    assert_eq!(view(a), view(b));
    assert_eq!(a.offsets(), b.offsets());
    assert_eq!(b.offsets()[&tp("t", 1)].offset, 13);
    // The loaded coordinator carries on: a member heartbeats, its peer's session expires.
    let mut loaded = loaded;
    let hb = HeartbeatRequest {
        group_id: "g".into(),
        generation_id: 2,
        member_id: m1.clone(),
        group_instance_id: None,
    };
    assert_eq!(loaded.handle_heartbeat(h.now + 5_000, &hb), code::NONE);
    loaded.poll(h.now + i64::from(SESSION_MS));
    assert!(loaded.group("g").unwrap().member(&m2).is_none());
    assert_eq!(
        loaded.group("g").unwrap().state(),
        GroupState::PreparingRebalance
    );
}

/// A coordinator that loses its partition answers every waiting request NOT_COORDINATOR
/// (clients then find the new coordinator), including commits held for durability.
#[test]
fn resign_answers_waiting_requests_not_coordinator() {
    let mut h = Harness::new(config_no_delay());
    let m1 = h.stable_one();
    let (_m2, j2) = h.new_member("c");
    h.auto_durable = false;
    let (c, _) = h.commit(&m1, 1, &[(tp("t", 0), 1)]);
    let answers: BTreeMap<RequestId, Response> = h.c.clone().resign().into_iter().collect();
    assert!(matches!(&answers[&j2], Response::Join(j) if j.error_code == code::NOT_COORDINATOR));
    assert!(matches!(
        &answers[&c],
        Response::OffsetCommit(r) if r.partitions[0].1 == code::NOT_COORDINATOR
    ));
}

// ---------------------------------------------------------------------------------------------
// Property test
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Join(usize),
    Sync(usize),
    Heartbeat(usize),
    Leave(usize),
    Commit {
        member: usize,
        partition: i32,
        offset: i64,
    },
    SimpleCommit {
        partition: i32,
        offset: i64,
    },
    Advance(i64),
    Durable,
}

fn op() -> impl Strategy<Value = Op> {
    let m = 0..3usize;
    prop_oneof![
        4 => m.clone().prop_map(Op::Join),
        6 => m.clone().prop_map(Op::Sync),
        3 => m.clone().prop_map(Op::Heartbeat),
        1 => m.clone().prop_map(Op::Leave),
        2 => (m, 0..3i32, 0..1000i64).prop_map(|(member, partition, offset)| Op::Commit { member, partition, offset }),
        1 => (0..3i32, 0..1000i64).prop_map(|(partition, offset)| Op::SimpleCommit { partition, offset }),
        3 => prop_oneof![6 => 0..2_000i64, 2 => 0..40_000i64, 1 => Just(700_000i64)].prop_map(Op::Advance),
        2 => Just(Op::Durable),
    ]
}

/// What one simulated client knows.
#[derive(Clone, Debug, Default)]
struct Client {
    member_id: String,
    generation: i32,
    /// The members to assign, when this client leads `generation`.
    to_assign: Vec<String>,
}

fn offsets_of(c: &GroupCoordinator) -> BTreeMap<TopicPartition, i64> {
    c.group("g")
        .map(|g| {
            g.offsets()
                .iter()
                .map(|(tp, o)| (tp.clone(), o.offset))
                .collect()
        })
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random joins, syncs, heartbeats, leaves, commits, time and durability acknowledgements
    /// for three clients. After every step: the coordinator's invariants (the leader is a
    /// member, a Stable group's members all have assignments, ...); at most one leader per
    /// generation; generations never decrease while the group lives; committed offsets change
    /// only when commit records become durable (or, with time, by expiry); and once every
    /// record is durable, replaying them gives the same offsets and the same Stable groups.
    #[test]
    fn coordinator_invariants_hold_under_random_operations(ops in proptest::collection::vec(op(), 1..80)) {
        let mut h = Harness::new(GroupConfig { initial_rebalance_delay_ms: 1_000, ..GroupConfig::default() });
        h.auto_durable = false;
        let mut clients = vec![Client::default(); 3];
        let mut leaders: BTreeMap<i32, String> = BTreeMap::new();
        let mut last_generation = 0;
        let mut issued: BTreeMap<TopicPartition, Vec<i64>> = BTreeMap::new();
        for op in &ops {
            let before = offsets_of(&h.c);
            match op {
                Op::Join(i) => {
                    let r = h.join_req(&clients[*i].member_id.clone(), &format!("c{i}"), &["range"]);
                    let (_, now) = h.join(r);
                    if let Some(a) = now {
                        if a.error_code == code::MEMBER_ID_REQUIRED {
                            clients[*i].member_id = a.member_id;
                        } else if a.error_code == code::UNKNOWN_MEMBER_ID {
                            clients[*i].member_id.clear();
                        }
                    }
                }
                Op::Sync(i) => {
                    let c = clients[*i].clone();
                    let assignments = c.to_assign.iter().map(|m| (m.clone(), m.as_bytes().to_vec())).collect();
                    h.sync(&c.member_id, c.generation, assignments);
                }
                Op::Heartbeat(i) => {
                    let c = clients[*i].clone();
                    let code = h.heartbeat(&c.member_id, c.generation);
                    if code == code::UNKNOWN_MEMBER_ID {
                        clients[*i].member_id.clear();
                    }
                }
                Op::Leave(i) => {
                    let m = LeavingMember { member_id: clients[*i].member_id.clone(), group_instance_id: None };
                    h.c.handle_leave(h.now, "g", vec![m]);
                    h.drain();
                    clients[*i] = Client::default();
                }
                Op::Commit { member, partition, offset } => {
                    let c = clients[*member].clone();
                    issued.entry(tp("t", *partition)).or_default().push(*offset);
                    h.commit(&c.member_id, c.generation, &[(tp("t", *partition), *offset)]);
                }
                Op::SimpleCommit { partition, offset } => {
                    issued.entry(tp("t", *partition)).or_default().push(*offset);
                    h.commit("", -1, &[(tp("t", *partition), *offset)]);
                }
                Op::Advance(ms) => h.advance(*ms),
                Op::Durable => h.durable(),
            }
            // Deliver late join answers to their clients.
            let answered: Vec<(RequestId, Response)> = std::mem::take(&mut h.answers).into_iter().collect();
            for (_, response) in answered {
                if let Response::Join(a) = response {
                    if a.error_code != code::NONE {
                        continue;
                    }
                    let Some(c) = clients.iter_mut().find(|c| c.member_id == a.member_id) else {
                        continue;
                    };
                    c.generation = a.generation_id;
                    c.to_assign = a.members.iter().map(|m| m.member_id.clone()).collect();
                    if let Some(previous) = leaders.insert(a.generation_id, a.leader.clone()) {
                        prop_assert_eq!(previous, a.leader.clone(), "one leader per generation");
                    }
                }
            }
            h.c.check_invariants();
            match h.c.group("g") {
                Some(g) => {
                    prop_assert!(g.generation() >= last_generation, "generations never decrease");
                    last_generation = g.generation();
                    if let Some(leader) = g.leader() {
                        prop_assert!(g.member(leader).is_some());
                    }
                }
                None => {
                    // The group died (expiry): a new one starts over.
                    last_generation = 0;
                    leaders.clear();
                }
            }
            let after = offsets_of(&h.c);
            match op {
                Op::Durable => {
                    for (tp, o) in &after {
                        if before.get(tp) != Some(o) {
                            prop_assert!(issued[tp].contains(o), "an offset comes from a commit");
                        }
                    }
                    prop_assert!(before.keys().all(|tp| after.contains_key(tp)), "durability removes nothing");
                }
                Op::Advance(_) => {
                    prop_assert!(after.iter().all(|(tp, o)| before.get(tp) == Some(o)), "time only expires offsets");
                }
                _ => prop_assert_eq!(&before, &after, "offsets change only when commits are durable"),
            }
            if matches!(op, Op::Durable) {
                let loaded = h.replayed();
                prop_assert_eq!(offsets_of(&loaded), after);
                if let Some(g) = h.c.group("g").filter(|g| g.state() == GroupState::Stable) {
                    let l = loaded.group("g").expect("a Stable group was written");
                    prop_assert_eq!(l.state(), GroupState::Stable);
                    prop_assert_eq!((l.generation(), l.leader()), (g.generation(), g.leader()));
                    let ids = |g: &Group| g.members().map(|m| (m.member_id().to_string(), m.assignment().map(<[u8]>::to_vec))).collect::<Vec<_>>();
                    prop_assert_eq!(ids(l), ids(g));
                }
            }
        }
    }
}

/// Values of Java's `"...".hashCode()` (computed with the JDK), and Kafka's partition
/// (`Utils.abs(hashCode) % n`).
#[test]
fn partition_for_matches_kafka() {
    assert_eq!(java_string_hash(""), 0);
    assert_eq!(java_string_hash("a"), 97);
    assert_eq!(java_string_hash("hello"), 99_162_322);
    assert_eq!(java_string_hash("my-group"), -1_906_497_762);
    assert_eq!(partition_for("my-group", 50), 1_906_497_762 % 50);
    // "polygenelubricants".hashCode() == Integer.MIN_VALUE; Utils.abs maps it to 0.
    assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
    assert_eq!(partition_for("polygenelubricants", 50), 0);
    let h = java_string_hash("zzzzzzzz");
    assert!(h < 0, "zzzzzzzz hashes negative ({h})");
    assert_eq!(partition_for("zzzzzzzz", 50), h.abs() % 50);
    // Outside the basic multilingual plane Java hashes the two UTF-16 surrogates.
    assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
}

// ---------------------------------------------------------------------------------------------
// Offsets committed inside transactions (TxnOffsetCommit)
// ---------------------------------------------------------------------------------------------

/// Kafka's `GroupMetadata.prepareTxnOffsetCommit` and `completePendingTxnOffsetCommit`: a
/// transaction's offsets are answered once durable but stay invisible (and unstable to a
/// `require_stable` fetch, KIP-447) until the COMMIT marker; a replay of the log agrees at
/// every step.
#[test]
fn txn_offsets_become_visible_only_at_the_commit_marker() {
    let mut h = Harness::new(config_no_delay());
    h.commit("", -1, &[(tp("t", 0), 5)]);
    let (_, answer) = h.txn_commit(7, "", -1, &[(tp("t", 0), 9), (tp("t", 1), 4)]);
    assert!(answer.is_none(), "held until durable");
    assert_eq!(h.fetched(&tp("t", 0)), 5, "the transaction is not decided");
    assert_eq!(h.fetched(&tp("t", 1)), -1);
    assert_eq!(
        h.fetched_stable(&tp("t", 0)),
        Err(code::UNSTABLE_OFFSET_COMMIT)
    );
    assert_eq!(
        h.fetched_stable(&tp("t", 1)),
        Err(code::UNSTABLE_OFFSET_COMMIT)
    );
    assert_eq!(
        h.fetched_stable(&tp("t", 2)),
        Ok(-1),
        "no commit pending there"
    );
    let replayed = h.replayed();
    assert_eq!(
        replayed.handle_offset_fetch("g", Some(&[tp("t", 0)]), true)[0].error_code,
        code::UNSTABLE_OFFSET_COMMIT,
        "a loaded transaction without its marker stays pending"
    );
    h.marker(7, true);
    assert_eq!(h.fetched(&tp("t", 0)), 9);
    assert_eq!(h.fetched_stable(&tp("t", 1)), Ok(4));
    assert_eq!(
        h.replayed().group("g").unwrap().offsets(),
        h.group().offsets()
    );
    // A resent marker changes nothing.
    h.marker(7, true);
    assert_eq!(h.fetched(&tp("t", 0)), 9);
}

/// An ABORT marker drops the transaction's offsets (Kafka's `completePendingTxnOffsetCommit`
/// with `isCommit` false), live and on load.
#[test]
fn an_abort_marker_discards_the_transactions_offsets() {
    let mut h = Harness::new(config_no_delay());
    h.commit("", -1, &[(tp("t", 0), 5)]);
    h.txn_commit(7, "", -1, &[(tp("t", 0), 9)]);
    h.marker(7, false);
    assert_eq!(h.fetched(&tp("t", 0)), 5);
    assert_eq!(h.fetched_stable(&tp("t", 0)), Ok(5));
    let replayed = h.replayed();
    assert_eq!(replayed.group("g").unwrap().offsets(), h.group().offsets());
    assert_eq!(
        replayed.handle_offset_fetch("g", Some(&[tp("t", 0)]), true)[0].offset,
        5
    );
}

/// A coordinator that loads a log whose transaction has no marker yet holds its offsets
/// pending, and the marker that lands afterwards decides them (`loadGroupsAndOffsets` keeps
/// `pendingOffsets` per producer; `handleTxnCompletion` later).
#[test]
fn a_loaded_open_transaction_is_decided_by_its_later_marker() {
    let mut h = Harness::new(config_no_delay());
    h.txn_commit(7, "", -1, &[(tp("t", 0), 9)]);
    h.txn_commit(8, "", -1, &[(tp("t", 1), 3)]);
    let mut loaded = h.replayed();
    assert_eq!(
        loaded.handle_offset_fetch("g", None, false),
        vec![],
        "nothing committed yet"
    );
    loaded.complete_txn(ProducerId(7), true);
    loaded.complete_txn(ProducerId(8), false);
    let all = loaded.handle_offset_fetch("g", None, true);
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].partition.clone(), all[0].offset), (tp("t", 0), 9));
    // Live commits after a load are numbered after the loaded entries.
    assert!(loaded.last_record_seq() >= 2);
}

/// `CommitRecordMetadataAndOffset.olderThan`: an offset written after the transaction's
/// record (a plain commit) is not replaced when the transaction commits later; one written
/// before it is. Live and on load alike.
#[test]
fn a_transaction_does_not_replace_an_offset_written_after_it() {
    let mut h = Harness::new(config_no_delay());
    h.txn_commit(7, "", -1, &[(tp("t", 0), 9), (tp("t", 1), 9)]);
    h.commit("", -1, &[(tp("t", 0), 12)]);
    h.marker(7, true);
    assert_eq!(
        h.fetched(&tp("t", 0)),
        12,
        "written after the transaction's record"
    );
    assert_eq!(h.fetched(&tp("t", 1)), 9);
    assert_eq!(
        h.replayed().group("g").unwrap().offsets(),
        h.group().offsets()
    );
    // Two transactions on one partition: the later record wins whichever commits first.
    h.txn_commit(8, "", -1, &[(tp("t", 2), 1)]);
    h.txn_commit(9, "", -1, &[(tp("t", 2), 2)]);
    h.marker(9, true);
    h.marker(8, true);
    assert_eq!(h.fetched(&tp("t", 2)), 2);
    assert_eq!(
        h.replayed().group("g").unwrap().offsets(),
        h.group().offsets()
    );
}

/// `GroupCoordinator.validateOffsetCommit` with `isTransactional`: a member's commit is
/// checked against the group (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION), one without member
/// (TxnOffsetCommit v0-2) is taken even by a non-empty group, and a group that does not exist
/// is created.
#[test]
fn txn_commits_are_validated_against_the_members_generation() {
    let mut h = Harness::new(config_no_delay());
    let m1 = h.stable_one();
    let (_, a) = h.txn_commit(7, "stranger", 1, &[(tp("t", 0), 1)]);
    assert_eq!(a.unwrap().partitions[0].1, code::UNKNOWN_MEMBER_ID);
    let (_, a) = h.txn_commit(7, &m1, 2, &[(tp("t", 0), 1)]);
    assert_eq!(a.unwrap().partitions[0].1, code::ILLEGAL_GENERATION);
    let (id, a) = h.txn_commit(7, &m1, 1, &[(tp("t", 0), 1)]);
    assert!(a.is_none());
    let Some(Response::OffsetCommit(ok)) = h.answers.get(&id) else {
        panic!("answered once durable");
    };
    assert_eq!(ok.partitions, vec![(tp("t", 0), code::NONE)]);
    let (id, _) = h.txn_commit(8, "", -1, &[(tp("t", 1), 1)]);
    assert!(
        matches!(h.answers.get(&id), Some(Response::OffsetCommit(r)) if r.partitions[0].1 == code::NONE),
        "no member: not validated"
    );
    let id = h.request_id();
    let req = TxnOffsetCommitRequest {
        group_id: "new".into(),
        producer: TxnProducer {
            producer_id: ProducerId(9),
            producer_epoch: 0,
        },
        generation_id: -1,
        member_id: String::new(),
        group_instance_id: None,
        partitions: vec![],
    };
    assert!(h.c.handle_txn_offset_commit(h.now, id, req).now().is_some());
    assert_eq!(h.c.group("new").map(Group::state), Some(GroupState::Empty));
}

/// A group whose only offsets are in an open transaction is not removed by expiry (Kafka's
/// `hasOffsets` counts `pendingTransactionalOffsetCommits`); its records are transactional.
#[test]
fn a_group_with_an_open_transaction_does_not_expire() {
    let interval = GroupConfig::default().offsets_retention_check_interval_ms;
    let mut h = Harness::new(config_no_delay());
    h.txn_commit(7, "", -1, &[(tp("t", 0), 9)]);
    assert!(
        matches!(h.log.last(), Some(LogEntry::Txn { producer_id, .. }) if *producer_id == ProducerId(7))
    );
    h.advance(interval + 1);
    assert!(h.c.group("g").is_some());
    h.marker(7, true);
    assert_eq!(h.fetched(&tp("t", 0)), 9);
}

/// ConsumerProtocolSubscription v1 for `topics`, with v1's trailing user data and owned
/// partitions (empty), as a Java or librdkafka consumer sends it.
fn subscription(topics: &[&str]) -> Vec<u8> {
    let mut out = 1i16.to_be_bytes().to_vec();
    out.extend((topics.len() as i32).to_be_bytes());
    for t in topics {
        out.extend((t.len() as i16).to_be_bytes());
        out.extend(t.as_bytes());
    }
    out.extend((-1i32).to_be_bytes()); // user data: null
    out.extend(0i32.to_be_bytes()); // owned partitions: none
    out
}

/// OffsetDelete (KIP-496, Kafka's `handleDeleteOffsets`): a group with a member keeps the
/// offsets of topics it subscribes to (GROUP_SUBSCRIBED_TO_TOPIC) and loses the others, with a
/// tombstone each, which a reload replays; a group whose subscriptions cannot be read is
/// NON_EMPTY_GROUP as a whole; a group that does not exist GROUP_ID_NOT_FOUND.
#[test]
fn delete_offsets_keeps_subscribed_topics_of_a_group_with_members() {
    let mut h = Harness::new(config_no_delay());
    let mut req = h.join_req("", "c", &["range"]);
    req.protocols[0].metadata = subscription(&["t"]);
    let (_, first) = h.join(req.clone());
    req.member_id = first.expect("answered at once").member_id;
    let m = req.member_id.clone();
    let (j, _) = h.join(req);
    assert_eq!(h.join_answer(j).unwrap().generation_id, 1);
    let (s, _) = h.sync(&m, 1, vec![(m.clone(), b"a".to_vec())]);
    assert!(h.sync_answer(s).is_some());
    h.commit(&m, 1, &[(tp("t", 0), 5), (tp("u", 0), 7)]);
    h.drain();
    assert_eq!(offsets_of(&h.c).len(), 2);

    let before = h.records.len();
    let result =
        h.c.delete_offsets("g", &[tp("t", 0), tp("u", 0), tp("u", 1)])
            .expect("the group exists");
    h.drain();
    assert_eq!(
        result,
        vec![
            (tp("t", 0), code::GROUP_SUBSCRIBED_TO_TOPIC),
            (tp("u", 0), code::NONE),
            (tp("u", 1), code::NONE),
        ]
    );
    let left: Vec<TopicPartition> = offsets_of(&h.c).into_keys().collect();
    assert_eq!(left, vec![tp("t", 0)]);
    assert_eq!(h.records.len(), before + 1, "one tombstone");
    assert!(h.records[before].1.value.is_none());
    let replayed = h.replayed();
    assert_eq!(
        offsets_of(&replayed).into_keys().collect::<Vec<_>>(),
        vec![tp("t", 0)],
        "the reload replays the tombstone"
    );
    assert_eq!(
        h.c.delete_offsets("nope", &[tp("t", 0)]),
        Err(code::GROUP_ID_NOT_FOUND)
    );

    // Unreadable subscriptions: nothing is deleted while the group has members.
    let mut h = Harness::new(config_no_delay());
    let m = h.stable_one();
    h.commit(&m, 1, &[(tp("u", 0), 7)]);
    h.drain();
    assert_eq!(
        h.c.delete_offsets("g", &[tp("u", 0)]),
        Err(code::NON_EMPTY_GROUP)
    );
    assert_eq!(offsets_of(&h.c).len(), 1);
}

#[test]
fn subscriptions_parse_at_every_version_and_garbage_does_not() {
    assert_eq!(
        subscription_topics(&subscription(&["a", "bb"])),
        Some(vec!["a".to_string(), "bb".to_string()])
    );
    let mut v0 = 0i16.to_be_bytes().to_vec();
    v0.extend(1i32.to_be_bytes());
    v0.extend(1i16.to_be_bytes());
    v0.push(b'x');
    assert_eq!(subscription_topics(&v0), Some(vec!["x".to_string()]));
    for bad in [&b""[..], b"sub-range", &[0, 1, 0, 0, 0, 2, 0, 9, b'a']] {
        assert_eq!(subscription_topics(bad), None, "{bad:?}");
    }
}
