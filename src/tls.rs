//! TLS for the public listener (`server.tls`: [`ServerCert`]) and for the gateway's own clients
//! (JWKS fetches, the `http` and `redis_stream` event sinks):
//! rustls on aws-lc-rs, the crypto jsonwebtoken already builds, trusting the webpki roots, and
//! the certificates of a `ca_file` for a server behind a private CA. (The store's Redis
//! connection is redis-rs's, on the same rustls and provider.)

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A client config trusting the webpki roots and `extra`.
pub fn client_config(extra: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, String> {
    with_roots(
        rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        extra,
    )
}

/// A client config for a `rediss://` server: trusting the certificates of its `ca_file` alone
/// when it has one (as `redis-cli --cacert` does, and as the store's connection does), else
/// the webpki roots.
pub fn redis_client_config(ca: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, String> {
    if ca.is_empty() {
        client_config(&[])
    } else {
        with_roots(rustls::RootCertStore::empty(), ca)
    }
}

fn with_roots(
    mut roots: rustls::RootCertStore,
    extra: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| format!("a certificate of `ca_file` cannot be trusted: {e}"))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `certs` as a PEM bundle, for a library that takes roots only as PEM (redis-rs).
pub fn pem(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for cert in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    out
}

/// The certificates of a PEM file (`ca_file`), each checked to be one a client can trust; an
/// unreadable file, one without a certificate, or one holding a certificate rustls refuses
/// is an error naming the file.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read `ca_file` {shown}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`ca_file` {shown} is not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "`ca_file` {shown} holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` blocks)"
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        roots.add(cert.clone()).map_err(|e| {
            format!("`ca_file` {shown} holds a certificate that cannot be trusted: {e}")
        })?;
    }
    Ok(certs)
}

/// The public listener's certificate (`server.tls`): a certificate chain and its private key,
/// read from PEM files and checked to belong together.
pub fn read_server_cert(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let (cert_shown, key_shown) = (cert_file.display(), key_file.display());
    let bytes = std::fs::read(cert_file)
        .map_err(|e| format!("cannot read `cert_file` {cert_shown}: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`cert_file` {cert_shown} is not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "`cert_file` {cert_shown} holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` blocks, the server's first)"
        ));
    }
    let bytes =
        std::fs::read(key_file).map_err(|e| format!("cannot read `key_file` {key_shown}: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("`key_file` {key_shown} holds no PEM private key: {e}"))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        format!(
            "`cert_file` {cert_shown} and `key_file` {key_shown} do not make a usable pair: {e}"
        )
    })
}

/// The public listener's certificate, swapped in place when a reload reads new files, so a
/// renewed certificate needs a reload (`SIGHUP`), not a restart; connections already open
/// keep the one they started with.
#[derive(Debug)]
pub struct ServerCert(ArcSwap<CertifiedKey>);

impl ServerCert {
    /// Serves `key`.
    pub fn new(key: Arc<CertifiedKey>) -> ServerCert {
        ServerCert(ArcSwap::new(key))
    }

    /// Serves `key` to the next handshakes.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        self.0.store(key);
    }
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = read_ca_file(&path).unwrap_err();
        assert!(err.contains("holds no certificate"), "{err}");
        assert!(err.contains("empty.pem"), "{err}");
        let missing = read_ca_file(&dir.path().join("missing.pem")).unwrap_err();
        assert!(missing.starts_with("cannot read `ca_file`"), "{missing}");
    }

    #[test]
    fn pem_reads_back_as_the_same_certificates() {
        assert!(pem(&[]).is_empty());
        let certs = vec![
            CertificateDer::from((0u8..=200).collect::<Vec<u8>>()),
            CertificateDer::from(vec![7u8; 3]),
        ];
        let back: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem(&certs))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, certs);
    }

    #[test]
    fn the_webpki_roots_alone_make_a_config() {
        assert!(client_config(&[]).is_ok());
    }
}
