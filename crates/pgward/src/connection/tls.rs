//! TLS for pgward's own sessions, with libpq's meaning of every `ssl*`
//! setting, on rustls (the project's one TLS stack).
//!
//! libpq's rules, as pgward applies them:
//! - `sslmode` disable / allow / prefer (the default) / require /
//!   verify-ca / verify-full. `prefer` tries TLS first and falls back to a
//!   plain session when the server offers none or the handshake fails;
//!   `allow` tries plain first.
//! - A root certificate file (`sslrootcert`, else `~/.postgresql/root.crt`
//!   when it exists) makes every TLS session verify the server's chain, as
//!   libpq does; verify-ca and verify-full require one; verify-full also
//!   checks the host name. `sslrootcert=system` is the operating system's
//!   trust store and implies verify-full (libpq 16's rule; weaker modes
//!   are refused).
//! - A client certificate (`sslcert`, else `~/.postgresql/postgresql.crt`
//!   when it exists) is sent with its key (`sslkey`, else
//!   `~/.postgresql/postgresql.key`), which must not be readable by group
//!   or others (0640 allowed when root owns it).
//! - `sslcrl` (else `~/.postgresql/root.crl` when it exists) and `sslcrldir`
//!   revoke certificates; `sslsni=0` leaves out the server name;
//!   `ssl_min_protocol_version` (default TLSv1.2) and
//!   `ssl_max_protocol_version` bound the version (rustls speaks 1.2 and 1.3).

use crate::error::{Error, Result};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::config(format!("invalid sslmode value: {other:?}"))
                    .with_hint("use disable, allow, prefer, require, verify-ca or verify-full"));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// What the server's certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Nothing: the session is encrypted, the server unauthenticated.
    None,
    /// Its chain up to a root in the file (verify-ca).
    Chain(PathBuf),
    /// Its chain and its host name (verify-full).
    Full(PathBuf),
}

/// The TLS settings of a connection, resolved with libpq's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub verification: Verification,
    /// `sslrootcert=system`: the file that stands for the OS trust store
    /// (given to pg_dump and pg_restore in its place: libpq 15 does not
    /// know `system`).
    pub system_roots: Option<PathBuf>,
    /// Client certificate and key.
    pub client: Option<(PathBuf, PathBuf)>,
    pub crls: Vec<PathBuf>,
    pub sni: bool,
    pub min_version: TlsVersion,
    pub max_version: Option<TlsVersion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

impl TlsVersion {
    fn parse(key: &str, text: &str) -> Result<TlsVersion> {
        Ok(match text {
            "TLSv1" => TlsVersion::V1_0,
            "TLSv1.1" => TlsVersion::V1_1,
            "TLSv1.2" => TlsVersion::V1_2,
            "TLSv1.3" => TlsVersion::V1_3,
            other => {
                return Err(Error::config(format!("invalid {key} value: {other:?}"))
                    .with_hint("use TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3"));
            }
        })
    }
}

/// The operating system's trust store, as one PEM bundle (Debian's,
/// unless `SSL_CERT_FILE` names another).
pub fn system_roots_file(env: crate::connection::Env) -> PathBuf {
    env("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"))
}

impl TlsSettings {
    /// Resolves the `ssl*` parameters (already merged from conninfo,
    /// config, service file and environment) with libpq's defaults under
    /// `home` (`~/.postgresql/`).
    pub fn resolve(
        params: &BTreeMap<String, String>,
        home: Option<&Path>,
        env: crate::connection::Env,
    ) -> Result<TlsSettings> {
        let dot = |name: &str| home.map(|h| h.join(".postgresql").join(name));
        let existing = |path: Option<PathBuf>| path.filter(|p| p.exists());
        let root_setting = params.get("sslrootcert").map(String::as_str);
        let system = root_setting == Some("system");
        let requiressl = params.get("requiressl").map(String::as_str) == Some("1");
        let mode = match params.get("sslmode") {
            Some(mode) => SslMode::parse(mode)?,
            None if system => SslMode::VerifyFull,
            None if requiressl => SslMode::Require,
            None => SslMode::Prefer,
        };
        if system && mode != SslMode::VerifyFull {
            return Err(Error::config(format!(
                "sslrootcert=system requires sslmode=verify-full, not {}",
                mode.as_str()
            ))
            .with_hint("trusting the system's roots only means something with the host name checked: use sslmode=verify-full (or leave sslmode unset)"));
        }
        let roots = if system {
            Some(system_roots_file(env))
        } else {
            match root_setting {
                Some(file) => Some(PathBuf::from(file)),
                None => existing(dot("root.crt")),
            }
        };
        let verification = match (mode, roots) {
            (SslMode::Disable, _) => Verification::None,
            (SslMode::VerifyFull, Some(file)) => Verification::Full(file),
            (SslMode::VerifyCa, Some(file)) => Verification::Chain(file),
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(Error::config(format!(
                    "sslmode={} needs a root certificate to verify the server with, and none is configured ({} does not exist)",
                    mode.as_str(),
                    dot("root.crt").map_or("~/.postgresql/root.crt".to_string(), |p| p.display().to_string())
                ))
                .with_hint("set sslrootcert to the CA certificate that signed the server's (or sslrootcert=system for the OS trust store), or use sslmode=require to encrypt without verifying"));
            }
            // libpq: a root file that is there is used, whatever the mode.
            (_, Some(file)) if file.exists() => Verification::Chain(file),
            (_, Some(file)) => {
                return Err(Error::config(format!(
                    "root certificate file {} does not exist",
                    file.display()
                ))
                .with_hint("check sslrootcert"));
            }
            (_, None) => Verification::None,
        };
        if let Verification::Chain(file) | Verification::Full(file) = &verification
            && !file.exists()
        {
            return Err(Error::config(format!(
                "root certificate file {} does not exist",
                file.display()
            ))
            .with_hint("check sslrootcert (sslrootcert=system uses SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt)"));
        }
        let cert = match params.get("sslcert") {
            Some(file) => Some(PathBuf::from(file)).filter(|p| p.exists()),
            None => existing(dot("postgresql.crt")),
        };
        let client = match cert {
            Some(cert) => {
                let key = params
                    .get("sslkey")
                    .map(PathBuf::from)
                    .or_else(|| dot("postgresql.key"))
                    .unwrap_or_default();
                if !key.exists() {
                    return Err(Error::config(format!(
                        "client certificate {} is there, but not its private key file {}",
                        cert.display(),
                        key.display()
                    ))
                    .with_hint("set sslkey to the certificate's key file"));
                }
                Some((cert, key))
            }
            None => None,
        };
        let mut crls = Vec::new();
        match params.get("sslcrl") {
            Some(file) => crls.push(PathBuf::from(file)),
            None => crls.extend(existing(dot("root.crl"))),
        }
        if let Some(dir) = params.get("sslcrldir") {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::config(format!("cannot read sslcrldir {dir}: {e}")))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            crls.extend(files);
        }
        let min_version = match params.get("ssl_min_protocol_version") {
            Some(v) => TlsVersion::parse("ssl_min_protocol_version", v)?,
            None => TlsVersion::V1_2,
        };
        let max_version = params
            .get("ssl_max_protocol_version")
            .map(|v| TlsVersion::parse("ssl_max_protocol_version", v))
            .transpose()?;
        if max_version.is_some_and(|max| max < min_version) {
            return Err(Error::config(
                "ssl_max_protocol_version is lower than ssl_min_protocol_version",
            ));
        }
        if max_version.is_some_and(|max| max < TlsVersion::V1_2) {
            return Err(Error::config(
                "ssl_max_protocol_version below TLSv1.2: pgward speaks TLS 1.2 and 1.3 only",
            )
            .with_hint("TLS 1.0 and 1.1 are broken; enable TLS 1.2 on the server"));
        }
        Ok(TlsSettings {
            mode,
            verification,
            system_roots: system.then(|| system_roots_file(env)),
            client,
            crls,
            sni: params.get("sslsni").map(String::as_str) != Some("0"),
            min_version,
            max_version,
        })
    }

    /// The rustls configuration for these settings. Files are read here,
    /// so a missing or unreadable one is named before any connection.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
            (TlsVersion::V1_2, &rustls::version::TLS12),
            (TlsVersion::V1_3, &rustls::version::TLS13),
        ]
        .into_iter()
        .filter(|(v, _)| {
            *v >= self.min_version.max(TlsVersion::V1_2)
                && self.max_version.is_none_or(|max| *v <= max)
        })
        .map(|(_, v)| v)
        .collect();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| Error::config(format!("cannot set up TLS: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = match &self.verification {
            Verification::None => Arc::new(Unverified(provider.clone())),
            Verification::Chain(roots) => Arc::new(ChainOnly(self.webpki(roots, &provider)?)),
            Verification::Full(roots) => self.webpki(roots, &provider)?,
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certificates(cert, "sslcert")?;
                check_key_permissions(key)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    Error::config(format!(
                        "cannot read the client key {}: {e}",
                        key.display()
                    ))
                    .with_hint("sslkey must be an unencrypted PEM private key (pgward does not take sslpassword: it would have to reach pg_dump's command line)")
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    Error::config(format!(
                        "the client certificate and key do not go together: {e}"
                    ))
                    .with_hint("check sslcert and sslkey")
                })?
            }
        };
        config.enable_sni = self.sni;
        Ok(config)
    }

    fn webpki(
        &self,
        roots: &Path,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<WebPkiServerVerifier>> {
        let mut store = rustls::RootCertStore::empty();
        for cert in read_certificates(roots, "sslrootcert")? {
            store.add(cert).map_err(|e| {
                Error::config(format!(
                    "root certificate file {} holds a certificate rustls cannot use: {e}",
                    roots.display()
                ))
            })?;
        }
        let mut crls = Vec::new();
        for file in &self.crls {
            let found: Vec<CertificateRevocationListDer<'static>> =
                CertificateRevocationListDer::pem_file_iter(file)
                    .and_then(|i| i.collect())
                    .map_err(|e| {
                        Error::config(format!("cannot read CRL file {}: {e}", file.display()))
                            .with_hint("sslcrl and the files in sslcrldir must be PEM CRLs")
                    })?;
            crls.extend(found);
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
            .with_crls(crls)
            .build()
            .map_err(|e| Error::config(format!("cannot set up certificate verification: {e}")))
    }
}

fn read_certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect())
        .map_err(|e| {
            Error::config(format!("cannot read {setting} {}: {e}", path.display()))
                .with_hint(format!("{setting} must be a PEM certificate file"))
        })?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "{setting} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// libpq's rule for the client key: no access for group or others, except
/// group read when root owns it (a key shared through a group).
fn check_key_permissions(key: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key)
        .map_err(|e| Error::config(format!("cannot read the client key {}: {e}", key.display())))?;
    let mode = meta.mode() & 0o777;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if mode & !allowed != 0 {
        return Err(Error::config(format!(
            "private key file {} has group or world access (mode {mode:04o})",
            key.display()
        ))
        .with_hint(format!(
            "chmod {} {} (libpq refuses it too)",
            if meta.uid() == 0 { "640" } else { "600" },
            key.display()
        )));
    }
    Ok(())
}

/// Accepts any server certificate but still checks the handshake's
/// signatures: encryption without authentication (require, prefer).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// verify-ca: the chain (and revocation) is verified, the host name is
/// not. webpki checks the name last, so a name error means the chain
/// passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error as TlsError};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What a failed TLS connection attempt means, from the error chain's
/// text: the cause in words and the fix. `None` when it is no TLS matter.
pub fn explain_failure(
    chain: &str,
    host: &str,
    settings: &TlsSettings,
) -> Option<(String, String)> {
    let roots = match &settings.verification {
        Verification::Chain(file) | Verification::Full(file) => file.display().to_string(),
        Verification::None => "none".to_string(),
    };
    let has = |needle: &str| chain.contains(needle);
    if has("server does not support TLS") {
        return Some((
            format!("the server does not offer TLS, and sslmode={} requires it", settings.mode.as_str()),
            "turn ssl on in the server's postgresql.conf, or use sslmode=prefer on a network you trust".into(),
        ));
    }
    if has("NotValidForName") || has("not valid for name") {
        return Some((
            format!("the server's certificate is not valid for the host name {host:?} (sslmode=verify-full)"),
            "connect by a name the certificate carries (its subjectAltName), or use sslmode=verify-ca to check the chain only".into(),
        ));
    }
    if has("UnknownIssuer") || has("BadSignature") {
        return Some((
            format!("the server's certificate is not signed by a CA in sslrootcert ({roots})"),
            "set sslrootcert to the CA certificate that signed the server's certificate".into(),
        ));
    }
    if has("Revoked") {
        return Some((
            "the server's certificate is revoked by the configured CRL".into(),
            "renew the server certificate, or check sslcrl / sslcrldir".into(),
        ));
    }
    if has("UnknownRevocationStatus") {
        return Some((
            "the CRLs configured (sslcrl / sslcrldir) hold none for the server certificate's issuer".into(),
            "add the issuing CA's CRL, or remove sslcrl".into(),
        ));
    }
    if has("Expired") || has("expired") || has("NotValidYet") || has("not valid yet") {
        return Some((
            "the server's certificate is expired or not valid yet".into(),
            "renew the server certificate (and check this host's clock)".into(),
        ));
    }
    if has("CertificateRequired")
        || has("certificate required")
        || has("requires a valid client certificate")
    {
        return Some((
            "the server requires a client certificate and none was sent".into(),
            "set sslcert and sslkey (or put them at ~/.postgresql/postgresql.crt and .key)".into(),
        ));
    }
    if has("certificate authentication failed") || has("BadCertificate") || has("UnknownCA") {
        return Some((
            "the server refused the client certificate".into(),
            "check sslcert/sslkey: the certificate must be signed by the server's ssl_ca_file and its CN must be the user (or mapped in pg_ident.conf)".into(),
        ));
    }
    if has("no encryption") && has("pg_hba.conf") {
        return Some((
            "the server accepts only TLS sessions (hostssl) and this one was not encrypted".into(),
            "use sslmode=require, or verify-full with sslrootcert (the default sslmode=prefer does try TLS: check that nothing sets sslmode=disable)".into(),
        ));
    }
    None
}
