//! OpenPGP encryption of artifacts: who a backup is encrypted to
//! ([`certificate`]), the keys pgward makes ([`keygen`]) and how pgward
//! decrypts where it reads artifacts ([`secret`]). The streaming stages
//! themselves are in `pipeline::encrypt` and `pipeline::decrypt`.
//!
//! Messages are SEIPDv1 (integrity-protected with an MDC) with AES-256:
//! GnuPG 2.2, which operators still run, cannot read SEIPDv2, and every
//! OpenPGP implementation reads v1. The artifact is the bare binary
//! message, so `gpg --decrypt FILE | zstd -d` gives back the archive.

pub mod certificate;
pub mod keygen;
pub mod secret;

use crate::config::EncryptionConfig;
use crate::error::{Error, Result};
use crate::repository::manifest::{EncryptionRecord, Manifest, RecipientRecord};
use certificate::{Certificate, Recipient};
use pgp::types::KeyDetails;
use serde::{Deserialize, Serialize};

/// The scheme name recorded in manifests and envelopes.
pub const SCHEME: &str = "openpgp-seipdv1-aes256";

/// An OpenPGP fingerprint as uppercase hex without spaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn of(key: &impl KeyDetails) -> Fingerprint {
        Fingerprint(format!("{:X}", key.fingerprint()))
    }

    /// Reads a pinned fingerprint as people write them: any case, spaces
    /// between groups, an optional `0x`. Key ids (16 hex digits) are not
    /// fingerprints and are refused.
    pub fn parse(text: &str) -> std::result::Result<Fingerprint, String> {
        let compact: String = text.split_whitespace().collect();
        let hex = compact
            .strip_prefix("0x")
            .or_else(|| compact.strip_prefix("0X"))
            .unwrap_or(&compact);
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{text:?} is not a hexadecimal fingerprint"));
        }
        match hex.len() {
            40 | 64 => Ok(Fingerprint(hex.to_ascii_uppercase())),
            16 | 8 => Err(format!(
                "{text:?} is a key id, not a fingerprint: pin the full 40-digit fingerprint (gpg --fingerprint)"
            )),
            n => Err(format!(
                "{text:?} has {n} hex digits; an OpenPGP fingerprint has 40 (v4) or 64 (v6)"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The last 8 hex digits, as people-facing output shows fingerprints.
pub fn short(fingerprint: &Fingerprint) -> String {
    let text = fingerprint.as_str();
    format!("…{}", &text[text.len().saturating_sub(8)..])
}

/// The recipients a backup will be encrypted to, every one checked.
#[derive(Debug, Clone)]
pub struct EncryptionPlan {
    pub recipients: Vec<Recipient>,
}

impl EncryptionPlan {
    /// The subkeys the session key is encrypted to, one per recipient.
    pub fn encryption_keys(&self) -> Vec<pgp::packet::PublicSubkey> {
        self.recipients
            .iter()
            .map(|r| {
                r.certificate
                    .subkey(&r.encryption_key)
                    .expect("a recipient's encryption key is one of its subkeys")
                    .key
                    .clone()
            })
            .collect()
    }

    /// What the manifest records about the encryption.
    pub fn record(&self) -> EncryptionRecord {
        EncryptionRecord {
            scheme: SCHEME.to_string(),
            recipients: self
                .recipients
                .iter()
                .map(|r| RecipientRecord {
                    fingerprint: r.fingerprint.clone(),
                    encryption_key: r.encryption_key.clone(),
                    certificate: r.certificate.path.display().to_string(),
                })
                .collect(),
        }
    }
}

/// Whether backups must be encrypted: as configured, otherwise as soon as
/// a recipient is configured.
pub fn required(config: &EncryptionConfig) -> bool {
    config.required.unwrap_or(!config.recipients.is_empty())
}

/// Refuses to drop encryption by accident: when the previous backup of
/// the same database and scope was encrypted and no recipient is
/// configured now, only an explicit `encryption.required = false` allows
/// an unencrypted backup. (A recipients section lost in a config edit
/// must not turn into plaintext backups leaving the host.)
pub fn require_continuity(
    config: &EncryptionConfig,
    plan: Option<&EncryptionPlan>,
    previous: Option<&Manifest>,
) -> Result<()> {
    let Some(previous) = previous else {
        return Ok(());
    };
    if plan.is_some() || config.required.is_some() || previous.artifact.encryption.is_none() {
        return Ok(());
    }
    Err(Error::config(format!(
        "the previous backup {} was encrypted but no recipient certificate is configured now",
        previous.id
    ))
    .with_hint("restore the [[encryption.recipient]] settings, or set encryption.required = false to write unencrypted backups on purpose"))
}

/// Loads and checks every configured recipient at time `now`. `None` means
/// backups are written unencrypted, which is only allowed when encryption
/// is not required.
pub fn plan(config: &EncryptionConfig, now: jiff::Timestamp) -> Result<Option<EncryptionPlan>> {
    if config.recipients.is_empty() {
        if required(config) {
            return Err(Error::config(
                "encryption required but no recipient certificate configured",
            )
            .with_hint("add an [[encryption.recipient]] with certificate and fingerprint (see `pgward key generate`), or set encryption.required = false to write unencrypted backups"));
        }
        return Ok(None);
    }
    let mut recipients: Vec<Recipient> = Vec::new();
    for configured in &config.recipients {
        let pin = configured.pin()?;
        let recipient = Certificate::load(&configured.certificate)?.as_recipient(&pin, now)?;
        if recipients
            .iter()
            .any(|r| r.fingerprint == recipient.fingerprint)
        {
            return Err(Error::config(format!(
                "recipient {} is configured twice",
                short(&recipient.fingerprint)
            )));
        }
        recipients.push(recipient);
    }
    Ok(Some(EncryptionPlan { recipients }))
}

/// Proves the mechanism end to end in memory, as an operator would by
/// hand: a throwaway keypair (never written), a probe encrypted by the
/// same stage backups use, decrypted by the same stage `verify` uses, and
/// compared. Returns the probe's size.
pub fn round_trip() -> std::result::Result<usize, String> {
    use crate::pipeline::decrypt::decrypt;
    use crate::pipeline::encrypt::EncryptWriter;
    use std::io::{Read, Write};

    let key = keygen::generate("pgward check (throwaway)", None).map_err(|e| e.to_string())?;
    let recipient_key = key.public.public_subkeys[0].key.clone();
    let probe: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut writer =
        EncryptWriter::new(Vec::new(), vec![recipient_key]).map_err(|e| e.to_string())?;
    writer.write_all(&probe).map_err(|e| e.to_string())?;
    let ciphertext = writer.finish().map_err(|e| e.to_string())?;
    if ciphertext.windows(64).any(|w| w == &probe[..64]) {
        return Err("the ciphertext contains the plaintext".to_string());
    }
    let decryptor = secret::Decryptor::SecretKey(Box::new(secret::SecretKey {
        path: "throwaway".into(),
        key: key.secret,
        password: pgp::types::Password::empty(),
    }));
    let mut plaintext = Vec::new();
    decrypt(std::io::Cursor::new(ciphertext), &decryptor)
        .map_err(|e| e.to_string())?
        .read_to_end(&mut plaintext)
        .map_err(|e| e.to_string())?;
    if plaintext != probe {
        return Err("the decrypted probe differs from the original".to_string());
    }
    Ok(probe.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_read_the_way_people_write_them() {
        let fpr = "0B7E 6F54 D2A8 1C3B 9F0E  A1B2 C3D4 E5F6 0718 293A";
        let parsed = Fingerprint::parse(fpr).unwrap();
        assert_eq!(parsed.as_str(), "0B7E6F54D2A81C3B9F0EA1B2C3D4E5F60718293A");
        assert_eq!(
            Fingerprint::parse(&format!("0x{}", parsed.as_str().to_lowercase())).unwrap(),
            parsed
        );
        assert_eq!(short(&parsed), "…0718293A");
        assert!(
            Fingerprint::parse("C3D4E5F60718293A")
                .unwrap_err()
                .contains("key id")
        );
        assert!(Fingerprint::parse("not hex").is_err());
        assert!(
            Fingerprint::parse("ABCD")
                .unwrap_err()
                .contains("4 hex digits")
        );
    }
}
