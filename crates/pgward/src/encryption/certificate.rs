//! Recipient certificates: loading, pinning and the validity rules that
//! decide whether a backup may be encrypted to them.
//!
//! rPGP parses and verifies signatures but leaves policy to the caller, so
//! the policy lives here, in the shape GnuPG applies it: a component is as
//! valid as its newest self-signature that verifies; a verified revocation
//! wins; expiry counts from the key's creation. Signatures that do not
//! verify (third-party certifications, damage) are ignored, never trusted.

use super::{Fingerprint, short};
use crate::error::{Error, Result};
use pgp::composed::{Deserializable, SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{Signature, SignatureType};
use pgp::ser::Serialize as _;
use pgp::types::{KeyDetails, KeyVersion, PublicParams, Tag};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A parsed certificate (an OpenPGP public key with its signatures).
#[derive(Debug, Clone)]
pub struct Certificate {
    pub path: PathBuf,
    pub key: SignedPublicKey,
}

/// What `pgward key show` and `pgward check` say about a certificate.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CertificateInfo {
    pub file: String,
    pub fingerprint: Fingerprint,
    pub algorithm: String,
    pub created: String,
    /// RFC 3339; absent when the certificate never expires.
    pub expires: Option<String>,
    pub revoked: bool,
    pub user_ids: Vec<String>,
    pub subkeys: Vec<SubkeyInfo>,
    /// The key a backup would be encrypted to, if any is usable now.
    pub encryption_key: Option<Fingerprint>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SubkeyInfo {
    pub fingerprint: Fingerprint,
    pub algorithm: String,
    pub created: String,
    pub expires: Option<String>,
    pub revoked: bool,
    /// Flagged for encryption by a valid binding and of an algorithm that
    /// can encrypt (whether or not it is expired or revoked).
    pub encryption_capable: bool,
}

/// A recipient that passed every rule: the backup is encrypted to
/// `encryption_key` of `certificate`.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub certificate: Certificate,
    pub fingerprint: Fingerprint,
    pub encryption_key: Fingerprint,
    pub expires: Option<jiff::Timestamp>,
}

impl Certificate {
    /// Reads one certificate, armored or binary.
    pub fn load(path: &Path) -> Result<Certificate> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::config(format!(
                "cannot read recipient certificate {}: {e}",
                path.display()
            ))
            .with_hint("check encryption.recipient.certificate")
        })?;
        let (key, _) = SignedPublicKey::from_reader_single(&bytes[..]).map_err(|e| {
            let secret = String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
                .contains("PRIVATE KEY BLOCK");
            let error = Error::config(format!(
                "{} is not an OpenPGP certificate: {e}",
                path.display()
            ));
            if secret {
                error.with_hint("this is a secret key: give the public certificate (gpg --export --armor FPR); the secret key must not live on the backup host")
            } else {
                error.with_hint("export it with `gpg --export --armor FINGERPRINT > FILE`")
            }
        })?;
        Ok(Certificate {
            path: path.to_path_buf(),
            key,
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.key.primary_key)
    }

    fn name(&self) -> String {
        let file = self
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string());
        format!("{file} ({})", short(&self.fingerprint()))
    }

    /// Applies the recipient rules at time `now`: pinned fingerprint, not
    /// revoked, not expired, an encryption-capable key that is valid now.
    pub fn as_recipient(&self, pin: &Fingerprint, now: jiff::Timestamp) -> Result<Recipient> {
        let fingerprint = self.fingerprint();
        if &fingerprint != pin {
            return Err(Error::config(format!(
                "recipient certificate {} has fingerprint {} but the configuration pins {}",
                self.path.display(),
                short(&fingerprint),
                short(pin),
            ))
            .with_hint("the certificate file is not the key you pinned: confirm the fingerprint with the key's owner before changing either"));
        }
        let usable = self.usable_encryption_key(now)?;
        Ok(Recipient {
            certificate: self.clone(),
            fingerprint,
            encryption_key: usable.fingerprint,
            expires: usable.expires,
        })
    }

    /// The rules themselves, shared by `backup` and `key show` so the two
    /// can never disagree: the subkey a message would be encrypted to now,
    /// or why there is none.
    fn usable_encryption_key(&self, now: jiff::Timestamp) -> Result<UsableKey> {
        let primary = self.primary_state(now);
        if let Some(reason) = primary.revoked {
            return Err(Error::config(format!(
                "recipient certificate {} is revoked{reason}",
                self.name()
            ))
            .with_hint("configure the key that replaced it"));
        }
        if primary.self_signature.is_none() {
            return Err(Error::config(format!(
                "recipient certificate {} has no valid self-signature",
                self.name()
            ))
            .with_hint("export the certificate again with `gpg --export --armor FINGERPRINT`"));
        }
        if let Some(expired) = primary.expires.filter(|at| *at <= now) {
            return Err(Error::config(format!(
                "recipient certificate {} expired on {}",
                self.name(),
                crate::clock::rfc3339(expired)
            ))
            .with_hint("extend it (gpg --quick-set-expire FPR 1y '*'), export it again, or configure a new key"));
        }
        let subkeys = self.subkey_states(now);
        let valid = |s: &&SubkeyState| {
            s.encryption_capable && s.revoked.is_none() && s.expires.is_none_or(|at| at > now)
        };
        let usable = subkeys
            .iter()
            .filter(valid)
            .filter(|s| s.gnupg_2_2_can_decrypt)
            .max_by_key(|s| s.created);
        let Some(subkey) = usable else {
            let why = if subkeys.iter().any(|s| valid(&s)) {
                "its encryption keys use RFC 9580 (v6) algorithms that GnuPG 2.2 cannot decrypt"
            } else if subkeys.iter().any(|s| s.encryption_capable) {
                "its encryption subkeys are expired or revoked"
            } else {
                "it has no encryption subkey (signing only)"
            };
            return Err(Error::config(format!(
                "recipient certificate {} has no usable encryption key: {why}",
                self.name()
            ))
            .with_hint("add an encryption subkey (gpg --quick-add-key FPR cv25519 encr) and export the certificate again"));
        };
        // The certificate expires when its primary or the chosen subkey does.
        let expires = match (primary.expires, subkey.expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(UsableKey {
            fingerprint: subkey.fingerprint.clone(),
            expires,
        })
    }

    /// The encryption subkey chosen by [`Certificate::as_recipient`].
    pub fn subkey(&self, fingerprint: &Fingerprint) -> Option<&SignedPublicSubKey> {
        self.key
            .public_subkeys
            .iter()
            .find(|s| &Fingerprint::of(&s.key) == fingerprint)
    }

    /// Everything `key show` prints, evaluated at `now`.
    pub fn info(&self, now: jiff::Timestamp) -> CertificateInfo {
        let primary = self.primary_state(now);
        let subkeys = self.subkey_states(now);
        let encryption_key = self.usable_encryption_key(now).ok().map(|k| k.fingerprint);
        CertificateInfo {
            file: self.path.display().to_string(),
            fingerprint: self.fingerprint(),
            algorithm: algorithm_name(self.key.primary_key.public_params()),
            created: crate::clock::rfc3339(timestamp(self.key.primary_key.created_at().as_secs())),
            expires: primary.expires.map(crate::clock::rfc3339),
            revoked: primary.revoked.is_some(),
            user_ids: self
                .key
                .details
                .users
                .iter()
                .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
                .collect(),
            subkeys: subkeys
                .into_iter()
                .map(|s| SubkeyInfo {
                    fingerprint: s.fingerprint,
                    algorithm: s.algorithm,
                    created: crate::clock::rfc3339(s.created),
                    expires: s.expires.map(crate::clock::rfc3339),
                    revoked: s.revoked.is_some(),
                    encryption_capable: s.encryption_capable,
                })
                .collect(),
            encryption_key,
        }
    }

    /// The primary key's state at `now`. Its governing self-signature is
    /// the newest one that verifies and is not dated in the future, among
    /// direct-key signatures and the certifications of user ids that are
    /// not revoked (a user id's newest verified signature decides, so a
    /// later certification revocation retires it). Revocations of the
    /// key itself win outright.
    fn primary_state(&self, now: jiff::Timestamp) -> PrimaryState<'_> {
        let primary = &self.key.primary_key;
        let not_future = |sig: &&Signature| signed_at(sig) <= now.as_second();
        let revoked = self
            .key
            .details
            .revocation_signatures
            .iter()
            .filter(not_future)
            .find(|sig| {
                sig.typ() == Some(SignatureType::KeyRevocation) && sig.verify_key(primary).is_ok()
            })
            .map(revocation_reason);
        let user_ids = self.key.details.users.iter().filter_map(|user| {
            let newest = user
                .signatures
                .iter()
                .filter(not_future)
                .filter(|sig| {
                    matches!(
                        sig.typ(),
                        Some(
                            SignatureType::CertGeneric
                                | SignatureType::CertPersona
                                | SignatureType::CertCasual
                                | SignatureType::CertPositive
                                | SignatureType::CertRevocation
                        )
                    ) && sig
                        .verify_certification(primary, Tag::UserId, &user.id)
                        .is_ok()
                })
                .max_by_key(|sig| signed_at(sig))?;
            (newest.typ() != Some(SignatureType::CertRevocation)).then_some(newest)
        });
        let direct = self
            .key
            .details
            .direct_signatures
            .iter()
            .filter(not_future)
            .filter(|sig| sig.typ() == Some(SignatureType::Key) && sig.verify_key(primary).is_ok());
        let self_signature = user_ids.chain(direct).max_by_key(|sig| signed_at(sig));
        let expires = expiry(primary.created_at().as_secs(), self_signature);
        PrimaryState {
            self_signature,
            revoked,
            expires,
        }
    }

    fn subkey_states(&self, now: jiff::Timestamp) -> Vec<SubkeyState> {
        let primary = &self.key.primary_key;
        self.key
            .public_subkeys
            .iter()
            .map(|subkey| {
                let verified = |typ: SignatureType| {
                    subkey.signatures.iter().filter(move |sig| {
                        sig.typ() == Some(typ)
                            && signed_at(sig) <= now.as_second()
                            && sig.verify_subkey_binding(primary, &subkey.key).is_ok()
                    })
                };
                let binding = verified(SignatureType::SubkeyBinding).max_by_key(|s| signed_at(s));
                let revoked = verified(SignatureType::SubkeyRevocation)
                    .next()
                    .map(revocation_reason);
                let created = subkey.key.created_at().as_secs();
                let flags = binding.map(|b| b.key_flags());
                let encryption_capable = binding.is_some()
                    && subkey.key.algorithm().can_encrypt()
                    && flags.is_some_and(|f| f.encrypt_comms() || f.encrypt_storage());
                let expires = expiry(created, binding);
                // GnuPG 2.2 decrypts to v4 keys with the classic algorithms
                // (RSA, ECDH, ElGamal), not to X25519/X448 or post-quantum.
                let gnupg_2_2_can_decrypt = subkey.key.version() == KeyVersion::V4
                    && matches!(
                        subkey.key.public_params(),
                        PublicParams::RSA(_) | PublicParams::ECDH(_) | PublicParams::Elgamal(_)
                    );
                SubkeyState {
                    gnupg_2_2_can_decrypt,
                    fingerprint: Fingerprint::of(&subkey.key),
                    algorithm: algorithm_name(subkey.key.public_params()),
                    created: timestamp(created),
                    expires,
                    revoked,
                    encryption_capable,
                }
            })
            .collect()
    }
}

struct PrimaryState<'a> {
    self_signature: Option<&'a Signature>,
    /// The revocation's reason, formatted as ": REASON", or "".
    revoked: Option<String>,
    expires: Option<jiff::Timestamp>,
}

struct UsableKey {
    fingerprint: Fingerprint,
    expires: Option<jiff::Timestamp>,
}

struct SubkeyState {
    gnupg_2_2_can_decrypt: bool,
    fingerprint: Fingerprint,
    algorithm: String,
    created: jiff::Timestamp,
    expires: Option<jiff::Timestamp>,
    revoked: Option<String>,
    encryption_capable: bool,
}

fn signed_at(sig: &Signature) -> i64 {
    sig.created().map(|t| i64::from(t.as_secs())).unwrap_or(0)
}

/// When a key created at `created` expires, per its governing
/// self-signature (zero or absent means never).
fn expiry(created: u32, self_signature: Option<&Signature>) -> Option<jiff::Timestamp> {
    let seconds = self_signature?.key_expiration_time()?.as_secs();
    if seconds == 0 {
        return None;
    }
    let lifetime = jiff::SignedDuration::from_secs(i64::from(seconds));
    Some(
        timestamp(created)
            .saturating_add(lifetime)
            .unwrap_or(jiff::Timestamp::MAX),
    )
}

fn timestamp(secs: u32) -> jiff::Timestamp {
    jiff::Timestamp::from_second(i64::from(secs)).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn revocation_reason(sig: &Signature) -> String {
    match sig.revocation_reason_string() {
        Some(text) if !text.is_empty() => format!(" ({})", String::from_utf8_lossy(text)),
        _ => match sig.revocation_reason_code() {
            Some(code) => format!(" ({code:?})"),
            None => String::new(),
        },
    }
}

/// A short, gpg-like name for a key's algorithm: "ed25519", "cv25519",
/// "rsa3072".
pub fn algorithm_name(params: &PublicParams) -> String {
    use pgp::types::EcdhPublicParams as Ecdh;
    match params {
        PublicParams::RSA(_) => {
            // The serialised parameters start with n as an MPI, whose first
            // two bytes are its length in bits.
            let bytes = params.to_bytes().unwrap_or_default();
            match bytes.get(..2) {
                Some(bits) => format!("rsa{}", u16::from_be_bytes([bits[0], bits[1]])),
                None => "rsa".to_string(),
            }
        }
        PublicParams::ECDH(Ecdh::Curve25519Legacy { .. }) => "cv25519".to_string(),
        PublicParams::ECDH(Ecdh::P256 { .. }) => "nistp256 (ecdh)".to_string(),
        PublicParams::ECDH(Ecdh::P384 { .. }) => "nistp384 (ecdh)".to_string(),
        PublicParams::ECDH(Ecdh::P521 { .. }) => "nistp521 (ecdh)".to_string(),
        PublicParams::EdDSALegacy(_) => "ed25519".to_string(),
        PublicParams::Ed25519(_) => "ed25519 (v6)".to_string(),
        PublicParams::X25519(_) => "x25519".to_string(),
        PublicParams::X448(_) => "x448".to_string(),
        PublicParams::Ed448(_) => "ed448".to_string(),
        PublicParams::DSA(_) => "dsa".to_string(),
        PublicParams::Elgamal(_) => "elgamal".to_string(),
        PublicParams::ECDSA(_) => "ecdsa".to_string(),
        other => format!("{other:?}")
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or("unknown")
            .to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::keygen;

    #[test]
    fn a_generated_certificate_is_a_usable_recipient_with_no_expiry() {
        let key = keygen::generate("test <t@example.invalid>", None).unwrap();
        let certificate = Certificate {
            path: "test.pub.asc".into(),
            key: key.public,
        };
        let now = crate::clock::now();
        let recipient = certificate.as_recipient(&key.fingerprint, now).unwrap();
        assert_eq!(recipient.encryption_key, key.encryption_key);
        assert_eq!(recipient.expires, None);
        let info = certificate.info(now);
        assert_eq!(info.encryption_key, Some(key.encryption_key));
        assert_eq!(info.algorithm, "ed25519");
        assert_eq!(info.subkeys[0].algorithm, "cv25519");
        // Before the key existed its self-signatures do not count yet.
        let before = jiff::Timestamp::from_second(1_000_000_000).unwrap();
        assert!(certificate.as_recipient(&key.fingerprint, before).is_err());
    }
}
