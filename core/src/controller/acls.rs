//! The ACLs in the metadata (KRaft's `AclControlManager`): CreateAcls and DeleteAcls as
//! commands that return records, and the records' apply.
//!
//! The bindings live in [`MetadataState`] as an [`Acls`] set, so every broker that applied the
//! same metadata log authorises alike, and the ACLs survive restarts (the raft log and its
//! snapshots hold them) and a change of controller. A binding is its own identity (KRaft gives
//! each an id; keel needs none): [`Record::Acl`] adds one that is not there yet,
//! [`Record::RemoveAcl`] removes one that is. A command computed on a state that moved on
//! meanwhile (the same binding created twice at once) no longer fits and is recomputed, as every
//! command is.

use super::records::AclRecord;
use super::{
    ApplyError, ControllerError, MetadataRecord, MetadataState, Record, RECORDS_PER_COMMAND_MAX,
};
use crate::acl::ResourceType;
use crate::acl::{AclBinding, AclEntry, AclFilter, Acls, Operation, PatternType, Permission};

impl AclRecord {
    /// The record of `binding`.
    pub fn of(binding: &AclBinding) -> AclRecord {
        AclRecord {
            resource_type: i32::from(binding.resource_type.code()),
            resource_name: binding.resource_name.clone(),
            pattern_type: i32::from(binding.pattern_type.code()),
            principal: binding.entry.principal.clone(),
            host: binding.entry.host.clone(),
            operation: i32::from(binding.entry.operation.code()),
            permission: i32::from(binding.entry.permission.code()),
        }
    }

    /// The binding this record holds, if its codes are known and it passes
    /// [`AclBinding::validate`].
    pub fn binding(&self) -> Result<AclBinding, ApplyError> {
        let code = |c: i32| i8::try_from(c).ok();
        let invalid = |what: &str, c: i32| ApplyError::InvalidAcl(format!("unknown {what} {c}"));
        let binding = AclBinding {
            resource_type: code(self.resource_type)
                .and_then(ResourceType::from_code)
                .ok_or_else(|| invalid("resource type", self.resource_type))?,
            pattern_type: code(self.pattern_type)
                .and_then(PatternType::from_code)
                .ok_or_else(|| invalid("pattern type", self.pattern_type))?,
            resource_name: self.resource_name.clone(),
            entry: AclEntry {
                principal: self.principal.clone(),
                host: self.host.clone(),
                operation: code(self.operation)
                    .and_then(Operation::from_code)
                    .ok_or_else(|| invalid("operation", self.operation))?,
                permission: code(self.permission)
                    .and_then(Permission::from_code)
                    .ok_or_else(|| invalid("permission", self.permission))?,
            },
        };
        binding.validate().map_err(ApplyError::InvalidAcl)?;
        Ok(binding)
    }
}

/// A record that adds `binding`.
pub fn acl_record(binding: &AclBinding) -> MetadataRecord {
    MetadataRecord {
        record: Some(Record::Acl(AclRecord::of(binding))),
    }
}

/// A record that removes `binding`.
pub fn remove_acl_record(binding: &AclBinding) -> MetadataRecord {
    MetadataRecord {
        record: Some(Record::RemoveAcl(AclRecord::of(binding))),
    }
}

impl MetadataState {
    /// The ACLs.
    pub fn acls(&self) -> &Acls {
        &self.acls
    }

    /// CreateAcls (`AclControlManager.createAcls`): one result per binding, in order, and a
    /// record for each valid binding not there yet (a binding given twice, or already there,
    /// succeeds without a record). A binding [`AclBinding::validate`] refuses gets
    /// INVALID_REQUEST and no record; the others go on. POLICY_VIOLATION for the whole request
    /// past [`RECORDS_PER_COMMAND_MAX`] records.
    #[allow(clippy::type_complexity)]
    pub fn create_acls(
        &self,
        bindings: &[AclBinding],
    ) -> Result<(Vec<Result<(), ControllerError>>, Vec<MetadataRecord>), ControllerError> {
        let mut added = Acls::new();
        let mut results = Vec::with_capacity(bindings.len());
        let mut records = Vec::new();
        for binding in bindings {
            if let Err(why) = binding.validate() {
                results.push(Err(ControllerError::InvalidRequest(why)));
                continue;
            }
            if !self.acls.contains(binding) && added.insert(binding.clone()) {
                records.push(acl_record(binding));
            }
            results.push(Ok(()));
        }
        if records.len() > RECORDS_PER_COMMAND_MAX {
            return Err(super::too_many_records());
        }
        Ok((results, records))
    }

    /// DeleteAcls (`AclControlManager.deleteAcls`): for each filter, in order, the bindings it
    /// matches, and one record removing each matched binding (once, however many filters
    /// match it). All or nothing: the records commit together. POLICY_VIOLATION past
    /// [`RECORDS_PER_COMMAND_MAX`] records.
    #[allow(clippy::type_complexity)]
    pub fn delete_acls(
        &self,
        filters: &[AclFilter],
    ) -> Result<(Vec<Vec<AclBinding>>, Vec<MetadataRecord>), ControllerError> {
        let mut removed = Acls::new();
        let mut matched = Vec::with_capacity(filters.len());
        let mut records = Vec::new();
        for filter in filters {
            let bindings: Vec<AclBinding> = self.acls.matching(filter).collect();
            for b in &bindings {
                if removed.insert(b.clone()) {
                    records.push(remove_acl_record(b));
                }
            }
            if records.len() > RECORDS_PER_COMMAND_MAX {
                return Err(super::too_many_records());
            }
            matched.push(bindings);
        }
        Ok((matched, records))
    }

    /// Applies an ACL record: adds (`add`) a binding that is not there, or removes one that
    /// is. Anything else (an unknown code, a binding that does not validate, one already there
    /// or missing) leaves the state unchanged.
    pub(super) fn apply_acl(&mut self, r: &AclRecord, add: bool) -> Result<(), ApplyError> {
        let binding = r.binding()?;
        if add {
            if self.acls.contains(&binding) {
                return Err(ApplyError::InvalidAcl(format!("{binding} exists already")));
            }
            self.acls.insert(binding);
        } else if !self.acls.remove(&binding) {
            return Err(ApplyError::InvalidAcl(format!("{binding} does not exist")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::acl::{PatternFilter, CLUSTER_NAME, WILDCARD};
    use crate::quorum::snapshot;

    fn topic_acl(name: &str, principal: &str, operation: Operation) -> AclBinding {
        AclBinding {
            resource_type: ResourceType::Topic,
            pattern_type: PatternType::Literal,
            resource_name: name.into(),
            entry: AclEntry {
                principal: principal.into(),
                host: WILDCARD.into(),
                operation,
                permission: Permission::Allow,
            },
        }
    }

    fn commit(state: &mut MetadataState, records: &[MetadataRecord]) {
        for r in records {
            state.apply(r).expect("command records apply");
        }
        state.check_invariants();
    }

    /// Reference: AclControlManager.createAcls (validateNewAcl per binding; a binding that
    /// exists already succeeds without a record).
    #[test]
    fn create_acls_adds_new_valid_bindings_once() {
        let mut state = MetadataState::new();
        let read = topic_acl("orders", "User:alice", Operation::Read);
        let mut bad = topic_acl("", "User:alice", Operation::Read);
        let (results, records) = state
            .create_acls(&[read.clone(), bad.clone(), read.clone()])
            .unwrap();
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[2].is_ok());
        assert_eq!(
            results[1].as_ref().unwrap_err().code(),
            crate::error_code::INVALID_REQUEST
        );
        assert_eq!(records.len(), 1, "the same binding twice: one record");
        commit(&mut state, &records);
        assert!(state.acls().contains(&read));
        let (results, records) = state.create_acls(std::slice::from_ref(&read)).unwrap();
        assert!(results[0].is_ok());
        assert!(records.is_empty(), "an existing binding needs no record");
        bad.resource_type = ResourceType::Cluster;
        bad.resource_name = "other".into();
        let (results, _) = state.create_acls(&[bad]).unwrap();
        assert!(results[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains(CLUSTER_NAME));
    }

    /// Reference: AclControlManager.deleteAcls (every match of every filter, each removed
    /// once, atomically).
    #[test]
    fn delete_acls_removes_every_match_once() {
        let mut state = MetadataState::new();
        let a = topic_acl("orders", "User:alice", Operation::Read);
        let b = topic_acl("orders", "User:bob", Operation::Write);
        let c = topic_acl("payments", "User:alice", Operation::Read);
        let (_, records) = state
            .create_acls(&[a.clone(), b.clone(), c.clone()])
            .unwrap();
        commit(&mut state, &records);
        let alice = AclFilter {
            principal: Some("User:alice".into()),
            ..AclFilter::any()
        };
        let orders = AclFilter {
            resource_type: Some(ResourceType::Topic),
            resource_name: Some("orders".into()),
            pattern: PatternFilter::Match,
            ..AclFilter::any()
        };
        let (matched, records) = state.delete_acls(&[alice, orders]).unwrap();
        assert_eq!(
            matched,
            vec![vec![a.clone(), c.clone()], vec![a.clone(), b.clone()]]
        );
        assert_eq!(records.len(), 3, "a, matched twice, is removed once");
        commit(&mut state, &records);
        assert!(state.acls().is_empty());
        // Nothing left to match: no records.
        let (matched, records) = state.delete_acls(&[AclFilter::any()]).unwrap();
        assert_eq!(matched, vec![Vec::<AclBinding>::new()]);
        assert!(records.is_empty());
    }

    /// Two CreateAcls of the same binding computed on the same state: the second batch no
    /// longer fits and is refused whole (its caller recomputes and finds nothing to add); the
    /// same for a removal of a binding removed meanwhile.
    #[test]
    fn stale_acl_records_are_refused_on_apply() {
        let mut state = MetadataState::new();
        let a = topic_acl("orders", "User:alice", Operation::Read);
        let (_, first) = state.create_acls(std::slice::from_ref(&a)).unwrap();
        let (_, second) = state.create_acls(std::slice::from_ref(&a)).unwrap();
        commit(&mut state, &first);
        let before = state.clone();
        assert!(matches!(
            state.apply(&second[0]),
            Err(ApplyError::InvalidAcl(_))
        ));
        assert_eq!(state, before);
        let (_, remove) = state.delete_acls(&[AclFilter::any()]).unwrap();
        commit(&mut state, &remove);
        assert!(matches!(
            state.apply(&remove[0]),
            Err(ApplyError::InvalidAcl(_))
        ));
    }

    #[test]
    fn records_with_unknown_codes_or_invalid_bindings_do_not_apply() {
        let good = AclRecord::of(&topic_acl("orders", "User:alice", Operation::Read));
        let cases = [
            AclRecord {
                resource_type: 1,
                ..good.clone()
            },
            AclRecord {
                pattern_type: 2,
                ..good.clone()
            },
            AclRecord {
                operation: 300,
                ..good.clone()
            },
            AclRecord {
                permission: 0,
                ..good.clone()
            },
            AclRecord {
                principal: "alice".into(),
                ..good.clone()
            },
            AclRecord {
                resource_name: String::new(),
                ..good.clone()
            },
        ];
        for r in cases {
            let mut state = MetadataState::new();
            let record = MetadataRecord {
                record: Some(Record::Acl(r.clone())),
            };
            assert!(
                matches!(state.apply(&record), Err(ApplyError::InvalidAcl(_))),
                "{r:?}"
            );
            assert_eq!(state, MetadataState::new());
        }
    }

    /// The ACLs travel in metadata snapshots: a state with ACLs encodes and decodes to itself
    /// (encode_state asserts it), and the records survive prost.
    #[test]
    fn acls_survive_a_snapshot() {
        let mut state = MetadataState::new();
        let prefixed = AclBinding {
            pattern_type: PatternType::Prefixed,
            ..topic_acl("team-", "User:*", Operation::All)
        };
        let cluster = AclBinding {
            resource_type: ResourceType::Cluster,
            resource_name: CLUSTER_NAME.into(),
            ..topic_acl("x", "User:admin", Operation::Alter)
        };
        let (_, records) = state
            .create_acls(&[
                topic_acl("orders", "User:alice", Operation::Read),
                prefixed,
                cluster,
            ])
            .unwrap();
        for r in &records {
            assert_eq!(
                &MetadataRecord::decode(r.encode_to_vec().as_slice()).unwrap(),
                r
            );
        }
        commit(&mut state, &records);
        let bytes = snapshot::encode_state(&state);
        assert_eq!(snapshot::decode_state(&bytes).unwrap(), state);
        assert_eq!(state.acls().len(), 3);
    }
}
