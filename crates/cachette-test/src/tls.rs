//! Throwaway certificates for TLS test servers.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA, and a server certificate for `127.0.0.1`/`localhost` it issued,
/// written as PEM files into a server's temp dir.
#[derive(Debug)]
pub(crate) struct TlsFiles {
    /// The CA certificate, for clients to trust.
    pub(crate) ca_pem: Vec<u8>,
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl TlsFiles {
    /// Generates a fresh CA and server certificate (ECDSA P-256) into `dir`.
    ///
    /// # Panics
    ///
    /// If generating or writing them fails.
    pub(crate) fn generate(dir: &Path) -> TlsFiles {
        let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
            panic!("cannot generate the test TLS certificates ({what}): {e}")
        };

        let ca_key = KeyPair::generate().unwrap_or_else(|e| fail("CA key", &e));
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail("CA", &e));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "cachette test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .unwrap_or_else(|e| fail("CA certificate", &e));
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().unwrap_or_else(|e| fail("server key", &e));
        // IP strings become IP address SANs, which is what a client checks
        // when it connects to 127.0.0.1.
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap_or_else(|e| fail("server", &e));
        params
            .distinguished_name
            .push(DnType::CommonName, "cachette test redis-server");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &issuer)
            .unwrap_or_else(|e| fail("server certificate", &e));

        let files = TlsFiles {
            ca_pem: ca_cert.pem().into_bytes(),
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        for (path, contents) in [
            (&files.ca, files.ca_pem.clone()),
            (&files.cert, cert.pem().into_bytes()),
            (&files.key, key.serialize_pem().into_bytes()),
        ] {
            fs::write(path, contents)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        files
    }
}

/// The `redis` crate's rustls is built without choosing a crypto provider;
/// make ring the process default (a no-op if one is installed already).
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
