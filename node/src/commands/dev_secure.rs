//! `keel dev --secure`: what a secured development cluster needs, made fresh on every launch.
//!
//! Under `DATA_DIR/tls`: a CA (`ca.pem`; its private key is never written, so nothing can be
//! signed with it after the launch), one certificate per broker (`broker-I.pem`: key and chain,
//! subject `CN=keel-broker-I`, names `localhost` and `127.0.0.1`, for serving and for dialling
//! other brokers), and `secure.toml`, the settings every broker reads with `--config`: the
//! client listener on SASL_SSL with SCRAM-SHA-512, the peer transport on the same protocol
//! (TLS both ways, then a SCRAM login as the `broker` user), ACLs on with `admin` and `broker`
//! as super users. Both passwords are 32 random alphanumerics drawn for this launch; the
//! files holding keys or passwords are readable by their owner only.
//!
//! What always holds: no password is a default or derived from anything on disk, and the only
//! place a password leaves the process is the client settings printed for the user (the admin's)
//! and `secure.toml` (both).

#![cfg(not(madsim))]

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::config::{
    AUTHORIZER_CLASS_NAME, INTER_BROKER_LISTENER_NAME, KEEL_INTER_BROKER_SASL_USERNAME,
    KEEL_SASL_USERS, SASL_ENABLED_MECHANISMS, SASL_MECHANISM_INTER_BROKER_PROTOCOL,
    SSL_KEYSTORE_LOCATION, SSL_TRUSTSTORE_LOCATION, SUPER_USERS,
};

/// The listener name and protocol of every broker's client listener.
pub const PROTOCOL: &str = "SASL_SSL";
/// The mechanism clients and brokers log in with.
pub const MECHANISM: &str = "SCRAM-SHA-512";
/// The administrator clients log in as.
pub const ADMIN_USER: &str = "admin";
/// The user brokers log in to each other as.
pub const BROKER_USER: &str = "broker";
/// Characters in each generated password.
const PASSWORD_CHARS: usize = 32;

/// A secured development cluster's files and the administrator's password.
#[derive(Clone, PartialEq, Eq)]
pub struct SecureDev {
    /// `DATA_DIR/tls`.
    pub dir: PathBuf,
    /// The CA certificate clients trust (`ssl.ca.location`).
    pub ca: PathBuf,
    /// The settings file every broker reads.
    pub config: PathBuf,
    /// The administrator's password, drawn for this launch.
    pub admin_password: String,
}

impl fmt::Debug for SecureDev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureDev")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn password() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, PASSWORD_CHARS)
}

/// `text` as a TOML basic string, quoted and escaped (a path may hold any character).
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `text` to `path`, readable by its owner only when `private`.
fn write_file(path: &Path, text: &str, private: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)?;
    file.write_all(text.as_bytes())
}

impl SecureDev {
    /// Makes the CA, the certificates of brokers `ids` and the settings under `data_dir/tls`.
    pub fn prepare(data_dir: &Path, ids: &[i32]) -> Result<SecureDev, String> {
        let dir = data_dir.join("tls");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |e: std::io::Error| format!("cannot write {path}: {e}")
        };
        let tls = |e: rcgen::Error| format!("cannot make the certificates: {e}");

        let ca_key = KeyPair::generate().map_err(tls)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "keel dev CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;
        let ca = dir.join("ca.pem");
        write_file(&ca, &ca_cert.pem(), false).map_err(io(&ca))?;

        for id in ids {
            let key = KeyPair::generate().map_err(tls)?;
            let mut params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .map_err(tls)?;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("keel-broker-{id}"));
            // Each broker serves with it (clients, peers) and dials other brokers with it.
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(tls)?;
            let path = SecureDev::keystore_in(&dir, *id);
            let text = format!("{}{}{}", key.serialize_pem(), cert.pem(), ca_cert.pem());
            write_file(&path, &text, true).map_err(io(&path))?;
        }

        let admin_password = password();
        let settings: BTreeMap<&str, String> = [
            (INTER_BROKER_LISTENER_NAME, PROTOCOL.to_string()),
            (SSL_TRUSTSTORE_LOCATION, ca.display().to_string()),
            (SASL_ENABLED_MECHANISMS, MECHANISM.to_string()),
            (SASL_MECHANISM_INTER_BROKER_PROTOCOL, MECHANISM.to_string()),
            (
                KEEL_SASL_USERS,
                format!("{ADMIN_USER}={admin_password},{BROKER_USER}={}", password()),
            ),
            (KEEL_INTER_BROKER_SASL_USERNAME, BROKER_USER.to_string()),
            (AUTHORIZER_CLASS_NAME, "acl".to_string()),
            (SUPER_USERS, format!("User:{ADMIN_USER};User:{BROKER_USER}")),
        ]
        .into();
        let text: String = settings
            .iter()
            .map(|(key, value)| format!("{} = {}\n", toml_string(key), toml_string(value)))
            .collect();
        let config = dir.join("secure.toml");
        write_file(&config, &text, true).map_err(io(&config))?;
        Ok(SecureDev {
            dir,
            ca,
            config,
            admin_password,
        })
    }

    fn keystore_in(dir: &Path, id: i32) -> PathBuf {
        dir.join(format!("broker-{id}.pem"))
    }

    /// What `keel start` needs besides the plain layout's arguments: the settings file and the
    /// broker's own certificate.
    pub fn start_args(&self, id: i32) -> Vec<String> {
        vec![
            "--config".to_string(),
            self.config.display().to_string(),
            "--override".to_string(),
            format!(
                "{SSL_KEYSTORE_LOCATION}={}",
                SecureDev::keystore_in(&self.dir, id).display()
            ),
        ]
    }

    /// The client settings printed once the cluster is ready: a kcat line and a properties
    /// block (librdkafka's names, which confluent-kafka and kcat's `-F` read), which an empty
    /// line ends.
    pub fn client_settings(&self, bootstrap_servers: &str) -> String {
        let ca = self.ca.display();
        let password = &self.admin_password;
        format!(
            "secured: {PROTOCOL}, {MECHANISM}, user {ADMIN_USER} (password made for this \
             launch), CA {ca}\n\
             try:  kcat -b {bootstrap_servers} -X security.protocol={PROTOCOL} \
             -X sasl.mechanisms={MECHANISM} -X sasl.username={ADMIN_USER} \
             -X sasl.password={password} -X ssl.ca.location={ca} -L\n\
             client properties:\n\
             bootstrap.servers={bootstrap_servers}\n\
             security.protocol={PROTOCOL}\n\
             sasl.mechanism={MECHANISM}\n\
             sasl.username={ADMIN_USER}\n\
             sasl.password={password}\n\
             ssl.ca.location={ca}\n\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files are made with owner-only permissions where they hold secrets, the settings
    /// parse as a broker's, and two launches draw different passwords.
    #[test]
    fn prepare_writes_private_files_and_fresh_passwords() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = SecureDev::prepare(dir.path(), &[1, 2]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&first.config), 0o600);
        assert_eq!(mode(&first.dir.join("broker-2.pem")), 0o600);
        assert_eq!(mode(&first.ca), 0o644);
        assert_eq!(first.admin_password.len(), PASSWORD_CHARS);
        let text = std::fs::read_to_string(&first.config).unwrap();
        assert!(text.contains(&format!("{ADMIN_USER}={}", first.admin_password)));
        let config = crate::config::BrokerConfig::load(
            Some(&first.config),
            &[
                ("node.id".into(), "1".into()),
                ("listeners".into(), "SASL_SSL://127.0.0.1:19092".into()),
                (
                    SSL_KEYSTORE_LOCATION.into(),
                    first.dir.join("broker-1.pem").display().to_string(),
                ),
            ],
        )
        .unwrap();
        assert_eq!(config.inter_broker_listener_name.as_deref(), Some(PROTOCOL));
        assert_eq!(
            config.inter_broker_sasl,
            Some((
                crate::security::sasl::Mechanism::Scram(
                    crate::security::scram::ScramMechanism::Sha512
                ),
                BROKER_USER.to_string()
            ))
        );
        let second = SecureDev::prepare(dir.path(), &[1, 2]).unwrap();
        assert_ne!(first.admin_password, second.admin_password);
        let printed = second.client_settings("127.0.0.1:9092");
        assert!(printed.contains(&format!("sasl.password={}", second.admin_password)));
        assert!(!printed.contains(&first.admin_password));
    }
}
