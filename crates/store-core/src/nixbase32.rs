//! Nix's base-32 encoding ("nix32").
//!
//! Nix encodes hashes with its own alphabet, which leaves out `e`, `o`, `u`
//! and `t` so that no word can be spelled by accident, and with its own bit
//! order: the byte string is read as a little-endian number and printed
//! most significant digit first. The encoding is therefore not RFC 4648
//! base-32 and no general-purpose crate implements it.

use thiserror::Error;

/// The 32 digits, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Why a string is not valid nix32 for the expected length.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The string has the wrong number of digits for the byte length asked for.
    #[error("nix32 string has length {found}, expected {expected}")]
    Length {
        /// Digits expected for the byte length.
        expected: usize,
        /// Digits found.
        found: usize,
    },
    /// A byte outside the alphabet.
    #[error("invalid character {byte:?} at offset {offset} in nix32 string")]
    Character {
        /// The offending character.
        byte: char,
        /// Its position in the string.
        offset: usize,
    },
    /// The digits encode a number that does not fit in the byte length.
    #[error("nix32 string encodes more bits than fit in {len} bytes")]
    Overflow {
        /// The byte length asked for.
        len: usize,
    },
}

/// The number of nix32 digits that encode `len` bytes.
#[must_use]
pub const fn encoded_len(len: usize) -> usize {
    if len == 0 { 0 } else { (len * 8 - 1) / 5 + 1 }
}

/// The value of a nix32 digit, or `None` for a byte outside the alphabet.
#[must_use]
pub const fn digit_value(byte: u8) -> Option<u8> {
    DECODE[byte as usize]
}

/// Encodes `bytes` as nix32.
#[must_use]
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let low = u16::from(bytes[i]) >> j;
        let high = if i + 1 < bytes.len() {
            u16::from(bytes[i + 1]) << (8 - j)
        } else {
            0
        };
        out.push(char::from(ALPHABET[usize::from((low | high) & 0x1f)]));
    }
    out
}

/// Decodes a nix32 string into exactly `len` bytes.
///
/// # Errors
///
/// When the string has the wrong length for `len` bytes, holds a character
/// outside the alphabet, or sets bits beyond the last byte.
pub fn decode(s: &str, len: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = vec![0u8; len];
    decode_into(s.as_bytes(), &mut out)?;
    Ok(out)
}

/// Decodes a nix32 string into a fixed-size array.
///
/// # Errors
///
/// As [`decode`].
pub fn decode_fixed<const N: usize>(s: &str) -> Result<[u8; N], DecodeError> {
    let mut out = [0u8; N];
    decode_into(s.as_bytes(), &mut out)?;
    Ok(out)
}

/// Decodes `digits` into `out`, whose length decides how many digits are expected.
fn decode_into(digits: &[u8], out: &mut [u8]) -> Result<(), DecodeError> {
    let expected = encoded_len(out.len());
    if digits.len() != expected {
        return Err(DecodeError::Length {
            expected,
            found: digits.len(),
        });
    }
    // The last digit holds the least significant five bits.
    for (n, &c) in digits.iter().rev().enumerate() {
        let offset = digits.len() - 1 - n;
        let digit = digit_value(c).ok_or(DecodeError::Character {
            byte: char::from(c),
            offset,
        })?;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        out[i] |= digit << j;
        let carry = u16::from(digit) >> (8 - j);
        if i + 1 < out.len() {
            // `carry` has at most 5 - (8 - j) bits, so it fits in a byte.
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return Err(DecodeError::Overflow { len: out.len() });
        }
    }
    Ok(())
}

const DECODE: [Option<u8>; 256] = {
    let mut table = [None; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = Some(i as u8);
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
        let bytes = data_encoding::HEXLOWER
            .decode(b"8a12321522fd91efbd60ebb2481af88580f61600")
            .unwrap();
        assert_eq!(encode(&bytes), "00bgd045z0d4icpbc2yyz4gx48ak44la");
        assert_eq!(
            decode("00bgd045z0d4icpbc2yyz4gx48ak44la", 20).unwrap(),
            bytes
        );
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(16), 26);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            decode("zz", 1),
            Err(DecodeError::Overflow { len: 1 }),
            "0x3ff does not fit in one byte"
        );
        assert!(matches!(
            decode("0e", 1),
            Err(DecodeError::Character {
                byte: 'e',
                offset: 1
            })
        ));
        assert!(matches!(
            decode("0", 1),
            Err(DecodeError::Length {
                expected: 2,
                found: 1
            })
        ));
        assert!(matches!(decode("0zz", 1), Err(DecodeError::Length { .. })));
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&s, bytes.len()).unwrap(), bytes);
        }

        #[test]
        fn decode_never_panics(s in "\\PC{0,60}", len in 0usize..40) {
            let _ = decode(&s, len);
        }
    }
}
