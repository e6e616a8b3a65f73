//! Where pgward gets the means to decrypt: a secret key file (with its
//! passphrase from a file, an environment variable naming a file, or a
//! prompt), or an external command such as `gpg --decrypt` for operators
//! whose private key never leaves gpg or a smartcard.
//!
//! A passphrase never comes from a command-line argument, and is checked
//! against the key before any artifact is read, so "wrong passphrase" is
//! never confused with "damaged artifact".

use super::{Fingerprint, short};
use crate::config::DecryptionConfig;
use crate::connection::Env;
use crate::error::{Error, Result};
use pgp::composed::{Deserializable, SignedSecretKey};
use pgp::types::Password;
use pgp::types::{S2kParams, SecretParams, StringToKey};
use std::path::{Path, PathBuf};
pub use zeroize::Zeroizing;

/// The environment variable that names a file holding the passphrase.
pub const PASSPHRASE_FILE_ENV: &str = "PGWARD_PASSPHRASE_FILE";

/// A secret key read from a file, its passphrase already checked.
pub struct SecretKey {
    pub path: PathBuf,
    pub key: SignedSecretKey,
    pub password: Password,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("path", &self.path)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.key.primary_key)
    }

    /// The primary and subkey fingerprints: a backup is decryptable with
    /// this key if any of them is among its recipients' keys.
    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        std::iter::once(self.fingerprint())
            .chain(
                self.key
                    .secret_subkeys
                    .iter()
                    .map(|s| Fingerprint::of(&s.key)),
            )
            .collect()
    }

    pub fn describe(&self) -> String {
        format!("{} ({})", self.path.display(), short(&self.fingerprint()))
    }
}

/// How artifacts get decrypted.
#[derive(Debug)]
pub enum Decryptor {
    SecretKey(Box<SecretKey>),
    /// argv of a command that reads ciphertext on stdin and writes
    /// plaintext on stdout.
    Command(Vec<String>),
}

impl Decryptor {
    pub fn describe(&self) -> String {
        match self {
            Decryptor::SecretKey(key) => format!("secret key {}", key.describe()),
            // Only the program: the arguments could carry a secret.
            Decryptor::Command(argv) => format!(
                "command {}",
                argv.first().map(String::as_str).unwrap_or_default()
            ),
        }
    }
}

/// Asks for a passphrase on the operator's terminal; `None` when there is
/// no terminal to ask on.
pub type Prompt<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The decryptor the configuration asks for, or `None` when none is
/// configured (verify then checks stored bytes only).
pub fn decryptor(config: &DecryptionConfig, env: Env, prompt: Prompt) -> Result<Option<Decryptor>> {
    if !config.command.is_empty() {
        return Ok(Some(Decryptor::Command(config.command.clone())));
    }
    let Some(path) = &config.secret_key else {
        return Ok(None);
    };
    let key = load(path)?;
    let password = if is_protected(&key) {
        let passphrase = passphrase(config, env, prompt, path)?;
        let password = Password::from(passphrase.as_bytes());
        check_passphrase(&key, &password, path)?;
        password
    } else {
        Password::empty()
    };
    Ok(Some(Decryptor::SecretKey(Box::new(SecretKey {
        path: path.clone(),
        key,
        password,
    }))))
}

/// Reads a secret key file, refusing one that others can read.
pub fn load(path: &Path) -> Result<SignedSecretKey> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).map_err(|e| {
        Error::config(format!("cannot read secret key {}: {e}", path.display()))
            .with_hint("check decryption.secret-key or --secret-key")
    })?;
    if metadata.mode() & 0o077 != 0 {
        return Err(Error::config(format!(
            "secret key {} is readable by group or others (mode {:o})",
            path.display(),
            metadata.mode() & 0o777
        ))
        .with_hint(format!("chmod 600 {}", path.display())));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| Error::config(format!("cannot read secret key {}: {e}", path.display())))?;
    let (key, _) = SignedSecretKey::from_reader_single(&bytes[..]).map_err(|e| {
        Error::config(format!(
            "{} is not an OpenPGP secret key: {e}",
            path.display()
        ))
        .with_hint("export it with `gpg --export-secret-keys --armor FINGERPRINT > FILE`")
    })?;
    Ok(key)
}

fn is_protected(key: &SignedSecretKey) -> bool {
    let encrypted = |params: &SecretParams| matches!(params, SecretParams::Encrypted(_));
    encrypted(key.primary_key.secret_params())
        || key
            .secret_subkeys
            .iter()
            .any(|s| encrypted(s.key.secret_params()))
}

/// The passphrase, from the first source that is set: the config's (or
/// command line's) file, the file named by PGWARD_PASSPHRASE_FILE, the
/// terminal.
fn passphrase(
    config: &DecryptionConfig,
    env: Env,
    prompt: Prompt,
    key: &Path,
) -> Result<Zeroizing<String>> {
    let file = config
        .passphrase_file
        .clone()
        .or_else(|| env(PASSPHRASE_FILE_ENV).map(PathBuf::from));
    if let Some(file) = file {
        return read_passphrase_file(&file);
    }
    prompt(&format!("Passphrase for {}: ", key.display()))
        .map(Zeroizing::new)
        .ok_or_else(|| {
            Error::config(format!(
                "secret key {} is passphrase-protected and no passphrase was given",
                key.display()
            ))
            .with_hint(format!(
                "set decryption.passphrase-file or {PASSPHRASE_FILE_ENV} to a file holding it, or enter it when asked on a terminal"
            ))
        })
}

/// The file's first line, without its line ending.
pub fn read_passphrase_file(path: &Path) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!(
            "cannot read passphrase file {}: {e}",
            path.display()
        ))
    })?);
    let line = Zeroizing::new(text.lines().next().unwrap_or_default().to_string());
    if line.is_empty() {
        return Err(Error::config(format!(
            "passphrase file {} is empty",
            path.display()
        )));
    }
    Ok(line)
}

/// Unlocks the protected encryption subkeys with the passphrase, so a
/// wrong one is reported here, by name, and not as a failed decryption.
/// A subkey whose secret is not in the file at all (a gpg stub: the key
/// lives on a smartcard) is named as such.
fn check_passphrase(key: &SignedSecretKey, password: &Password, path: &Path) -> Result<()> {
    let name = format!(
        "{} ({})",
        path.display(),
        short(&Fingerprint::of(&key.primary_key))
    );
    let encryption_subkeys: Vec<_> = key
        .secret_subkeys
        .iter()
        .filter(|s| pgp::types::KeyDetails::algorithm(&s.key).can_encrypt())
        .collect();
    let mut unlocked = false;
    let mut stub = false;
    for subkey in &encryption_subkeys {
        let SecretParams::Encrypted(params) = subkey.key.secret_params() else {
            unlocked = true;
            continue;
        };
        if is_stub(params.string_to_key_params()) {
            stub = true;
            continue;
        }
        if matches!(subkey.key.unlock(password, |_, _| Ok(())), Ok(Ok(()))) {
            unlocked = true;
        }
    }
    if unlocked || encryption_subkeys.is_empty() {
        return Ok(());
    }
    if stub {
        return Err(Error::config(format!(
            "secret key {name} holds no secret for its encryption subkey (a gpg stub: the key is on a smartcard or elsewhere)"
        ))
        .with_hint("decrypt through gpg instead: --gpg or decryption.command"));
    }
    Err(
        Error::config(format!("wrong passphrase for secret key {name}"))
            .with_hint("check the passphrase file (its first line is the passphrase)"),
    )
}

/// gpg marks secret parts it does not hold (`--export-secret-subkeys`,
/// smartcards) with a private S2K type (GNU's 101).
fn is_stub(params: &S2kParams) -> bool {
    let s2k = match params {
        S2kParams::Cfb { s2k, .. } | S2kParams::MalleableCfb { s2k, .. } => s2k,
        S2kParams::Aead { s2k, .. } => s2k,
        _ => return false,
    };
    matches!(s2k, StringToKey::Private { .. })
}
