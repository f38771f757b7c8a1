//! TLS on the executor port: the certificate, its key and the optional client CA, read from PEM
//! files, and read again when they change on disk or on SIGHUP.
//!
//! Fleets renew short-lived certificates (ACME, a site CA, a service mesh) by rewriting the
//! files; a restart for each renewal would interrupt runs. Each connection takes the
//! configuration in force when it was accepted, so a reload changes what new connections get and
//! leaves the ones in flight alone. New files that cannot be used (unreadable, not PEM, a key
//! that does not match the certificate, a file caught half-written) are refused with one log
//! line, and the certificate in use stays until the files change again.
//!
//! rustls speaks TLS 1.2 and 1.3 only; the provider is aws-lc-rs, the one reqwest already
//! builds for the admin client (a second provider would double the crypto code in the binary).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// `executor.tls_*`, as validated by the configuration (kept here so that the configuration
/// module, whose sections are private, and this one both name it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, only clients with a certificate issued by one of these CAs get past the
    /// handshake.
    pub client_ca: Option<PathBuf>,
    /// How often the files are looked at for a change; `None`: only on SIGHUP.
    pub reload_every: Option<Duration>,
}

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        /// Which file (certificate, key, client CA).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not PEM, or holds none of what it should.
    #[error("the {what} {} holds no usable PEM {expected}: {message}", path.display())]
    Pem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The PEM block wanted.
        expected: &'static str,
        /// The parser's message.
        message: String,
    },
    /// rustls refused the material (a key that does not match the certificate, say).
    #[error("TLS refused the {what}: {source}")]
    Rustls {
        /// What was being set up.
        what: &'static str,
        /// rustls's reason.
        source: rustls::Error,
    },
}

/// The crypto provider of every TLS configuration here: the one reqwest's rustls already uses.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every `CERTIFICATE` block of a PEM file (at least one).
fn certs(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        expected: "CERTIFICATE",
        message,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: "key",
        path: path.to_path_buf(),
        expected: "PRIVATE KEY",
        message: e.to_string(),
    })
}

/// The files' bytes, read once per attempt.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(cfg: &ServerTlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read("certificate", &cfg.cert)?,
            key: read("key", &cfg.key)?,
            client_ca: cfg
                .client_ca
                .as_deref()
                .map(|p| read("client CA", p))
                .transpose()?,
        })
    }

    /// A digest of the contents, to tell a change (contents, not mtimes: some device file
    /// systems keep mtimes to the second or two, and a renewal can land within that).
    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (&self.cert, &self.key, &self.client_ca).hash(&mut h);
        h.finish()
    }

    fn server_config(&self, cfg: &ServerTlsConfig) -> Result<ServerConfig, TlsError> {
        let chain = certs("certificate", &cfg.cert, &self.cert)?;
        let key = key(&cfg.key, &self.key)?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|source| TlsError::Rustls {
                what: "protocol versions",
                source,
            })?;
        let builder = match (&self.client_ca, &cfg.client_ca) {
            (Some(pem), Some(path)) => {
                let mut roots = RootCertStore::empty();
                for c in certs("client CA", path, pem)? {
                    roots.add(c).map_err(|source| TlsError::Rustls {
                        what: "client CA",
                        source,
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::Rustls {
                            what: "client CA",
                            source: rustls::Error::General(e.to_string()),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config =
            builder
                .with_single_cert(chain, key)
                .map_err(|source| TlsError::Rustls {
                    what: "certificate and key",
                    source,
                })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// What a reload attempt did.
#[derive(Debug)]
pub enum Reload {
    /// The files are as they were last read: nothing done.
    Unchanged,
    /// New connections get the files' certificate.
    Reloaded,
    /// The files cannot be used; the certificate in use stays.
    Refused(TlsError),
}

/// The TLS configuration in force on the executor port, swapped whole on a reload.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerTlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// The digest of the files last read, used or refused (a refused file is logged once, not
    /// on every look).
    seen: Mutex<u64>,
}

impl ServerTls {
    /// Reads the files.
    ///
    /// # Errors
    /// A file cannot be read or used.
    pub fn load(files: &ServerTlsConfig) -> Result<Arc<Self>, TlsError> {
        let read = Files::read(files)?;
        let config = read.server_config(files)?;
        Ok(Arc::new(Self {
            files: files.clone(),
            current: RwLock::new(Arc::new(config)),
            seen: Mutex::new(read.digest()),
        }))
    }

    /// The acceptor for a new connection: the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        TlsAcceptor::from(config)
    }

    /// Reads the files again and, if they changed (or `force`), puts them in force. Logs what it
    /// did.
    pub fn reload(&self, force: bool) -> Reload {
        let attempt = Files::read(&self.files).and_then(|read| {
            let digest = read.digest();
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *seen == digest {
                return Ok(None);
            }
            *seen = digest;
            drop(seen);
            read.server_config(&self.files).map(Some)
        });
        match attempt {
            Ok(None) => Reload::Unchanged,
            Ok(Some(config)) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                tracing::info!(
                    cert = %self.files.cert.display(),
                    "TLS certificate reloaded: new connections use it, open ones keep theirs."
                );
                Reload::Reloaded
            }
            Err(e) => {
                // An unreadable file has no digest: logged on each look until it is back,
                // which is what an operator needs to see (it was removed or lost its mode).
                tracing::error!(
                    error = %e,
                    "The TLS files on disk are refused; the certificate in use stays until they change."
                );
                Reload::Refused(e)
            }
        }
    }

    /// Reloads on SIGHUP (`hangup`, taken by the caller before the executor says it started),
    /// and when the files change if `files.reload_every` is set, until `stop`.
    pub async fn watch(
        self: Arc<Self>,
        stop: CancellationToken,
        mut hangup: Option<tokio::signal::unix::Signal>,
    ) {
        let mut tick = self.files.reload_every.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let force = tokio::select! {
                () = stop.cancelled() => return,
                () = next_hangup(&mut hangup) => true,
                () = next_tick(&mut tick) => false,
            };
            let this = self.clone();
            // Small files, but on an SD card a read can stall: not on a runtime worker.
            let _ = tokio::task::spawn_blocking(move || this.reload(force)).await;
        }
    }
}

async fn next_hangup(s: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(s) = s {
        if s.recv().await.is_some() {
            return;
        }
    }
    std::future::pending().await
}

async fn next_tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A self-signed certificate for 127.0.0.1 and its key, as PEM.
    pub(crate) fn self_signed() -> (String, String) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        (cert.pem(), signing_key.serialize_pem())
    }

    /// The files of a [`self_signed`] certificate in `dir`, and their configuration.
    pub(crate) fn files_in(dir: &Path) -> ServerTlsConfig {
        let (cert, key) = self_signed();
        let files = ServerTlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
            reload_every: None,
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    fn in_force(t: &ServerTls) -> Arc<ServerConfig> {
        t.current.read().unwrap().clone()
    }

    #[test]
    fn a_reload_takes_new_files_refuses_broken_ones_once_and_keeps_the_old_config() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        let t = ServerTls::load(&files).unwrap();
        let first = in_force(&t);
        assert!(matches!(t.reload(false), Reload::Unchanged));
        assert!(Arc::ptr_eq(&first, &in_force(&t)));
        // SIGHUP reloads even unchanged files.
        assert!(matches!(t.reload(true), Reload::Reloaded));
        let second = in_force(&t);
        assert!(!Arc::ptr_eq(&first, &second));

        // A new certificate without its key: refused, once; the config in force stays.
        let (cert, key) = self_signed();
        std::fs::write(&files.cert, &cert).unwrap();
        let Reload::Refused(e) = t.reload(false) else {
            panic!("a key that does not match was taken")
        };
        assert!(e.to_string().contains("certificate and key"), "{e}");
        assert!(matches!(t.reload(false), Reload::Unchanged));
        assert!(Arc::ptr_eq(&second, &in_force(&t)));
        std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nnope\n").unwrap();
        assert!(matches!(
            t.reload(false),
            Reload::Refused(TlsError::Pem { .. })
        ));
        std::fs::remove_file(&files.key).unwrap();
        assert!(matches!(
            t.reload(false),
            Reload::Refused(TlsError::Read { .. })
        ));
        assert!(Arc::ptr_eq(&second, &in_force(&t)));
        // The key arrives: taken.
        std::fs::write(&files.key, &key).unwrap();
        assert!(matches!(t.reload(false), Reload::Reloaded));
        assert!(!Arc::ptr_eq(&second, &in_force(&t)));
    }

    /// A handshake over an in-memory pipe with a client that speaks only `version`.
    async fn handshake(t: &ServerTls, version: &'static rustls::SupportedProtocolVersion) {
        let mut roots = RootCertStore::empty();
        let cert = std::fs::read(&t.files.cert).unwrap();
        roots
            .add(CertificateDer::from_pem_slice(&cert).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (server, client) = tokio::join!(t.acceptor().accept(a), connector.connect(name, b));
        let (server, client) = (server.unwrap(), client.unwrap());
        assert_eq!(server.get_ref().1.protocol_version(), Some(version.version));
        assert_eq!(client.get_ref().1.alpn_protocol(), None);
    }

    #[tokio::test]
    async fn tls_1_2_and_1_3_are_both_spoken() {
        let dir = tempfile::tempdir().unwrap();
        let t = ServerTls::load(&files_in(dir.path())).unwrap();
        assert_eq!(in_force(&t).alpn_protocols, vec![b"http/1.1".to_vec()]);
        handshake(&t, &rustls::version::TLS12).await;
        handshake(&t, &rustls::version::TLS13).await;
    }

    #[test]
    fn files_that_cannot_be_used_are_named_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = files_in(dir.path());
        std::fs::write(&files.cert, "hello").unwrap();
        let e = ServerTls::load(&files).unwrap_err().to_string();
        assert!(e.contains("cert.pem") && e.contains("CERTIFICATE"), "{e}");
        files.cert = dir.path().join("missing.pem");
        let e = ServerTls::load(&files).unwrap_err().to_string();
        assert!(e.contains("cannot read the certificate"), "{e}");
    }
}
