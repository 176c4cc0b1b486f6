//! A private certificate authority made fresh per test (rcgen), and a server certificate it
//! signed for `127.0.0.1` and `localhost`: HTTPS receivers the gateway trusts only through a
//! sink's `ca_file`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA's certificate (PEM) and a server certificate it signed, as PEM files for a
/// `redis-server` and as a rustls server config.
pub struct TestCa {
    /// The CA certificate, PEM: what a `ca_file` holds.
    pub ca_pem: String,
    /// The server certificate for `127.0.0.1` and `localhost`, PEM.
    pub server_cert_pem: String,
    /// Its private key, PEM (PKCS #8).
    pub server_key_pem: String,
    /// A server config presenting that certificate.
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// A new CA and server certificate. Also picks the test process's rustls provider, which
    /// the TLS clients a test makes itself (redis-rs to a TLS Redis) need: rustls is built with
    /// two (pingora's TLS brings ring), so none is chosen by default.
    pub fn new() -> TestCa {
        tollgate::install_crypto_provider();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tollgate test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "tollgate test receiver");
        // Client use too: the nodes of a TLS Redis Cluster present it to one another.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).unwrap();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
            server: Arc::new(server),
        }
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns the path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }
}
