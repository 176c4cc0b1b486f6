//! API keys: `tg_live_` / `tg_test_`, 30 random base62 characters, 6 of checksum.
//!
//! The checksum (the first four bytes of the SHA-256 of everything before it, in base62) lets
//! the gateway refuse a mistyped or truncated key before any store look-up, and lets secret
//! scanners recognise a real key. It is not a secret and proves nothing about who issued a key:
//! only the key's hash being on file does.

use rand::Rng;
use sha2::{Digest, Sha256};

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random characters per key: 30 × log2(62) ≈ 178 bits.
const RANDOM_LEN: usize = 30;
/// Checksum characters (62^6 > 2^32).
const CHECKSUM_LEN: usize = 6;
/// The prefixes of keys this gateway issues.
pub const PREFIXES: [&str; 2] = ["tg_live", "tg_test"];

/// A fresh key with `prefix` (`tg_live` or `tg_test` by convention).
pub fn generate(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut key = format!("{prefix}_");
    key.extend((0..RANDOM_LEN).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char));
    let sum = checksum(&key);
    key.push_str(&sum);
    key
}

/// What the shape of a presented key says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// In the issued format, checksum correct.
    Issued,
    /// In the issued format, checksum wrong: mistyped or truncated.
    BadChecksum,
    /// Not in the issued format (for example a key written into the config by hand).
    Other,
}

/// Classifies a presented key without any look-up.
pub fn shape(key: &str) -> Shape {
    let Some(rest) = PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p).and_then(|r| r.strip_prefix('_')))
    else {
        return Shape::Other;
    };
    if rest.len() != RANDOM_LEN + CHECKSUM_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Shape::Other;
    }
    let (body, sum) = key.split_at(key.len() - CHECKSUM_LEN);
    if checksum(body) == sum {
        Shape::Issued
    } else {
        Shape::BadChecksum
    }
}

fn checksum(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let mut n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|b| *b as char).collect()
}

/// Lowercase hex SHA-256 of a key, as stored in config and in the store.
pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_have_the_format_and_a_valid_checksum() {
        let a = generate("tg_live");
        assert!(
            a.starts_with("tg_live_") && a.len() == "tg_live_".len() + 36,
            "{a}"
        );
        assert_ne!(a, generate("tg_live"));
        assert_eq!(shape(&a), Shape::Issued);
        assert_eq!(shape(&generate("tg_test")), Shape::Issued);
    }

    #[test]
    fn a_mistyped_key_fails_its_checksum() {
        let a = generate("tg_live");
        let mut typo = a.clone().into_bytes();
        typo[12] = if typo[12] == b'a' { b'b' } else { b'a' };
        assert_eq!(shape(&String::from_utf8(typo).unwrap()), Shape::BadChecksum);
        let mut swapped = a.into_bytes();
        swapped.swap(10, 11);
        let swapped = String::from_utf8(swapped).unwrap();
        assert!(
            shape(&swapped) != Shape::Issued || swapped.as_bytes()[10] == swapped.as_bytes()[11]
        );
    }

    #[test]
    fn other_keys_are_left_to_the_look_up() {
        assert_eq!(shape("tg_test_acme"), Shape::Other);
        assert_eq!(shape("sk-something"), Shape::Other);
        assert_eq!(shape(&format!("tg_live_{}", "a".repeat(35))), Shape::Other);
        assert_eq!(
            sha256_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
