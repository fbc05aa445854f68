//! Bit reader for H.264 RBSP (exp-Golomb), with emulation-prevention removal.
//!
//! Contract: nothing here panics, whatever the input. Every read returns a `Result`; reading past
//! the end gives [`BitsError::Eof`] and leaves the reader where it was.
//!
//! Typical use: `BitReader::new(&nal_to_rbsp(nal_without_header))`, then `read_*` calls in the
//! order of the syntax tables of ISO/IEC 14496-10 §7.3.

/// Why a read failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitsError {
    /// Fewer bits left than the read needs.
    Eof,
    /// An exp-Golomb code with 32 or more leading zeros (its value would not fit in a `u32`), or
    /// `read_bits` asked for more than 32 bits.
    Overflow,
}

impl std::fmt::Display for BitsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BitsError::Eof => f.write_str("end of RBSP data"),
            BitsError::Overflow => f.write_str("value too large"),
        }
    }
}

impl std::error::Error for BitsError {}

/// Removes emulation-prevention bytes: every `0x03` that follows two `0x00` bytes is dropped
/// (§7.4.1: `emulation_prevention_three_byte`). The zero count restarts after a removed byte, so
/// `00 00 03 00 00 03` yields `00 00 00 00`. Input is a NAL unit (or part of one) without its
/// start code; the output is its RBSP.
pub fn nal_to_rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0usize;
    for &b in nal {
        if zeros >= 2 && b == 0x03 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// MSB-first bit reader over an RBSP (emulation prevention already removed).
#[derive(Clone, Debug)]
pub struct BitReader<'a> {
    data: &'a [u8],
    /// Position in bits from the start of `data`.
    pos: usize,
}

impl<'a> BitReader<'a> {
    /// A reader positioned at the first (most significant) bit of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Bits consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bits not yet consumed.
    pub fn bits_left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }

    /// True when the position is on a byte boundary.
    pub fn is_byte_aligned(&self) -> bool {
        self.pos.is_multiple_of(8)
    }

    /// Reads one bit.
    pub fn read_bit(&mut self) -> Result<bool, BitsError> {
        let byte = *self.data.get(self.pos / 8).ok_or(BitsError::Eof)?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(bit == 1)
    }

    /// Reads `n` bits (0..=32) as an unsigned big-endian number; `n == 0` reads nothing and
    /// returns 0. `n > 32` is [`BitsError::Overflow`]; too few bits left is [`BitsError::Eof`]
    /// (nothing consumed in either case).
    pub fn read_bits(&mut self, n: u32) -> Result<u32, BitsError> {
        if n > 32 {
            return Err(BitsError::Overflow);
        }
        if self.bits_left() < n as usize {
            return Err(BitsError::Eof);
        }
        let mut value: u64 = 0;
        for _ in 0..n {
            value = (value << 1) | u64::from(self.read_bit()?);
        }
        u32::try_from(value).map_err(|_| BitsError::Overflow)
    }

    /// Reads a one-byte field (`u(8)`).
    pub fn read_u8(&mut self) -> Result<u8, BitsError> {
        // read_bits(8) is < 256 by construction.
        u8::try_from(self.read_bits(8)?).map_err(|_| BitsError::Overflow)
    }

    /// Skips `n` bits (error and no move if fewer are left).
    pub fn skip(&mut self, n: usize) -> Result<(), BitsError> {
        if self.bits_left() < n {
            return Err(BitsError::Eof);
        }
        self.pos += n;
        Ok(())
    }

    /// Reads an unsigned exp-Golomb code `ue(v)` (§9.1): `1` → 0, `010` → 1, `011` → 2,
    /// `00100` → 3 ... Codes with ≥ 32 leading zeros are [`BitsError::Overflow`].
    pub fn read_ue(&mut self) -> Result<u32, BitsError> {
        let start = self.pos;
        let result = self.read_ue_inner();
        if result.is_err() {
            self.pos = start;
        }
        result
    }

    fn read_ue_inner(&mut self) -> Result<u32, BitsError> {
        let mut leading_zeros = 0u32;
        while !self.read_bit()? {
            leading_zeros += 1;
            if leading_zeros >= 32 {
                return Err(BitsError::Overflow);
            }
        }
        let suffix = self.read_bits(leading_zeros)?;
        // leading_zeros <= 31: (2^lz - 1) + suffix <= 2^32 - 2.
        let base = (1u32 << leading_zeros) - 1;
        base.checked_add(suffix).ok_or(BitsError::Overflow)
    }

    /// Reads a signed exp-Golomb code `se(v)` (§9.1.1): codeNum k maps to
    /// 0, 1, −1, 2, −2 ... i.e. `(−1)^(k+1) · ⌈k/2⌉`.
    pub fn read_se(&mut self) -> Result<i32, BitsError> {
        let k = i64::from(self.read_ue()?);
        let magnitude = (k + 1) / 2;
        let value = if k % 2 == 1 { magnitude } else { -magnitude };
        i32::try_from(value).map_err(|_| BitsError::Overflow)
    }

    /// `more_rbsp_data()` (§7.2): true when there is payload before the `rbsp_stop_one_bit`,
    /// i.e. a 1 bit exists after the current position other than the last 1 bit of the data.
    pub fn more_rbsp_data(&self) -> bool {
        let Some(last_byte_index) = self.data.iter().rposition(|&b| b != 0) else {
            return false;
        };
        let Some(&last_byte) = self.data.get(last_byte_index) else {
            return false;
        };
        let stop_bit_pos = last_byte_index * 8 + 7 - last_byte.trailing_zeros() as usize;
        self.pos < stop_bit_pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs a string of '0'/'1' (other characters ignored) MSB-first, zero-padded.
    fn bits(s: &str) -> Vec<u8> {
        let bits: Vec<u8> = s.bytes().filter(|b| *b == b'0' || *b == b'1').collect();
        bits.chunks(8)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0u8, |acc, (i, b)| acc | ((b - b'0') << (7 - i)))
            })
            .collect()
    }

    #[test]
    fn ue_vectors() {
        let data = bits("1 010 011 00100 00101 00110 00111 0001000 000011111");
        let mut r = BitReader::new(&data);
        for want in [0, 1, 2, 3, 4, 5, 6, 7, 30] {
            assert_eq!(r.read_ue(), Ok(want));
        }
    }

    #[test]
    fn se_mapping() {
        // codeNum 0..6 → 0, 1, -1, 2, -2, 3, -3
        let data = bits("1 010 011 00100 00101 00110 00111");
        let mut r = BitReader::new(&data);
        for want in [0, 1, -1, 2, -2, 3, -3] {
            assert_eq!(r.read_se(), Ok(want));
        }
    }

    #[test]
    fn ue_extremes() {
        // 31 leading zeros then 32 ones: 2^31 - 1 + (2^31 - 1) = 2^32 - 2.
        let s = format!("{}1{}", "0".repeat(31), "1".repeat(31));
        let data = bits(&s);
        assert_eq!(BitReader::new(&data).read_ue(), Ok(u32::MAX - 1));
        // se of the largest codeNum stays in range.
        assert_eq!(BitReader::new(&data).read_se(), Ok(-(i32::MAX)));
        // 32 leading zeros cannot be represented.
        let data = bits(&format!("{}1{}", "0".repeat(32), "0".repeat(32)));
        assert_eq!(BitReader::new(&data).read_ue(), Err(BitsError::Overflow));
    }

    #[test]
    fn read_bits_widths() {
        let data = [0xDE, 0xAD, 0xBE, 0xEF, 0x80];
        let mut r = BitReader::new(&data);
        assert_eq!(r.read_bits(0), Ok(0));
        assert_eq!(r.read_bits(32), Ok(0xDEAD_BEEF));
        assert_eq!(r.read_bit(), Ok(true));
        assert_eq!(r.read_bits(33), Err(BitsError::Overflow));
        assert_eq!(r.read_bits(7), Ok(0));
        assert_eq!(r.bits_left(), 0);
        assert_eq!(r.read_bits(1), Err(BitsError::Eof));

        let mut r = BitReader::new(&data);
        assert_eq!(r.read_bits(4), Ok(0xD));
        assert_eq!(r.read_u8(), Ok(0xEA));
        assert_eq!(r.skip(4), Ok(()));
        assert!(r.is_byte_aligned());
        assert_eq!(r.position(), 16);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut r = BitReader::new(&[]);
        assert_eq!(r.read_bit(), Err(BitsError::Eof));
        assert_eq!(r.read_ue(), Err(BitsError::Eof));
        assert_eq!(r.read_se(), Err(BitsError::Eof));
        assert_eq!(r.skip(1), Err(BitsError::Eof));
        // A ue code cut in its suffix: nothing consumed.
        let data = bits("00000001");
        let mut r = BitReader::new(&data);
        assert_eq!(r.read_ue(), Err(BitsError::Eof));
        assert_eq!(r.position(), 0);
        // read_bits past the end does not move.
        let mut r = BitReader::new(&[0xFF]);
        assert_eq!(r.read_bits(9), Err(BitsError::Eof));
        assert_eq!(r.read_bits(8), Ok(0xFF));
        // All zeros: no terminating 1 bit.
        let mut r = BitReader::new(&[0, 0, 0]);
        assert_eq!(r.read_ue(), Err(BitsError::Eof));
    }

    #[test]
    fn emulation_prevention_removed() {
        assert_eq!(nal_to_rbsp(&[0x00, 0x00, 0x03, 0x01]), [0x00, 0x00, 0x01]);
        assert_eq!(
            nal_to_rbsp(&[0x00, 0x00, 0x03, 0x00, 0x00, 0x03]),
            [0x00, 0x00, 0x00, 0x00]
        );
        // 0x03 after a single zero, or after a removed 0x03, stays.
        assert_eq!(nal_to_rbsp(&[0x00, 0x03, 0x03]), [0x00, 0x03, 0x03]);
        assert_eq!(
            nal_to_rbsp(&[0x00, 0x00, 0x03, 0x03, 0x00, 0x00, 0x03, 0x00]),
            [0x00, 0x00, 0x03, 0x00, 0x00, 0x00]
        );
        // Three zeros before the 03 (escaped stream never has that, but handle it): 03 dropped.
        assert_eq!(nal_to_rbsp(&[0x00, 0x00, 0x00, 0x03]), [0x00, 0x00, 0x00]);
        assert_eq!(nal_to_rbsp(&[]), Vec::<u8>::new());
        // The real x264 320x240 SPS carries `00 00 03 00 10`.
        let sps = [0x64, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00];
        assert_eq!(
            nal_to_rbsp(&sps),
            [0x64, 0x10, 0x00, 0x00, 0x00, 0x10, 0x00]
        );
    }

    #[test]
    fn more_rbsp_data_finds_stop_bit() {
        // payload "1" then stop bit: 1 1 000000
        let data = [0b1100_0000];
        let mut r = BitReader::new(&data);
        assert!(r.more_rbsp_data());
        assert_eq!(r.read_bit(), Ok(true));
        assert!(!r.more_rbsp_data());
        // Trailing zero bytes (cabac_zero_words) after the stop bit are ignored.
        let data = [0b0101_0000, 0x80, 0x00, 0x00];
        let mut r = BitReader::new(&data);
        assert_eq!(r.skip(8), Ok(()));
        assert!(!r.more_rbsp_data());
        assert!(!BitReader::new(&[0, 0]).more_rbsp_data());
    }
}
