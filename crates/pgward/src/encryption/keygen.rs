//! `pgward key generate`: a keypair for backups that GnuPG 2.2 can use.
//!
//! The shape is what GnuPG 2.3 and later make by default, which GnuPG 2.2
//! reads too: a v4 ed25519 primary key (certify, sign) and a cv25519
//! encryption subkey, both protected with iterated-salted S2K and AES-256
//! (not Argon2 or AEAD key protection, which GnuPG 2.2 cannot read).
//! Curve25519 also keeps generation instant, which RSA in pure Rust is
//! not. Unlike gpg's keys it does not expire: rPGP's builder cannot set
//! an expiry, and an expired backup key would stop the nightly backup.

use super::Fingerprint;
use crate::error::{Error, Result};
use pgp::composed::{
    EncryptionCaps, KeyType, SecretKeyParamsBuilder, SignedPublicKey, SignedSecretKey,
    SubkeyParamsBuilder,
};
use pgp::crypto::ecc_curve::ECCCurve;
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A generated keypair, not yet written anywhere.
pub struct GeneratedKey {
    pub secret: SignedSecretKey,
    pub public: SignedPublicKey,
    pub fingerprint: Fingerprint,
    pub encryption_key: Fingerprint,
}

/// Generates a keypair. `passphrase` protects the secret key; `None` is
/// only for throwaway keys that never leave memory (`check`'s round trip).
pub fn generate(user_id: &str, passphrase: Option<&str>) -> Result<GeneratedKey> {
    let failed = |e: &dyn std::fmt::Display| {
        Error::new(
            crate::error::ErrorKind::Config,
            format!("cannot generate a key: {e}"),
        )
    };
    let mut subkey = SubkeyParamsBuilder::default();
    subkey
        .key_type(KeyType::ECDH(ECCCurve::Curve25519Legacy))
        .can_sign(false)
        .can_encrypt(EncryptionCaps::All)
        .can_authenticate(false)
        .passphrase(passphrase.map(String::from));
    let subkey = subkey.build().map_err(|e| failed(&e))?;
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id(user_id.to_string())
        .passphrase(passphrase.map(String::from))
        .preferred_symmetric_algorithms(
            [SymmetricKeyAlgorithm::AES256, SymmetricKeyAlgorithm::AES128][..].into(),
        )
        .preferred_hash_algorithms([HashAlgorithm::Sha512, HashAlgorithm::Sha256][..].into())
        .subkeys(vec![subkey]);
    let params = params.build().map_err(|e| failed(&e))?;
    let secret = params
        .generate(rand::thread_rng())
        .map_err(|e| failed(&e))?;
    let public = secret.to_public_key();
    let fingerprint = Fingerprint::of(&secret.primary_key);
    let encryption_key = Fingerprint::of(&public.public_subkeys[0].key);
    Ok(GeneratedKey {
        secret,
        public,
        fingerprint,
        encryption_key,
    })
}

/// Where `write` put a keypair.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct WrittenKey {
    pub fingerprint: Fingerprint,
    pub encryption_key: Fingerprint,
    pub secret_key: PathBuf,
    pub certificate: PathBuf,
}

/// Writes `PREFIX.sec.asc` and `PREFIX.pub.asc`, both armored and private
/// (0600); neither may exist already. If the second cannot be written the
/// first is removed: a half-written keypair is not left behind.
pub fn write(key: &GeneratedKey, prefix: &Path) -> Result<WrittenKey> {
    let with_suffix = |suffix: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let secret_path = with_suffix(".sec.asc");
    let public_path = with_suffix(".pub.asc");
    for path in [&secret_path, &public_path] {
        if path.exists() {
            return Err(Error::config(format!("{} already exists", path.display()))
                .with_hint("choose another --out prefix; pgward never overwrites a key"));
        }
    }
    let armor_error = |e: pgp::errors::Error| Error::config(format!("cannot armor the key: {e}"));
    let secret_text = key
        .secret
        .to_armored_string(Default::default())
        .map_err(armor_error)?;
    let public_text = key
        .public
        .to_armored_string(Default::default())
        .map_err(armor_error)?;
    write_new_private(&secret_path, secret_text.as_bytes())?;
    if let Err(e) = write_new_private(&public_path, public_text.as_bytes()) {
        let _ = std::fs::remove_file(&secret_path);
        return Err(e);
    }
    Ok(WrittenKey {
        fingerprint: key.fingerprint.clone(),
        encryption_key: key.encryption_key.clone(),
        secret_key: secret_path,
        certificate: public_path,
    })
}

fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
    written.map_err(|e| {
        let _ = std::fs::remove_file(path);
        Error::config(format!("cannot write {}: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgp::types::{KeyDetails, Password};

    #[test]
    fn generated_keys_are_v4_curve25519_and_passphrase_protected() {
        let key = generate("test <test@example.invalid>", Some("correct horse")).unwrap();
        assert_eq!(key.secret.primary_key.version(), pgp::types::KeyVersion::V4);
        let subkey = &key.secret.secret_subkeys[0];
        assert!(
            subkey
                .key
                .unlock(&Password::from("wrong"), |_, _| Ok(()))
                .is_err(),
            "a wrong passphrase must not unlock the key"
        );
        subkey
            .key
            .unlock(&Password::from("correct horse"), |_, _| Ok(()))
            .unwrap()
            .unwrap();
        key.public.verify_bindings().unwrap();
    }
}
