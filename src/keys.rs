//! `tollgate keys new`: issue an API key.

use rand::Rng;
use sha2::{Digest, Sha256};

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A fresh key: `<prefix>_` and 32 base62 characters (about 190 bits of randomness).
pub fn generate(prefix: &str) -> String {
    let mut rng = rand::rng();
    let body: String = (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}_{body}")
}

/// Lowercase hex SHA-256 of a key, as stored in config and in the store.
pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_and_distinct() {
        let a = generate("tg_live");
        assert!(a.starts_with("tg_live_") && a.len() == "tg_live_".len() + 32);
        assert_ne!(a, generate("tg_live"));
        assert_eq!(
            sha256_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
