//! Signed manifests (`[signing]`).
//!
//! A manifest's digest shows any accidental or clumsy edit, but whoever
//! can write the repository can also recompute it. A signature by a key
//! that lives only on the backup host closes that gap: with
//! `signing.fingerprint` set, every command that reads manifests accepts
//! only those that carry a valid OpenPGP signature by that key's primary
//! key, and a backup that cannot sign does not start.
//!
//! What is signed is the manifest's canonical form without its
//! `manifest-digest` and `manifest-signature` fields (keys sorted, no
//! whitespace), as a binary detached signature stored armored in
//! `manifest-signature`. The digest is then taken over everything else,
//! the signature included, so a pgward that does not know signatures
//! still reads signed manifests.

use crate::config::SigningConfig;
use crate::encryption::{Fingerprint, certificate::Certificate, short};
use crate::error::{Error, Result};
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey, SignedSecretKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::SignatureType;
use pgp::types::{Password, SecretParams};
use std::path::PathBuf;
use std::sync::Arc;

/// The key that signs manifests, unlocked and checked against the pin.
pub struct ManifestSigner {
    path: PathBuf,
    key: SignedSecretKey,
    password: Password,
}

impl std::fmt::Debug for ManifestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestSigner")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The pinned key manifests must be signed by.
#[derive(Debug)]
pub struct SignaturePin {
    fingerprint: Fingerprint,
    key: SignedPublicKey,
}

/// The pin the configuration asks for; `None` when signing is off.
pub fn pin(config: &SigningConfig) -> Result<Option<Arc<SignaturePin>>> {
    let Some(fingerprint) = pinned_fingerprint(config)? else {
        return Ok(None);
    };
    let key = match (&config.certificate, &config.secret_key) {
        (Some(path), _) => {
            let certificate = Certificate::load(path).map_err(|e| {
                Error::config(format!(
                    "signing.certificate {}: {}",
                    path.display(),
                    e.message()
                ))
                .with_hint("signing.certificate must be the signing key's public certificate (gpg --export --armor FPR, or PREFIX.pub.asc from `pgward key generate`)")
            })?;
            if certificate.fingerprint() != fingerprint {
                return Err(mismatch(
                    "signing.certificate",
                    path,
                    &certificate.fingerprint(),
                    &fingerprint,
                ));
            }
            certificate.key
        }
        (None, Some(_)) => {
            let signer = load_signer(config, &fingerprint)?;
            signer.key.to_public_key()
        }
        (None, None) => {
            return Err(Error::config(format!(
                "signing.fingerprint {} is set, but neither signing.certificate nor signing.secret-key",
                short(&fingerprint)
            ))
            .with_hint("set signing.certificate to the signing key's public certificate (or signing.secret-key on the host that backs up)"));
        }
    };
    Ok(Some(Arc::new(SignaturePin { fingerprint, key })))
}

/// The signer the configuration asks for; `None` when signing is off. A
/// pinned fingerprint without a secret key is an error: the backup would
/// write a manifest its own repository refuses.
pub fn signer(config: &SigningConfig) -> Result<Option<ManifestSigner>> {
    let Some(fingerprint) = pinned_fingerprint(config)? else {
        return Ok(None);
    };
    if config.secret_key.is_none() {
        return Err(Error::config(format!(
            "manifests must be signed by {} (signing.fingerprint), but no signing.secret-key is configured",
            short(&fingerprint)
        ))
        .with_hint("set signing.secret-key (and signing.passphrase-file) on the host that backs up"));
    }
    load_signer(config, &fingerprint).map(Some)
}

fn pinned_fingerprint(config: &SigningConfig) -> Result<Option<Fingerprint>> {
    match &config.fingerprint {
        Some(text) => Fingerprint::parse(text)
            .map(Some)
            .map_err(|e| Error::config(format!("signing.fingerprint {e}"))),
        None if config.certificate.is_some()
            || config.secret_key.is_some()
            || config.passphrase_file.is_some() =>
        {
            Err(Error::config("[signing] is configured without signing.fingerprint")
                .with_hint("pin the signing key: signing.fingerprint = \"<40 hex digits>\" (gpg --fingerprint, or `pgward key show`)"))
        }
        None => Ok(None),
    }
}

fn load_signer(config: &SigningConfig, fingerprint: &Fingerprint) -> Result<ManifestSigner> {
    let path = config.secret_key.clone().expect("checked by the callers");
    let key = crate::encryption::secret::load(&path).map_err(|e| {
        e.with_hint(format!(
            "check signing.secret-key; a secret key file must be mode 0600 (chmod 600 {})",
            path.display()
        ))
    })?;
    let actual = Fingerprint::of(&key.primary_key);
    if &actual != fingerprint {
        return Err(mismatch("signing.secret-key", &path, &actual, fingerprint));
    }
    let password = match key.primary_key.secret_params() {
        SecretParams::Plain(_) => Password::empty(),
        SecretParams::Encrypted(_) => {
            let Some(file) = &config.passphrase_file else {
                return Err(Error::config(format!(
                    "signing key {} is passphrase-protected and signing.passphrase-file is not set",
                    path.display()
                ))
                .with_hint("set signing.passphrase-file to a file whose first line is the passphrase (keep it readable by the backup user only)"));
            };
            let passphrase = crate::encryption::secret::read_passphrase_file(file)?;
            let password = Password::from(passphrase.as_bytes());
            if !matches!(key.primary_key.unlock(&password, |_, _| Ok(())), Ok(Ok(()))) {
                return Err(Error::config(format!(
                    "wrong passphrase for signing key {} ({}), or its secret is not in the file",
                    path.display(),
                    short(fingerprint)
                ))
                .with_hint("check signing.passphrase-file (its first line is the passphrase); a gpg stub (smartcard) cannot sign here"));
            }
            password
        }
    };
    Ok(ManifestSigner {
        path,
        key,
        password,
    })
}

fn mismatch(
    setting: &str,
    path: &std::path::Path,
    actual: &Fingerprint,
    pinned: &Fingerprint,
) -> Error {
    Error::config(format!(
        "{setting} {} has fingerprint {} but signing.fingerprint pins {}",
        path.display(),
        short(actual),
        short(pinned)
    ))
    .with_hint("the file is not the key you pinned: confirm which key signs this repository's manifests before changing either")
}

impl ManifestSigner {
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.key.primary_key)
    }

    /// An armored detached signature over `text`.
    pub fn sign(&self, text: &[u8]) -> Result<String> {
        let failed = |e: pgp::errors::Error| {
            Error::config(format!("cannot sign with {}: {e}", self.path.display()))
        };
        let signature = DetachedSignature::sign_binary_data(
            rand::thread_rng(),
            &self.key.primary_key,
            &self.password,
            HashAlgorithm::Sha256,
            text,
        )
        .map_err(failed)?;
        signature
            .to_armored_string(Default::default())
            .map_err(failed)
    }
}

impl SignaturePin {
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Whether `signature` is a valid signature of `text` by the pinned
    /// key; the cause when it is not.
    pub fn check(&self, signature: Option<&str>, text: &[u8]) -> std::result::Result<(), String> {
        let pinned = short(&self.fingerprint);
        let Some(armored) = signature else {
            return Err(format!(
                "not signed, and [signing] requires a signature by {pinned}"
            ));
        };
        let (signature, _) = DetachedSignature::from_armor_single(armored.as_bytes())
            .map_err(|e| format!("signed with an unreadable signature ({e})"))?;
        // What pgward makes: a signature over binary data, nothing the
        // key may have made for another purpose.
        if signature.signature.typ() != Some(SignatureType::Binary) {
            return Err("signed with a signature that is not a binary data signature".to_string());
        }
        signature.verify(&self.key.primary_key, text).map_err(|_| {
            format!("not signed by the pinned key {pinned}, or edited after it was signed")
        })
    }
}

/// Signs a throwaway text and checks it against the pin: `check`'s proof
/// that backups will be able to sign, and that readers will accept them.
pub fn round_trip(signer: &ManifestSigner, pin: &SignaturePin) -> Result<()> {
    let text = b"pgward signing round trip";
    let signature = signer.sign(text)?;
    pin.check(Some(&signature), text)
        .map_err(|cause| Error::config(format!("a test signature by the signing key is {cause}")))
}
