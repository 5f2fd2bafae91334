//! Entry points for the SASL fuzz target and its tests: the logic lives here so that the
//! target stays one line (as `wire::testing` does).

use std::sync::OnceLock;

use super::sasl::{Mechanism, SaslExchange, SaslUsers, Step};

/// The one user the fuzzed exchanges authenticate against.
pub const USER: &str = "alice";
/// Her password.
pub const PASSWORD: &str = "alice-secret";
/// The server nonce of every fuzzed SCRAM exchange.
pub const SERVER_NONCE: &str = "fuzz-server-nonce";

fn users() -> &'static SaslUsers {
    static USERS: OnceLock<SaslUsers> = OnceLock::new();
    // Derived once: PBKDF2 at 4,096 iterations per run would starve the fuzzer.
    USERS.get_or_init(|| {
        SaslUsers::from_passwords([(USER, PASSWORD)], 4096, || b"fuzz-salt".to_vec())
    })
}

/// Runs a SASL exchange on untrusted tokens: `data[0]` picks the mechanism (PLAIN,
/// SCRAM-SHA-256, SCRAM-SHA-512), the rest is split at each `0xff` byte into the client's
/// tokens, fed to one exchange until it ends. Must never panic, whatever `data` holds; a PLAIN
/// exchange succeeds only for the right password; an exchange never succeeds twice and
/// nothing is taken after it ended. Returns the user it authenticated, if any.
pub fn sasl_exchange(data: &[u8]) -> Option<String> {
    let (&selector, rest) = data.split_first()?;
    let mechanism = Mechanism::ALL[usize::from(selector) % Mechanism::ALL.len()];
    let mut exchange = SaslExchange::new(mechanism);
    let mut authenticated = None;
    for token in rest.split(|b| *b == 0xff) {
        let step = exchange.step(token, users(), SERVER_NONCE);
        match step {
            Ok(Step::Challenge(_)) => {
                assert!(authenticated.is_none(), "a challenge after success");
            }
            Ok(Step::Done { user, .. }) => {
                assert!(authenticated.is_none(), "a second success in one exchange");
                assert_eq!(user, USER, "only the configured user exists");
                if mechanism == Mechanism::Plain {
                    let password = token.rsplit(|b| *b == 0).next();
                    assert_eq!(password, Some(PASSWORD.as_bytes()), "PLAIN's password");
                }
                authenticated = Some(user);
            }
            Err(_) => break,
        }
    }
    authenticated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(selector: u8, tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![selector];
        out.extend(tokens.join(&0xff_u8));
        out
    }

    #[test]
    fn plain_logs_in_with_the_password_only() {
        assert_eq!(
            sasl_exchange(&input(0, &[b"\0alice\0alice-secret"])),
            Some(USER.to_string())
        );
        assert_eq!(sasl_exchange(&input(0, &[b"\0alice\0wrong"])), None);
        assert_eq!(
            sasl_exchange(&input(
                0,
                &[b"\0alice\0alice-secret", b"\0alice\0alice-secret"]
            )),
            Some(USER.to_string()),
            "the second token is refused, not a second login"
        );
    }

    #[test]
    fn scram_takes_a_client_first_and_refuses_a_forged_final() {
        for selector in [1, 2] {
            let first: &[u8] = b"n,,n=alice,r=abc";
            let forged: &[u8] = b"c=biws,r=abcfuzz-server-nonce,p=AAAA";
            assert_eq!(sasl_exchange(&input(selector, &[first, forged])), None);
            assert_eq!(sasl_exchange(&input(selector, &[b"garbage"])), None);
        }
        assert_eq!(sasl_exchange(&[]), None);
    }
}
