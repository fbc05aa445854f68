//! Well-formedness of AVCC data and avcC records.

/// The NAL units of an AVCC buffer (4-byte big-endian lengths); panics unless the lengths
/// exactly fill it and every NAL is non-empty.
pub fn nals(avcc: &[u8]) -> Vec<&[u8]> {
    let mut rest = avcc;
    let mut out = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "AVCC: truncated length field");
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        assert!(len > 0, "AVCC: empty NAL unit");
        assert!(
            rest.len() >= 4 + len,
            "AVCC: NAL length {len} overruns the buffer"
        );
        out.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    out
}

/// Checks an AVCDecoderConfigurationRecord: version 1, one SPS and one PPS whose lengths stay
/// inside the record, profile/level copied from the SPS. Returns `(sps, pps)`.
pub fn record(rec: &[u8]) -> (&[u8], &[u8]) {
    assert!(rec.len() >= 7, "avcC: too short");
    assert_eq!(rec[0], 1, "avcC: configurationVersion");
    assert_eq!(rec[4] & 0x03, 3, "avcC: lengthSizeMinusOne must be 3");
    assert_eq!(rec[5] & 0x1F, 1, "avcC: one SPS");
    let sps_len = usize::from(u16::from_be_bytes([rec[6], rec[7]]));
    let sps = rec.get(8..8 + sps_len).expect("avcC: SPS overruns");
    assert!(sps.len() >= 4 && sps[0] & 0x1F == 7, "avcC: not an SPS");
    assert_eq!(
        &rec[1..4],
        &sps[1..4],
        "avcC: profile/compat/level differ from the SPS"
    );
    let at = 8 + sps_len;
    assert_eq!(rec.get(at), Some(&1), "avcC: one PPS");
    let pps_len = usize::from(u16::from_be_bytes([rec[at + 1], rec[at + 2]]));
    let pps = rec
        .get(at + 3..at + 3 + pps_len)
        .expect("avcC: PPS overruns");
    assert!(!pps.is_empty() && pps[0] & 0x1F == 8, "avcC: not a PPS");
    (sps, pps)
}
