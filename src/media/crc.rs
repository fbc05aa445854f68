//! CRC-32/MPEG-2 as used by PSI sections (ISO/IEC 13818-1 Annex A): polynomial 0x04C11DB7,
//! initial value 0xFFFFFFFF, no input/output reflection, no final XOR.
//!
//! Property used by section checks: the CRC over a whole section *including* its trailing
//! big-endian CRC_32 field is 0.

/// Byte-wise lookup table, built at compile time.
const TABLE: [u32; 256] = build_table();

const fn build_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// CRC-32/MPEG-2 of `data`. Pure, total, never panics.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    data.iter().fold(0xFFFF_FFFF, |crc, &byte| {
        // The index is the top byte of the register XOR the input byte: always < 256.
        let index = usize::from(((crc >> 24) as u8) ^ byte);
        (crc << 8) ^ TABLE[index]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        // The standard catalogue check value for CRC-32/MPEG-2.
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
        assert_eq!(crc32_mpeg2(b""), 0xFFFF_FFFF);
    }

    #[test]
    fn residue_is_zero_with_crc_appended() {
        // A PAT from ffmpeg: program 1 → PMT PID 0x1000.
        let mut section = vec![
            0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00,
        ];
        let crc = crc32_mpeg2(&section);
        assert_eq!(crc, 0x2AB1_04B2);
        section.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(crc32_mpeg2(&section), 0);
    }
}
