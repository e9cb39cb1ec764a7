//! Encryption at rest: AES-256-GCM with a key per purpose, derived by
//! HKDF-SHA256 from the user's secret and the database's random salt.
//!
//! Every sealed value is `nonce (12 random bytes) ‖ ciphertext ‖ tag`, and
//! its associated data names the row it belongs to, so a ciphertext copied
//! into another row (or another table) fails to open.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::StoreError;

/// The shortest secret accepted. HKDF is not a password hash: the secret
/// must already be high-entropy (e.g. `openssl rand -hex 32`).
pub const SECRET_MIN_LEN: usize = 32;

const NONCE_LEN: usize = 12;

/// The user's encryption secret. Never printed.
#[derive(Clone)]
pub struct EncryptionSecret(Vec<u8>);

impl fmt::Debug for EncryptionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionSecret(<redacted>)")
    }
}

impl EncryptionSecret {
    /// A secret given directly (`MCPSOCK_ENCRYPTION_SECRET`).
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, StoreError> {
        let secret = secret.into();
        if secret.len() < SECRET_MIN_LEN {
            return Err(StoreError::Secret(format!(
                "the encryption secret is {} bytes; it must be at least {SECRET_MIN_LEN} random bytes (for example `openssl rand -hex 32`)",
                secret.len()
            )));
        }
        Ok(Self(secret))
    }

    /// Reads a secret file (`--encryption-secret-file`). The file must be
    /// ours and readable by nobody else; one trailing newline is ignored.
    pub fn from_file(path: &Path) -> Result<Self, StoreError> {
        let refuse = |what: String| {
            StoreError::Secret(format!("refusing the encryption secret file {}: {what}", path.display()))
        };
        let metadata = std::fs::metadata(path).map_err(|error| refuse(error.to_string()))?;
        if !metadata.is_file() {
            return Err(refuse("not a regular file".into()));
        }
        if metadata.uid() != rustix::process::geteuid().as_raw() {
            return Err(refuse(format!("it belongs to uid {}, not to us", metadata.uid())));
        }
        if metadata.mode() & 0o077 != 0 {
            return Err(refuse(format!(
                "its mode is {:o}; other users could read it: run `chmod 600 {}`",
                metadata.mode() & 0o777,
                path.display()
            )));
        }
        let mut secret = std::fs::read(path).map_err(|error| refuse(error.to_string()))?;
        if secret.last() == Some(&b'\n') {
            secret.pop();
            if secret.last() == Some(&b'\r') {
                secret.pop();
            }
        }
        Self::new(secret).map_err(|error| match error {
            StoreError::Secret(message) => refuse(message),
            other => other,
        })
    }
}

/// What a key is for. Each purpose has its own subkey, so a value sealed for
/// one purpose never opens as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Session records.
    Sessions,
    /// SSE events and the request ids of streams.
    Events,
    /// Per-session gateway state.
    State,
    /// The value that proves a secret is the database's own.
    KeyCheck,
}

impl Purpose {
    const ALL: [Purpose; 4] = [Self::Sessions, Self::Events, Self::State, Self::KeyCheck];

    fn info(self) -> &'static [u8] {
        match self {
            Self::Sessions => b"mcpsock v1 sessions",
            Self::Events => b"mcpsock v1 events",
            Self::State => b"mcpsock v1 state",
            Self::KeyCheck => b"mcpsock v1 key check",
        }
    }
}

/// The subkey for `purpose`: HKDF-SHA256(salt, secret) expanded with the
/// purpose's label.
pub fn derive_subkey(secret: &EncryptionSecret, salt: &[u8], purpose: Purpose) -> [u8; 32] {
    let mut key = [0u8; 32];
    hkdf_sha256(salt, &secret.0, purpose.info(), &mut key);
    key
}

/// HKDF-SHA256 (RFC 5869): extract with `salt`, expand with `info`.
fn hkdf_sha256(salt: &[u8], input_key: &[u8], info: &[u8], output: &mut [u8]) {
    let hkdf = Hkdf::<Sha256>::new(Some(salt), input_key);
    // Every caller asks for far less than HKDF-SHA256's limit of 255 × 32.
    hkdf.expand(info, output).expect("output length within the HKDF-SHA256 limit");
}

/// Seals and opens values with the subkeys of one database.
#[derive(Clone)]
pub struct Cipher {
    keys: [Aes256Gcm; 4],
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(<redacted>)")
    }
}

impl Cipher {
    pub fn new(secret: &EncryptionSecret, salt: &[u8]) -> Self {
        let keys = Purpose::ALL.map(|purpose| {
            let key = derive_subkey(secret, salt, purpose);
            Aes256Gcm::new_from_slice(&key).expect("AES-256 takes a 32-byte key")
        });
        Self { keys }
    }

    fn key(&self, purpose: Purpose) -> &Aes256Gcm {
        &self.keys[Purpose::ALL.iter().position(|candidate| *candidate == purpose).unwrap_or(0)]
    }

    /// Encrypts `plaintext` bound to `aad` under a fresh random nonce.
    pub fn seal(&self, purpose: Purpose, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random number generator failed");
        let sealed = self
            .key(purpose)
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad })
            .expect("AES-GCM encrypts any value below 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a value sealed with the same purpose and `aad`.
    pub fn open(&self, purpose: Purpose, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        if sealed.len() < NONCE_LEN {
            return Err(StoreError::Tampered);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| StoreError::Tampered)?;
        self.key(purpose)
            .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad })
            .map_err(|_| StoreError::Tampered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> EncryptionSecret {
        EncryptionSecret::new(vec![7u8; 32]).unwrap()
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let cipher = Cipher::new(&secret(), b"salt");
        let sealed = cipher.seal(Purpose::Events, b"row 1", b"hello");
        assert_eq!(cipher.open(Purpose::Events, b"row 1", &sealed).unwrap(), b"hello");
        // Another row, another purpose, another salt, a flipped bit: all fail.
        assert!(matches!(cipher.open(Purpose::Events, b"row 2", &sealed), Err(StoreError::Tampered)));
        assert!(matches!(cipher.open(Purpose::Sessions, b"row 1", &sealed), Err(StoreError::Tampered)));
        let other_salt = Cipher::new(&secret(), b"other salt");
        assert!(other_salt.open(Purpose::Events, b"row 1", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(cipher.open(Purpose::Events, b"row 1", &flipped).is_err());
        assert!(cipher.open(Purpose::Events, b"row 1", b"short").is_err());
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&text[index..index + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn sec43_hkdf_matches_the_rfc_5869_test_vectors() {
        let range = |from: u8, to: u8| (from..=to).collect::<Vec<u8>>();
        // (input key, salt, info, expected output)
        type Case = (Vec<u8>, Vec<u8>, Vec<u8>, &'static str);
        let cases: [Case; 3] = [
            (
                vec![0x0b; 22],
                range(0x00, 0x0c),
                range(0xf0, 0xf9),
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
            ),
            (
                range(0x00, 0x4f),
                range(0x60, 0xaf),
                range(0xb0, 0xff),
                "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87",
            ),
            (
                vec![0x0b; 22],
                Vec::new(),
                Vec::new(),
                "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
            ),
        ];
        for (input_key, salt, info, expected) in cases {
            let expected = unhex(expected);
            let mut output = vec![0u8; expected.len()];
            hkdf_sha256(&salt, &input_key, &info, &mut output);
            assert_eq!(output, expected);
        }
    }

    #[test]
    fn sec43_each_purpose_has_its_own_subkey() {
        let keys: Vec<[u8; 32]> =
            Purpose::ALL.iter().map(|purpose| derive_subkey(&secret(), b"salt", *purpose)).collect();
        for (index, key) in keys.iter().enumerate() {
            assert!(keys[index + 1..].iter().all(|other| other != key), "purposes share a subkey");
            assert_ne!(key.as_slice(), secret().0.as_slice(), "a subkey is never the secret itself");
        }
        assert_ne!(
            derive_subkey(&secret(), b"salt", Purpose::Events),
            derive_subkey(&secret(), b"pepper", Purpose::Events)
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        let error = EncryptionSecret::new(b"too short".to_vec()).unwrap_err();
        assert!(error.to_string().contains("at least 32"), "{error}");
    }
}
