//! The NAR wire primitives: little-endian lengths, padded strings, and the
//! format's constants and limits.
//!
//! Every token of a NAR is a "string": its length as a little-endian `u64`,
//! its bytes, then zero bytes up to the next multiple of 8.

/// The first string of every NAR.
pub const MAGIC: &[u8] = b"nix-archive-1";

/// The longest tag (`(`, `type`, `regular`, ...) a parser accepts. Every
/// keyword is at most 10 bytes; the slack keeps messages about short
/// garbage useful without allowing large allocations.
pub const MAX_TAG_LEN: usize = 32;

/// The longest directory entry name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// The longest symlink target, in bytes.
pub const MAX_TARGET_LEN: usize = 4095;

/// How deep objects may nest: the root is at depth 0, and an object at
/// depth `MAX_DEPTH` or more is refused by both the writer and the parser
/// (Nix's `narMaxDepth`).
pub const MAX_DEPTH: usize = 64;

/// The number of zero bytes that follow a string of `len` bytes.
#[must_use]
pub const fn padding_len(len: u64) -> usize {
    // The result is below 8, so the cast cannot truncate.
    ((8 - (len % 8)) % 8) as usize
}

/// The number of bytes the string encoding of `len` bytes takes.
#[must_use]
pub const fn encoded_len(len: u64) -> u64 {
    8 + len + padding_len(len) as u64
}

/// Zero bytes for padding.
pub(crate) const ZEROS: [u8; 8] = [0; 8];

/// Appends the encoding of `s` to `buf`.
pub(crate) fn push_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s);
    buf.extend_from_slice(&ZEROS[..padding_len(s.len() as u64)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding() {
        let pads: Vec<usize> = (0..=17).map(padding_len).collect();
        assert_eq!(pads, [0, 7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4, 3, 2, 1, 0, 7]);
        assert_eq!(encoded_len(0), 8);
        assert_eq!(encoded_len(13), 24);
        let mut buf = Vec::new();
        push_str(&mut buf, b"(");
        assert_eq!(buf, [1, 0, 0, 0, 0, 0, 0, 0, b'(', 0, 0, 0, 0, 0, 0, 0]);
    }
}
