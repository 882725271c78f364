//! DNA to token ids, with Caduceus's character vocabulary, and reverse complement.
//!
//! | token | id | | token | id |
//! |---|---|---|---|---|
//! | `[CLS]` | 0 | | `A` | 7 |
//! | `[SEP]` | 1 | | `C` | 8 |
//! | `[BOS]` | 2 | | `G` | 9 |
//! | `[MASK]` | 3 | | `T` | 10 |
//! | `[PAD]` | 4 | | `N` | 11 |
//! | `[RESERVED]` | 5 | | | |
//! | `[UNK]` | 6 | | | |
//!
//! The vocabulary is padded to [`VOCAB_SIZE`] = 16. Lowercase (soft-masked) bases map like
//! uppercase, `U` maps like `T`, the other IUPAC codes map to `N`, and anything else is
//! rejected.
//!
//! ```
//! use genomamba::alphabet::{tokenize, reverse_complement_tokens, A, C, G, T, N};
//! let ids = tokenize(b"acGTnR").unwrap();
//! assert_eq!(ids, vec![A, C, G, T, N, N]);
//! assert_eq!(reverse_complement_tokens(&[A, C, G, N]), vec![N, C, G, T]);
//! ```

/// `[CLS]`
pub const CLS: u8 = 0;
/// `[SEP]`
pub const SEP: u8 = 1;
/// `[BOS]`
pub const BOS: u8 = 2;
/// `[MASK]`
pub const MASK: u8 = 3;
/// `[PAD]`
pub const PAD: u8 = 4;
/// `[RESERVED]`
pub const RESERVED: u8 = 5;
/// `[UNK]`
pub const UNK: u8 = 6;
/// Adenine.
pub const A: u8 = 7;
/// Cytosine.
pub const C: u8 = 8;
/// Guanine.
pub const G: u8 = 9;
/// Thymine (and uracil).
pub const T: u8 = 10;
/// Any base (N and the IUPAC ambiguity codes).
pub const N: u8 = 11;
/// Size of the (padded) vocabulary: the embedding table has this many rows.
pub const VOCAB_SIZE: usize = 16;

/// Sentinel in [`TABLE`] for bytes that are not nucleotides.
const INVALID: u8 = 255;

/// Byte -> token id lookup; [`INVALID`] marks bytes that are not accepted.
static TABLE: [u8; 256] = build_table();

const fn build_table() -> [u8; 256] {
    let mut t = [INVALID; 256];
    let pairs: [(u8, u8); 5] = [(b'A', A), (b'C', C), (b'G', G), (b'T', T), (b'U', T)];
    let mut i = 0;
    while i < pairs.len() {
        t[pairs[i].0 as usize] = pairs[i].1;
        t[pairs[i].0.to_ascii_lowercase() as usize] = pairs[i].1;
        i += 1;
    }
    // N and the IUPAC ambiguity codes.
    let amb = b"NRYSWKMBDHV";
    let mut j = 0;
    while j < amb.len() {
        t[amb[j] as usize] = N;
        t[amb[j].to_ascii_lowercase() as usize] = N;
        j += 1;
    }
    t
}

/// The token of one byte, or `None` when the byte is not a nucleotide code.
#[inline]
pub fn token(byte: u8) -> Option<u8> {
    match TABLE[byte as usize] {
        INVALID => None,
        t => Some(t),
    }
}

/// An input byte that is not a nucleotide, with its 0-based offset in the slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadByte {
    /// 0-based offset of the byte.
    pub offset: usize,
    /// The byte itself.
    pub byte: u8,
}

impl BadByte {
    /// A printable description of the byte (`'#'` or `0x07`).
    pub fn describe(&self) -> String {
        if self.byte.is_ascii_graphic() {
            format!("'{}'", self.byte as char)
        } else {
            format!("byte 0x{:02x}", self.byte)
        }
    }
}

/// Token ids of a DNA/RNA string; the first byte that is not a nucleotide is an error.
pub fn tokenize(seq: &[u8]) -> Result<Vec<u8>, BadByte> {
    let mut out = Vec::with_capacity(seq.len());
    tokenize_into(seq, &mut out)?;
    Ok(out)
}

/// Appends the token ids of `seq` to `out`; on error `out` holds the tokens before it.
pub fn tokenize_into(seq: &[u8], out: &mut Vec<u8>) -> Result<(), BadByte> {
    out.reserve(seq.len());
    for (offset, &byte) in seq.iter().enumerate() {
        match TABLE[byte as usize] {
            INVALID => return Err(BadByte { offset, byte }),
            t => out.push(t),
        }
    }
    Ok(())
}

/// The complement of one token: A<->T, C<->G; N and special tokens map to themselves.
#[inline]
pub fn complement(tok: u8) -> u8 {
    match tok {
        A => T,
        T => A,
        C => G,
        G => C,
        other => other,
    }
}

/// Reverse complement of a token sequence.
pub fn reverse_complement_tokens(tokens: &[u8]) -> Vec<u8> {
    tokens.iter().rev().map(|&t| complement(t)).collect()
}

/// The display character of a nucleotide token (`A`, `C`, `G`, `T`, `N`), `?` otherwise.
pub fn token_char(tok: u8) -> char {
    match tok {
        A => 'A',
        C => 'C',
        G => 'G',
        T => 'T',
        N => 'N',
        _ => '?',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_caduceus_vocabulary() {
        assert_eq!(tokenize(b"ACGTN").unwrap(), vec![7, 8, 9, 10, 11]);
        assert_eq!(tokenize(b"acgtn").unwrap(), vec![7, 8, 9, 10, 11]);
        assert_eq!(tokenize(b"Uu").unwrap(), vec![10, 10]);
        for b in b"RYSWKMBDHVryswkmbdhv" {
            assert_eq!(token(*b), Some(N), "{}", *b as char);
        }
    }

    #[test]
    fn rejects_non_nucleotides_with_offset() {
        let err = tokenize(b"ACG#T").unwrap_err();
        assert_eq!(
            err,
            BadByte {
                offset: 3,
                byte: b'#'
            }
        );
        assert_eq!(err.describe(), "'#'");
        assert!(tokenize(b"AC GT").is_err());
        assert!(tokenize(b"E").is_err());
    }

    #[test]
    fn reverse_complement_is_an_involution() {
        let t = tokenize(b"AACGTNGGTCA").unwrap();
        let rc = reverse_complement_tokens(&t);
        assert_eq!(rc, tokenize(b"TGACCNACGTT").unwrap());
        assert_eq!(reverse_complement_tokens(&rc), t);
    }
}
