//! SCRAM credentials in the metadata (KIP-554; KRaft's `ScramControlManager`):
//! AlterUserScramCredentials as a command that returns records, the records' apply, and the
//! credentials every broker authenticates with.
//!
//! A credential is what the server keeps of a password: salt, iterations, `StoredKey` and
//! `ServerKey` (RFC 5802), per user and mechanism (1 SCRAM-SHA-256, 2 SCRAM-SHA-512). The
//! client sends the salted password; the broker derives the two keys before the command runs
//! (core has no hash functions), so neither the password nor the salted password is stored.

use std::collections::{BTreeMap, BTreeSet};

use super::records::{RemoveScramCredentialRecord, ScramCredentialRecord};
use super::{ApplyError, MetadataRecord, MetadataState, Record};
use crate::error_code::{self as code, ErrorCode};

/// The fewest iterations a stored credential may have (Kafka's `ScramMechanism.minIterations`).
pub const SCRAM_ITERATIONS_MIN: i32 = 4096;
/// The most (`ScramControlManager.MAX_ITERATIONS`).
pub const SCRAM_ITERATIONS_MAX: i32 = 16384;

/// Kafka's SCRAM mechanism codes (`ScramMechanism.type`): SCRAM-SHA-256 and SCRAM-SHA-512.
pub const SCRAM_MECHANISMS: [i8; 2] = [1, 2];

/// One stored credential.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredScram {
    /// The salt.
    pub salt: Vec<u8>,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: i32,
}

impl std::fmt::Debug for StoredScram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets: never in logs.
        f.debug_struct("StoredScram")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// An upsertion, with the keys the broker derived from the client's salted password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramUpsertion {
    /// The user name.
    pub name: String,
    /// The mechanism's code.
    pub mechanism: i8,
    /// The credential.
    pub credential: StoredScram,
}

/// A deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramDeletion {
    /// The user name.
    pub name: String,
    /// The mechanism's code.
    pub mechanism: i8,
}

/// One user's outcome of an AlterUserScramCredentials (Kafka answers once per user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramResult {
    /// The user.
    pub user: String,
    /// NONE, or why the user's alteration was refused.
    pub error_code: ErrorCode,
    /// The message of the error.
    pub error_message: Option<String>,
}

fn check_name_and_mechanism(name: &str, mechanism: i8) -> Result<(), (ErrorCode, &'static str)> {
    if name.is_empty() {
        return Err((code::UNACCEPTABLE_CREDENTIAL, "Username must not be empty"));
    }
    if !SCRAM_MECHANISMS.contains(&mechanism) {
        return Err((code::UNSUPPORTED_SASL_MECHANISM, "Unknown SCRAM mechanism"));
    }
    Ok(())
}

fn check_credential(c: &StoredScram) -> Result<(), (ErrorCode, &'static str)> {
    if c.iterations < SCRAM_ITERATIONS_MIN {
        return Err((code::UNACCEPTABLE_CREDENTIAL, "Too few iterations"));
    }
    if c.iterations > SCRAM_ITERATIONS_MAX {
        return Err((code::UNACCEPTABLE_CREDENTIAL, "Too many iterations"));
    }
    if c.salt.is_empty() || c.stored_key.is_empty() || c.server_key.is_empty() {
        return Err((
            code::UNACCEPTABLE_CREDENTIAL,
            "Empty salt or salted password",
        ));
    }
    Ok(())
}

impl MetadataState {
    /// The stored credential of `user` for the mechanism with code `mechanism`.
    pub fn scram_credential(&self, user: &str, mechanism: i8) -> Option<&StoredScram> {
        self.scram.get(&(user.to_string(), mechanism))
    }

    /// Every stored credential, by user then mechanism.
    pub fn scram_credentials(&self) -> impl Iterator<Item = (&str, i8, &StoredScram)> {
        self.scram
            .iter()
            .map(|((user, mechanism), c)| (user.as_str(), *mechanism, c))
    }

    /// AlterUserScramCredentials (`ScramControlManager.alterCredentials`): a user named twice
    /// in the request gets DUPLICATE_RESOURCE; an empty name or too few or too many iterations
    /// UNACCEPTABLE_CREDENTIAL; an unknown mechanism UNSUPPORTED_SASL_MECHANISM; a deletion of
    /// a credential that does not exist RESOURCE_NOT_FOUND. One result per user (deletions,
    /// then upsertions, then refusals, each in request order); a record per accepted
    /// alteration. The records commit together.
    pub fn alter_user_scram_credentials(
        &self,
        deletions: &[ScramDeletion],
        upsertions: &[ScramUpsertion],
    ) -> (Vec<ScramResult>, Vec<MetadataRecord>) {
        let mut seen = BTreeSet::new();
        let mut refused: BTreeMap<&str, (ErrorCode, &'static str)> = BTreeMap::new();
        let mut order: Vec<&str> = Vec::new();
        let mut deletes: Vec<&ScramDeletion> = Vec::new();
        let mut upserts: Vec<&ScramUpsertion> = Vec::new();
        let names = deletions
            .iter()
            .map(|d| d.name.as_str())
            .chain(upsertions.iter().map(|u| u.name.as_str()));
        for name in names {
            if !seen.insert(name) {
                refused.insert(
                    name,
                    (
                        code::DUPLICATE_RESOURCE,
                        "A user credential cannot be altered twice in the same request",
                    ),
                );
            } else {
                order.push(name);
            }
        }
        for d in deletions {
            if refused.contains_key(d.name.as_str()) {
                continue;
            }
            let check = check_name_and_mechanism(&d.name, d.mechanism).and_then(|()| {
                match self.scram_credential(&d.name, d.mechanism) {
                    Some(_) => Ok(()),
                    None => Err((
                        code::RESOURCE_NOT_FOUND,
                        "Attempt to delete a user credential that does not exist",
                    )),
                }
            });
            match check {
                Ok(()) => deletes.push(d),
                Err(e) => {
                    refused.insert(&d.name, e);
                }
            }
        }
        for u in upsertions {
            if refused.contains_key(u.name.as_str()) {
                continue;
            }
            match check_name_and_mechanism(&u.name, u.mechanism)
                .and_then(|()| check_credential(&u.credential))
            {
                Ok(()) => upserts.push(u),
                Err(e) => {
                    refused.insert(&u.name, e);
                }
            }
        }
        let mut results = Vec::new();
        let mut records = Vec::new();
        for d in deletes {
            results.push(ScramResult {
                user: d.name.clone(),
                error_code: code::NONE,
                error_message: None,
            });
            records.push(MetadataRecord {
                record: Some(Record::RemoveScramCredential(RemoveScramCredentialRecord {
                    name: d.name.clone(),
                    mechanism: i32::from(d.mechanism),
                })),
            });
        }
        for u in upserts {
            results.push(ScramResult {
                user: u.name.clone(),
                error_code: code::NONE,
                error_message: None,
            });
            records.push(scram_record(&u.name, u.mechanism, &u.credential));
        }
        for name in order {
            if let Some((e, message)) = refused.get(name) {
                results.push(ScramResult {
                    user: name.to_string(),
                    error_code: *e,
                    error_message: Some(message.to_string()),
                });
            }
        }
        (results, records)
    }

    /// Applies a credential record: stores (or replaces) one that validates.
    pub(super) fn apply_scram(&mut self, r: &ScramCredentialRecord) -> Result<(), ApplyError> {
        let mechanism = i8::try_from(r.mechanism).unwrap_or(0);
        let credential = StoredScram {
            salt: r.salt.clone(),
            stored_key: r.stored_key.clone(),
            server_key: r.server_key.clone(),
            iterations: r.iterations,
        };
        check_name_and_mechanism(&r.name, mechanism)
            .and_then(|()| check_credential(&credential))
            .map_err(|(_, why)| ApplyError::InvalidScram(why.to_string()))?;
        self.scram.insert((r.name.clone(), mechanism), credential);
        Ok(())
    }

    /// Applies a removal: the credential must exist.
    pub(super) fn apply_remove_scram(
        &mut self,
        r: &RemoveScramCredentialRecord,
    ) -> Result<(), ApplyError> {
        let mechanism = i8::try_from(r.mechanism).unwrap_or(0);
        match self.scram.remove(&(r.name.clone(), mechanism)) {
            Some(_) => Ok(()),
            None => Err(ApplyError::InvalidScram(format!(
                "no credential of {:?} for mechanism {}",
                r.name, r.mechanism
            ))),
        }
    }
}

/// The record that stores `credential`.
pub fn scram_record(name: &str, mechanism: i8, credential: &StoredScram) -> MetadataRecord {
    MetadataRecord {
        record: Some(Record::ScramCredential(ScramCredentialRecord {
            name: name.to_string(),
            mechanism: i32::from(mechanism),
            salt: credential.salt.clone(),
            stored_key: credential.stored_key.clone(),
            server_key: credential.server_key.clone(),
            iterations: credential.iterations,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::snapshot;

    fn credential(iterations: i32) -> StoredScram {
        StoredScram {
            salt: vec![1; 16],
            stored_key: vec![2; 32],
            server_key: vec![3; 32],
            iterations,
        }
    }

    fn upsert(name: &str, mechanism: i8, iterations: i32) -> ScramUpsertion {
        ScramUpsertion {
            name: name.into(),
            mechanism,
            credential: credential(iterations),
        }
    }

    fn commit(state: &mut MetadataState, records: &[MetadataRecord]) {
        for r in records {
            state.apply(r).expect("command records apply");
        }
        state.check_invariants();
    }

    /// Reference: ScramControlManager.alterCredentials, validateUpsertion, validateDeletion.
    #[test]
    fn alter_follows_kafka_rules() {
        let mut state = MetadataState::new();
        let (results, records) = state.alter_user_scram_credentials(
            &[ScramDeletion {
                name: "ghost".into(),
                mechanism: 1,
            }],
            &[
                upsert("alice", 1, 4096),
                upsert("bob", 2, 100),
                upsert("carol", 2, 20000),
                upsert("dave", 3, 4096),
                upsert("", 1, 4096),
                upsert("erin", 1, 8192),
                upsert("erin", 2, 8192),
            ],
        );
        let got: Vec<(&str, ErrorCode)> = results
            .iter()
            .map(|r| (r.user.as_str(), r.error_code))
            .collect();
        assert_eq!(
            got,
            vec![
                ("alice", code::NONE),
                ("ghost", code::RESOURCE_NOT_FOUND),
                ("bob", code::UNACCEPTABLE_CREDENTIAL),
                ("carol", code::UNACCEPTABLE_CREDENTIAL),
                ("dave", code::UNSUPPORTED_SASL_MECHANISM),
                ("", code::UNACCEPTABLE_CREDENTIAL),
                ("erin", code::DUPLICATE_RESOURCE),
            ]
        );
        assert_eq!(records.len(), 1);
        commit(&mut state, &records);
        assert_eq!(state.scram_credential("alice", 1), Some(&credential(4096)));
        assert_eq!(state.scram_credential("alice", 2), None);

        // Replace, then delete.
        let (_, records) = state.alter_user_scram_credentials(&[], &[upsert("alice", 1, 8192)]);
        commit(&mut state, &records);
        assert_eq!(state.scram_credential("alice", 1).unwrap().iterations, 8192);
        let delete = [ScramDeletion {
            name: "alice".into(),
            mechanism: 1,
        }];
        let (results, records) = state.alter_user_scram_credentials(&delete, &[]);
        assert_eq!(results[0].error_code, code::NONE);
        commit(&mut state, &records);
        assert_eq!(state.scram_credentials().count(), 0);
        // A deletion computed before another removed it no longer applies.
        assert!(matches!(
            state.apply(&records[0]),
            Err(ApplyError::InvalidScram(_))
        ));
    }

    /// Credentials travel in metadata snapshots.
    #[test]
    fn credentials_survive_a_snapshot() {
        let mut state = MetadataState::new();
        let (_, records) = state.alter_user_scram_credentials(
            &[],
            &[upsert("alice", 1, 4096), upsert("bob", 2, 16384)],
        );
        commit(&mut state, &records);
        let bytes = snapshot::encode_state(&state);
        assert_eq!(snapshot::decode_state(&bytes).unwrap(), state);
    }
}
