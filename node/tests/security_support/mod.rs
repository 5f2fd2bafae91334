//! Shared by the security tests: a throwaway CA with a server certificate (SAN `localhost` and
//! `127.0.0.1`) and a client certificate, made with rcgen at test time.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The subject of the client certificate, and the principal keel must derive from it.
pub const CLIENT_CN: &str = "client-1";
pub const CLIENT_PRINCIPAL: &str = "User:CN=client-1,O=keel-test";

/// PEM text of a CA, a server certificate and key signed by it, and a client certificate and
/// key signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub server_chain_pem: String,
    pub server_key_pem: String,
    pub client_chain_pem: String,
    pub client_key_pem: String,
}

impl TestPki {
    pub fn new() -> TestPki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "keel test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");

        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server_params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server certificate");

        let client_key = KeyPair::generate().expect("client key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        // Subject in DER order O, CN (rcgen starts with a CN of its own: replace the whole name).
        client_params.distinguished_name = rcgen::DistinguishedName::new();
        client_params
            .distinguished_name
            .push(DnType::OrganizationName, "keel-test");
        client_params
            .distinguished_name
            .push(DnType::CommonName, CLIENT_CN);
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params
            .signed_by(&client_key, &ca, &ca_key)
            .expect("client certificate");

        TestPki {
            ca_pem: ca.pem(),
            server_chain_pem: format!("{}{}", server.pem(), ca.pem()),
            server_key_pem: server_key.serialize_pem(),
            client_chain_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    /// Writes the PEM files into `dir`: `ca.pem`, `server.pem` (key and chain in one file, for
    /// `ssl.keystore.location`), `client.crt`, `client.key`.
    pub fn write(&self, dir: &Path) -> PkiFiles {
        let files = PkiFiles {
            ca: dir.join("ca.pem"),
            server: dir.join("server.pem"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&files.ca, &self.ca_pem).expect("write ca.pem");
        std::fs::write(
            &files.server,
            format!("{}{}", self.server_key_pem, self.server_chain_pem),
        )
        .expect("write server.pem");
        std::fs::write(&files.client_cert, &self.client_chain_pem).expect("write client.crt");
        std::fs::write(&files.client_key, &self.client_key_pem).expect("write client.key");
        files
    }
}

/// Where [`TestPki::write`] put the files.
pub struct PkiFiles {
    pub ca: PathBuf,
    pub server: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}
