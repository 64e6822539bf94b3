//! Secrets at rest and API tokens.
//!
//! Secret values are sealed with AES-256-GCM under a data key. Embedded mode keeps the key in a
//! file in the data dir, created on first start with mode 0600. A sealed value is the base64 of
//! `MAGIC || nonce || ciphertext+tag`, so it is valid base64 for SDK clients that decode
//! `ciphertext`, and recognisable when a client sends back what it read. Each value is sealed
//! for one org, which is authenticated with it (`Cipher::for_org`).

use std::path::Path;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"TMC1";
const NONCE_LEN: usize = 12;

/// Seals and opens secret values. Cheap to clone. Each copy wipes its key (and the cipher its
/// key schedule) when dropped.
#[derive(Clone, ZeroizeOnDrop)]
pub struct Cipher {
    #[zeroize(skip)]
    aead: Aes256Gcm,
    key: [u8; 32],
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            aead: Aes256Gcm::new(key.into()),
            key: *key,
        }
    }

    /// A stable secret for `label`, derived from the data key (e.g. a stack's Pulumi
    /// passphrase). The fixed-length key prefix makes SHA-256 safe to use this way.
    pub fn derive(&self, label: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(label.as_bytes());
        URL_SAFE_NO_PAD.encode(h.finalize())
    }

    /// Loads the key file, creating it (0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let key: Zeroizing<[u8; 32]> =
                    Zeroizing::new(bytes.as_slice().try_into().map_err(|_| {
                        Error::internal(format!("{} is not a 32-byte key", path.display()))
                    })?);
                Ok(Self::from_key(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                OsRng.fill_bytes(key.as_mut());
                write_private(path, key.as_ref())?;
                Ok(Self::from_key(&key))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Seals and opens values of one org. The org is authenticated with each value (AES-GCM
    /// associated data), so a value sealed for one org never opens for another: a ciphertext
    /// seen in one tenant's settings is useless in another's.
    pub fn for_org<'a>(&'a self, org: &'a str) -> OrgCipher<'a> {
        OrgCipher { cipher: self, org }
    }

    fn seal_with(&self, plaintext: &str, aad: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ct = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + ct.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        STANDARD.encode(out)
    }

    fn open_with(&self, sealed: &str, aad: &[u8]) -> Option<String> {
        let bytes = STANDARD.decode(sealed).ok()?;
        let rest = bytes.strip_prefix(MAGIC.as_slice())?;
        if rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let pt = self
            .aead
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .ok()?;
        String::from_utf8(pt).ok()
    }
}

/// A `Cipher` bound to one org (see `Cipher::for_org`).
#[derive(Clone, Copy)]
pub struct OrgCipher<'a> {
    cipher: &'a Cipher,
    org: &'a str,
}

impl std::fmt::Debug for OrgCipher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OrgCipher({})", self.org)
    }
}

impl OrgCipher<'_> {
    fn aad(&self) -> Vec<u8> {
        format!("tarmac-org:{}", self.org).into_bytes()
    }

    pub fn seal(&self, plaintext: &str) -> String {
        self.cipher.seal_with(plaintext, &self.aad())
    }

    /// Opens a value sealed for this org. `None` if it is not one.
    pub fn open(&self, sealed: &str) -> Option<String> {
        self.cipher.open_with(sealed, &self.aad())
    }

    pub fn is_sealed(&self, value: &str) -> bool {
        self.open(value).is_some()
    }
}

/// Whether `value` has the envelope of a sealed value (of any org or server), whether or not
/// this cipher can open it.
pub fn looks_sealed(value: &str) -> bool {
    STANDARD
        .decode(value)
        .is_ok_and(|b| b.starts_with(MAGIC) && b.len() > MAGIC.len() + NONCE_LEN)
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// A new API token: `tmc_` and 32 random bytes. Only its hash is ever stored.
pub fn new_token() -> String {
    new_secret("tmc_")
}

/// `prefix` and 32 random bytes, base64url.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a token. Tokens carry 256 bits of entropy, so a plain SHA-256 suffices.
pub fn token_hash(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex; `None` unless it is an even number of hex digits.
pub fn from_hex(hex: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would also take a sign: "+a" for 0a.
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

/// Hex HMAC-SHA256 of `message` under `key` (webhook signatures).
pub fn hmac_sha256_hex(key: &str, message: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.as_bytes());
    to_hex(aws_lc_rs::hmac::sign(&key, message).as_ref())
}

/// Whether `tag` is the HMAC-SHA256 of `message` under `key`, compared in constant time.
pub fn hmac_sha256_valid(key: &str, message: &[u8], tag: &[u8]) -> bool {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.as_bytes());
    aws_lc_rs::hmac::verify(&key, message, tag).is_ok()
}

/// A UUID derived from `parts` (SHA-256 of them, in the version 4 layout): the same parts
/// always give the same id.
pub fn derived_uuid(parts: &[&[u8]]) -> uuid::Uuid {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part);
    }
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&h.finalize()[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_detects_foreign_values() {
        let key = Cipher::from_key(&[7; 32]);
        let c = key.for_org("acme");
        let sealed = c.seal("hunter2");
        assert_ne!(sealed, c.seal("hunter2"), "nonces must differ");
        assert_eq!(c.open(&sealed).as_deref(), Some("hunter2"));
        assert!(c.open("hunter2").is_none());
        assert!(
            Cipher::from_key(&[8; 32])
                .for_org("acme")
                .open(&sealed)
                .is_none()
        );
        assert!(
            key.for_org("other").open(&sealed).is_none(),
            "a value sealed for one org must not open for another"
        );
        assert!(STANDARD.decode(&sealed).is_ok(), "sealed values are base64");
        assert!(looks_sealed(&sealed) && !looks_sealed("hunter2") && !looks_sealed("VE1DMQ=="));
    }

    #[test]
    fn key_file_is_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let a = Cipher::load_or_create(&path).unwrap();
        let b = Cipher::load_or_create(&path).unwrap();
        assert_eq!(
            b.for_org("o").open(&a.for_org("o").seal("x")).as_deref(),
            Some("x")
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn hex_is_pairs_of_hex_digits_and_nothing_else() {
        assert_eq!(from_hex("0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(from_hex(""), Some(vec![]));
        for bad in ["+a", "-0", " a", "0x", "a", "é0"] {
            assert_eq!(from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn tokens_are_unique_and_hashed() {
        let t = new_token();
        assert!(t.starts_with("tmc_") && t.len() > 40);
        assert_ne!(t, new_token());
        assert_eq!(token_hash(&t).len(), 64);
        assert_ne!(token_hash(&t), t);
    }
}
