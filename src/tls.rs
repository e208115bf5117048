//! TLS on the HTTP port (`TLS_CERT`, `TLS_KEY`, `TLS_CLIENT_CA`): the rustls configuration
//! built from PEM files, and reloaded when they change.
//!
//! The connection side (handshake, the split of one TLS connection between a reader and a
//! writer thread) is in the patched tiny_http (`vendor/tiny_http/src/tls.rs`, PATCHES.md item
//! 14). Here: the files. tiny_http asks [`Reloading::server_config`] at each new connection;
//! at most once a second that looks at the files' modification time, size and inode, and a
//! change is loaded. A file that does not load (a half-written renewal, a key that does not
//! match the certificate) keeps the configuration in use, and is logged once per change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::sync::Recover;

/// How often, at most, the files are looked at (at a new connection).
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The files TLS is configured from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, clients must present a certificate signed by one of these CAs (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path()), self.client_ca.as_deref()].into_iter().flatten()
    }
}

/// ring, as the issue asks (aws-lc-rs needs cmake and is harder to cross-build for ARM
/// nodes). rustls 0.23.48 marks ring's provider deprecated because it has no post-quantum key
/// exchange; X25519, P-256 and P-384 are what it offers.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Builds the server configuration from the files; the error names the file and why.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let chain = certs(&files.cert, "TLS_CERT")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("TLS_KEY {}: {e} (a PEM private key: PKCS#8, PKCS#1 or SEC1)", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca, "TLS_CLIENT_CA")? {
                roots.add(c).map_err(|e| format!("TLS_CLIENT_CA {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("TLS_CLIENT_CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("TLS_CERT {} with TLS_KEY {}: {e}", files.cert.display(), files.key.display()))?;
    Ok(Arc::new(config))
}

/// What identifies a version of a file without reading it.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    files
        .paths()
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino())))
        .collect()
}

struct Current {
    config: Arc<ServerConfig>,
    /// The files' stamp when `config` was loaded.
    loaded: Stamp,
    /// The stamp of files that failed to load (not tried again until they change).
    failed: Option<Stamp>,
    checked: Instant,
}

/// The configuration in use, reloaded when the files change (see the module's text).
pub struct Reloading {
    files: TlsFiles,
    current: Mutex<Current>,
}

impl Reloading {
    /// Loads the files; an error (for the start-up, exit 2) names the file and why.
    pub fn new(files: TlsFiles) -> Result<Reloading, String> {
        let loaded = stamp(&files);
        let config = load(&files)?;
        let current = Mutex::new(Current { config, loaded, failed: None, checked: Instant::now() });
        Ok(Reloading { files, current })
    }

    /// Looks at the files now (whatever the time since the last look), and loads them if
    /// they changed. Returns whether a new configuration is in use.
    pub fn check_now(&self) -> bool {
        let mut cur = self.current.lock().recover();
        cur.checked = Instant::now();
        let now = stamp(&self.files);
        if now == cur.loaded || cur.failed.as_ref() == Some(&now) {
            return false;
        }
        match load(&self.files) {
            Ok(config) => {
                log::info!("TLS: certificate files changed; new connections use them ({})", self.files.cert.display());
                *cur = Current { config, loaded: now, failed: None, checked: cur.checked };
                true
            }
            Err(why) => {
                log::warn!("TLS: the changed certificate files do not load, keeping the ones in use: {why}");
                cur.failed = Some(now);
                false
            }
        }
    }
}

impl tiny_http::TlsConfigSource for Reloading {
    fn server_config(&self) -> Arc<ServerConfig> {
        let due = self.current.lock().recover().checked.elapsed() >= RELOAD_CHECK;
        if due {
            self.check_now();
        }
        Arc::clone(&self.current.lock().recover().config)
    }
}
