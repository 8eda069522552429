//! `--web.config.file`: TLS and basic auth for the HTTP server, read from the
//! same YAML format as the Prometheus exporter-toolkit, so one file can serve
//! node_exporter and this exporter alike. Paths in it are relative to the file.
//!
//! Supported: `tls_server_config` with `cert_file`, `key_file`,
//! `client_ca_file`, `client_auth_type` (`NoClientCert`,
//! `VerifyClientCertIfGiven`, `RequireAndVerifyClientCert`), `min_version`
//! and `max_version`; `basic_auth_users` with bcrypt hashes. Other
//! exporter-toolkit settings are refused by name rather than ignored.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Verified user and password pairs remembered, so a scrape every few
/// seconds does not pay for bcrypt each time.
const AUTH_CACHE_SIZE: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    #[serde(default)]
    tls_server_config: Option<RawTlsConfig>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsConfig {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
}

/// Why the web configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("--web.config.file: {path}: {reason}")]
pub struct WebConfigError {
    pub path: PathBuf,
    pub reason: String,
}

/// TLS and basic auth as configured; `Debug` shows neither keys nor hashes.
pub struct WebSecurity {
    tls: Option<TlsAcceptor>,
    /// `client_auth_type: RequireAndVerifyClientCert`: no client certificate, no connection.
    requires_client_cert: bool,
    /// User name to bcrypt hash.
    users: BTreeMap<String, String>,
    /// Checked for unknown users, at the cost of the real hashes, so timing
    /// does not tell which user names exist.
    unknown_user_hash: String,
    verified: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for WebSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSecurity")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebSecurity {
    /// Reads and checks the file: certificates and keys load, hashes are bcrypt.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let error = |reason: String| WebConfigError {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|err| error(err.to_string()))?;
        let raw: RawWebConfig = if text.trim().is_empty() {
            RawWebConfig {
                tls_server_config: None,
                basic_auth_users: BTreeMap::new(),
            }
        } else {
            serde_yaml_ng::from_str(&text).map_err(|err| error(err.to_string()))?
        };
        for (user, hash) in &raw.basic_auth_users {
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(error(format!(
                    "the password of {user:?} is not a bcrypt hash"
                )));
            }
        }
        let requires_client_cert = raw.tls_server_config.as_ref().is_some_and(|tls| {
            tls.client_auth_type.as_deref() == Some("RequireAndVerifyClientCert")
        });
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let tls = raw
            .tls_server_config
            .map(|tls| tls_acceptor(&tls, base))
            .transpose()
            .map_err(error)?;
        let cost = raw
            .basic_auth_users
            .values()
            .filter_map(|hash| hash.parse::<bcrypt::HashParts>().ok())
            .map(|parts| parts.get_cost())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let unknown_user_hash = if raw.basic_auth_users.is_empty() {
            String::new()
        } else {
            bcrypt::hash("no such user", cost).map_err(|err| error(err.to_string()))?
        };
        Ok(Self {
            tls,
            requires_client_cert,
            users: raw.basic_auth_users,
            unknown_user_hash,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The TLS acceptor, when the server must speak HTTPS.
    pub fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    /// Whether every connection must present a client certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.requires_client_cert
    }

    pub fn requires_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks an `Authorization` header against the users. bcrypt is slow by
    /// design, so call this off the async threads (`spawn_blocking`).
    pub fn authorize(&self, header: Option<&str>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = header.and_then(parse_basic) else {
            return false;
        };
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .is_some_and(|known| same_bytes(known.as_bytes(), password.as_bytes()));
        if cached {
            return true;
        }
        let hash = self
            .users
            .get(&user)
            .map_or(self.unknown_user_hash.as_str(), String::as_str);
        let valid =
            bcrypt::verify(&password, hash).unwrap_or(false) && self.users.contains_key(&user);
        if valid {
            let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if verified.len() >= AUTH_CACHE_SIZE {
                verified.clear();
            }
            verified.insert(user, password);
        }
        valid
    }
}

/// Compares without stopping at the first difference, so the time taken does
/// not tell how much of a guess was right.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// `Basic base64(user:password)` to its parts.
fn parse_basic(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn tls_acceptor(raw: &RawTlsConfig, base: &Path) -> Result<TlsAcceptor, String> {
    let resolve = |path: &Path| base.join(path);
    let cert_path = resolve(&raw.cert_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect())
        .map_err(|err| format!("cert_file {}: {err}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "cert_file {}: no certificate in it",
            cert_path.display()
        ));
    }
    let key_path = resolve(&raw.key_file);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|err| format!("key_file {}: {err}", key_path.display()))?;

    let versions = protocol_versions(raw.min_version.as_deref(), raw.max_version.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|err| format!("min_version/max_version: {err}"))?;

    let auth_type = raw.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match (auth_type, &raw.client_ca_file) {
        ("NoClientCert", _) => builder.with_no_client_auth(),
        ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven", Some(ca_file)) => {
            let ca_path = resolve(ca_file);
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&ca_path)
                .map_err(|err| format!("client_ca_file {}: {err}", ca_path.display()))?
            {
                let cert =
                    cert.map_err(|err| format!("client_ca_file {}: {err}", ca_path.display()))?;
                roots
                    .add(cert)
                    .map_err(|err| format!("client_ca_file {}: {err}", ca_path.display()))?;
            }
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            if auth_type == "VerifyClientCertIfGiven" {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|err| format!("client_ca_file {}: {err}", ca_path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven", None) => {
            return Err(format!("client_auth_type {auth_type} needs client_ca_file"))
        }
        (other, _) => {
            return Err(format!(
                "client_auth_type {other:?} is not supported (use NoClientCert, \
                 VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
            ))
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| format!("cert_file and key_file: {err}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn protocol_versions(
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let rank = |name: &str| match name {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(format!("{name} is not supported; TLS12 is the oldest")),
        _ => Err(format!("{name:?} is not a TLS version (TLS12 or TLS13)")),
    };
    let min = min.map(rank).transpose()?.unwrap_or(12);
    let max = max.map(rank).transpose()?.unwrap_or(13);
    let versions: Vec<_> = [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(rank, _)| (min..=max).contains(rank))
        .map(|(_, version)| version)
        .collect();
    if versions.is_empty() {
        return Err("min_version is above max_version".to_owned());
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn basic_auth_checks_bcrypt_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let path = write(
            dir.path(),
            "web.yml",
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
        );
        let security = WebSecurity::load(&path).unwrap();
        let header = |user: &str, password: &str| {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {encoded}")
        };
        assert!(security.authorize(Some(&header("alice", "s3cret"))));
        assert!(security.authorize(Some(&header("alice", "s3cret"))));
        assert!(!security.authorize(Some(&header("alice", "wrong"))));
        assert!(!security.authorize(Some(&header("bob", "s3cret"))));
        assert!(!security.authorize(None));
        assert!(!security.authorize(Some("Bearer abc")));
        assert!(!format!("{security:?}").contains(&hash));
    }

    #[test]
    fn mistakes_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "basic_auth_users:\n  alice: plaintext\n",
                "not a bcrypt hash",
            ),
            (
                "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
                "missing.crt",
            ),
            (
                "http_server_config:\n  http2: false\n",
                "http_server_config",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: []\n",
                "cipher_suites",
            ),
        ];
        for (text, reason) in cases {
            let path = write(dir.path(), "web.yml", text);
            let err = WebSecurity::load(&path).unwrap_err().to_string();
            assert!(err.starts_with("--web.config.file: "), "{err}");
            assert!(err.contains(reason), "{text:?}: {err}");
        }
    }

    #[test]
    fn tls_versions() {
        assert_eq!(protocol_versions(None, None).unwrap().len(), 2);
        assert_eq!(protocol_versions(Some("TLS13"), None).unwrap().len(), 1);
        assert!(protocol_versions(Some("TLS10"), None).is_err());
        assert!(protocol_versions(Some("TLS13"), Some("TLS12")).is_err());
    }
}
