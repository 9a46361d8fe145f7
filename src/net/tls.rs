//! TLS: certificate loading (or first-start generation) and the rustls server configuration.
//!
//! The byte pumping between rustls and io_uring's owned buffers lives in `conn.rs`'s transport;
//! this file only prepares the `ServerConfig` and describes a finished handshake.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::smtp::TlsInfo;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file could not be read or written.
    #[error("tls file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The PEM had no certificate or no private key.
    #[error("tls file {path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What is missing or wrong.
        what: &'static str,
    },
    /// rustls refused the pair.
    #[error("tls certificate and key rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsSetupError + '_ {
    move |source| TlsSetupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Generates a self-signed certificate for `hostname` into `dir` unless one is already there.
/// Returns the (cert, key) paths.
pub fn ensure_self_signed(
    dir: &Path,
    hostname: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsSetupError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        // A pair that no longer reads (an older build wrote it without syncing, and the power
        // went) is made again: it is ours, not the operator's.
        if read_certs(&cert).is_ok() && read_key(&key).is_ok() {
            return Ok((cert, key));
        }
        tracing::warn!(cert = %cert.display(), "the self-signed certificate is unreadable; making a new one");
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let names = vec![hostname.to_owned(), "localhost".to_owned()];
    let generated = rcgen::generate_simple_self_signed(names)?;
    let key_pem = generated.key_pair.serialize_pem();
    crate::fsutil::replace_durably(&key, key_pem.as_bytes(), 0o600).map_err(io_err(&key))?;
    let cert_pem = generated.cert.pem();
    crate::fsutil::replace_durably(&cert, cert_pem.as_bytes(), 0o644).map_err(io_err(&cert))?;
    tracing::warn!(cert = %cert.display(), "generated a self-signed certificate; configure [tls] for production");
    Ok((cert, key))
}

/// Builds the rustls server configuration from PEM files (ring provider, TLS 1.2 and 1.3).
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let certs = read_certs(cert_path)?;
    let key = read_key(key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(path))?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem {
            path: path.display().to_string(),
            what: "no certificate found",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(io_err(path))?
        .ok_or_else(|| TlsSetupError::Pem {
            path: path.display().to_string(),
            what: "no private key found",
        })
}

/// Describes an established connection for the session and the Received header.
pub fn tls_info(conn: &rustls::CommonState) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(v) => format!("{v:?}"),
        None => "unknown".to_owned(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_else(|| "unknown".to_owned());
    TlsInfo { version, cipher }
}

/// A certificate verifier that accepts any certificate but still checks the handshake
/// signatures. Outbound SMTP uses opportunistic TLS (RFC 3207 §4.1, RFC 7435): most receivers'
/// certificates are not valid for their MX names, and refusing them would only push mail back to
/// plaintext. It is also what the load tool uses against self-signed test servers.
#[derive(Debug)]
pub struct AcceptAnyCert(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration for outbound STARTTLS (opportunistic, see [`AcceptAnyCert`]).
pub fn outbound_client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        // Invariant: the ring provider supports every default protocol version.
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// The client configuration for outbound STARTTLS under the `verify` policy: the next hop's
/// certificate must chain to a root of the system's trust store (as `rustls-native-certs` finds
/// it; `SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured) or of `ca_file`, and name the host
/// (RFC 6125 as webpki checks it). Returns the configuration and how many roots it trusts.
pub fn outbound_verifying_config(
    ca_file: Option<&Path>,
) -> Result<(Arc<rustls::ClientConfig>, usize), TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "reading the system's trusted certificates");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let (_, rejected) = roots.add_parsable_certificates(read_certs(path)?);
        if rejected > 0 {
            return Err(TlsSetupError::Pem {
                path: path.display().to_string(),
                what: "a certificate could not be used as a trust anchor",
            });
        }
    }
    let count = roots.len();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // Invariant: the ring provider supports every default protocol version.
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((Arc::new(config), count))
}

/// Whether a TLS handshake failed on the peer's certificate (an error from
/// [`crate::net::transport::Transport::connect_tls`]).
pub fn is_certificate_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}
