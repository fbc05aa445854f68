//! H.264 (ISO/IEC 14496-10) repacking: Annex-B access units → AVCC (4-byte NAL lengths),
//! SPS/PPS extraction, AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.2.4.1), keyframes.
//!
//! Contract: pure and panic-free on any input. One output allocation (and one copy) per access
//! unit; parameter sets are copied only when they change.

use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::bits::{BitReader, BitsError, nal_to_rbsp};

/// `nal_unit_type` of a non-IDR coded slice.
pub const NAL_SLICE: u8 = 1;
/// `nal_unit_type` of an IDR coded slice (a keyframe).
pub const NAL_IDR: u8 = 5;
/// `nal_unit_type` of an SEI message.
pub const NAL_SEI: u8 = 6;
/// `nal_unit_type` of a sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// `nal_unit_type` of a picture parameter set.
pub const NAL_PPS: u8 = 8;
/// `nal_unit_type` of an access unit delimiter (dropped by [`H264Repacker::push`]).
pub const NAL_AUD: u8 = 9;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum H264Error {
    /// No NAL unit found (no start code, or empty).
    Empty,
    /// A parameter set could not be parsed.
    BadSps(&'static str),
    BadPps(&'static str),
    /// A frame arrived before any SPS/PPS was seen.
    NoParameterSets,
}

impl std::fmt::Display for H264Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// What a sequence header carries; a new one is produced whenever the SPS or PPS changes.
#[derive(Clone, Debug, PartialEq)]
pub struct AvcConfig {
    /// AVCDecoderConfigurationRecord (configurationVersion=1, lengthSizeMinusOne=3).
    pub record: Bytes,
    pub width: u32,
    pub height: u32,
    pub profile_idc: u8,
    pub level_idc: u8,
    /// From the SPS VUI timing info when present (time_scale / (2 * num_units_in_tick)).
    pub frame_rate: Option<f64>,
}

/// One access unit in AVCC form: each NAL prefixed by its 4-byte big-endian length. AUD NAL
/// units (type 9) are dropped; SPS/PPS/SEI stay in-band. The buffer keeps
/// [`AvcFrame::HEADROOM`] bytes in front of the AVCC data, so the FLV video tag header is
/// written there, not copied in front ([`AvcFrame::into_tagged`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvcFrame {
    buf: BytesMut,
    /// Contains an IDR slice (nal_unit_type 5).
    pub keyframe: bool,
}

impl AvcFrame {
    /// Size of the header [`AvcFrame::into_tagged`] writes in front of the AVCC data (an FLV
    /// AVC video tag header).
    pub const HEADROOM: usize = 5;
    /// Bytes reserved in front of the AVCC data: the header, rounded up so the data starts
    /// 8-byte aligned (the copy into the buffer measured ~8 % slower at offset 5).
    const RESERVED: usize = 8;

    /// A frame from AVCC data (copied once, behind the headroom).
    pub fn from_avcc(avcc: &[u8], keyframe: bool) -> AvcFrame {
        let mut buf = BytesMut::with_capacity(Self::RESERVED + avcc.len());
        buf.put_bytes(0, Self::RESERVED);
        buf.put_slice(avcc);
        AvcFrame { buf, keyframe }
    }

    /// The AVCC data.
    pub fn data(&self) -> &[u8] {
        self.buf.get(Self::RESERVED..).unwrap_or_default()
    }

    /// `header` followed by the AVCC data, without copying the data.
    pub fn into_tagged(mut self, header: [u8; Self::HEADROOM]) -> Bytes {
        let skip = Self::RESERVED - Self::HEADROOM;
        if let Some(h) = self.buf.get_mut(skip..Self::RESERVED) {
            h.copy_from_slice(&header);
        }
        self.buf.advance(skip);
        self.buf.freeze()
    }
}

/// The fields of a sequence parameter set this crate uses (§7.3.2.1.1, §E.1.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    /// The byte after profile_idc: constraint_set0..5 flags and 2 reserved bits.
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub sps_id: u32,
    /// 0 = monochrome, 1 = 4:2:0, 2 = 4:2:2, 3 = 4:4:4 (1 when the profile does not code it).
    pub chroma_format_idc: u8,
    pub separate_colour_plane: bool,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    pub frame_mbs_only: bool,
    /// Display size: coded macroblocks minus the frame cropping rectangle.
    pub width: u32,
    pub height: u32,
    /// `(num_units_in_tick, time_scale)` from the VUI when present and both non-zero.
    pub timing: Option<(u32, u32)>,
}

impl SpsInfo {
    /// `time_scale / (2 * num_units_in_tick)` (frame rate for frame-coded streams).
    pub fn frame_rate(&self) -> Option<f64> {
        self.timing
            .map(|(units, scale)| f64::from(scale) / (2.0 * f64::from(units)))
    }
}

/// Converts Annex-B access units to AVCC and tracks the active SPS/PPS.
#[derive(Default)]
pub struct H264Repacker {
    /// Current SPS NAL unit (header byte included, emulation prevention kept).
    sps: Option<Vec<u8>>,
    sps_info: Option<SpsInfo>,
    /// Current PPS NAL unit.
    pps: Option<Vec<u8>>,
    /// The parameter sets changed and no `AvcConfig` was returned for them yet.
    announce: bool,
    /// Scratch: NAL unit ranges of the access unit being converted.
    nals: Vec<Range<usize>>,
}

/// What one pass over an access unit's NAL units found.
struct AuSummary {
    /// Output size: 4 + NAL length per kept (non-AUD) NAL.
    avcc_len: usize,
    keyframe: bool,
    sps: Option<Range<usize>>,
    pps: Option<Range<usize>>,
}

impl H264Repacker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Converts one access unit (one PES payload, Annex-B). Returns `Some(config)` when this
    /// unit carries an SPS/PPS different from the last one (first one included).
    ///
    /// The first SPS and first PPS of the unit become the current ones (a later change replaces
    /// them again). Errors, with the unit to be dropped: [`H264Error::Empty`] when it holds no
    /// NAL unit besides AUDs; [`H264Error::BadSps`] / [`H264Error::BadPps`] when a changed
    /// parameter set does not parse (the current ones are kept);
    /// [`H264Error::NoParameterSets`] while no SPS and PPS have been seen. If the parameter sets
    /// change but the unit is refused, the config is returned with the next accepted unit.
    pub fn push(&mut self, annexb: &[u8]) -> Result<(Option<AvcConfig>, AvcFrame), H264Error> {
        let mut nals = std::mem::take(&mut self.nals);
        split_annexb(annexb, &mut nals);
        let result = self.convert(annexb, &nals);
        self.nals = nals;
        result
    }

    fn convert(
        &mut self,
        annexb: &[u8],
        nals: &[Range<usize>],
    ) -> Result<(Option<AvcConfig>, AvcFrame), H264Error> {
        let summary = summarize(annexb, nals)?;
        let sps = summary.sps.clone().and_then(|r| annexb.get(r));
        let pps = summary.pps.clone().and_then(|r| annexb.get(r));
        self.update_parameter_sets(sps, pps)?;
        let config = self.take_config()?;
        let frame = AvcFrame {
            buf: write_avcc(annexb, nals, summary.avcc_len),
            keyframe: summary.keyframe,
        };
        Ok((config, frame))
    }

    /// Validates and stores the unit's SPS/PPS when they differ from the current ones. Atomic:
    /// on error nothing changes.
    fn update_parameter_sets(
        &mut self,
        sps: Option<&[u8]>,
        pps: Option<&[u8]>,
    ) -> Result<(), H264Error> {
        let new_sps = sps.filter(|s| self.sps.as_deref() != Some(*s));
        let new_pps = pps.filter(|p| self.pps.as_deref() != Some(*p));
        let info = new_sps.map(parse_sps).transpose()?;
        if let Some(p) = new_pps {
            check_pps(p)?;
        }
        if let (Some(s), Some(info)) = (new_sps, info) {
            self.sps = Some(s.to_vec());
            self.sps_info = Some(info);
            self.announce = true;
        }
        if let Some(p) = new_pps {
            self.pps = Some(p.to_vec());
            self.announce = true;
        }
        Ok(())
    }

    /// `Some(config)` once per parameter-set change; errors while SPS or PPS is unknown.
    fn take_config(&mut self) -> Result<Option<AvcConfig>, H264Error> {
        let (Some(sps), Some(info), Some(pps)) = (&self.sps, &self.sps_info, &self.pps) else {
            return Err(H264Error::NoParameterSets);
        };
        if !self.announce {
            return Ok(None);
        }
        self.announce = false;
        Ok(Some(AvcConfig {
            record: build_avc_record(sps, pps, info),
            width: info.width,
            height: info.height,
            profile_idc: info.profile_idc,
            level_idc: info.level_idc,
            frame_rate: info.frame_rate(),
        }))
    }
}

/// One pass over the NAL units: output size, keyframe flag, first SPS and first PPS.
fn summarize(annexb: &[u8], nals: &[Range<usize>]) -> Result<AuSummary, H264Error> {
    let mut summary = AuSummary {
        avcc_len: 0,
        keyframe: false,
        sps: None,
        pps: None,
    };
    for range in nals {
        let Some(nal) = annexb.get(range.clone()) else {
            continue;
        };
        match nal_type(nal) {
            Some(NAL_AUD) | None => continue,
            Some(NAL_IDR) => summary.keyframe = true,
            Some(NAL_SPS) => {
                summary.sps.get_or_insert(range.clone());
            }
            Some(NAL_PPS) => {
                summary.pps.get_or_insert(range.clone());
            }
            Some(_) => {}
        }
        // A NAL longer than a u32 length field can hold cannot be framed: refuse the unit.
        if u32::try_from(nal.len()).is_err() {
            return Err(H264Error::Empty);
        }
        summary.avcc_len += 4 + nal.len();
    }
    if summary.avcc_len == 0 {
        return Err(H264Error::Empty);
    }
    Ok(summary)
}

/// Writes the kept NAL units, each behind its 4-byte big-endian length, into one buffer of
/// exactly `len` bytes.
/// The AVCC data behind [`AvcFrame::RESERVED`] reserved bytes.
fn write_avcc(annexb: &[u8], nals: &[Range<usize>], len: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(AvcFrame::RESERVED + len);
    out.put_bytes(0, AvcFrame::RESERVED);
    for range in nals {
        let Some(nal) = annexb.get(range.clone()) else {
            continue;
        };
        if matches!(nal_type(nal), Some(NAL_AUD) | None) {
            continue;
        }
        let Ok(nal_len) = u32::try_from(nal.len()) else {
            continue;
        };
        out.put_u32(nal_len);
        out.put_slice(nal);
    }
    out
}

/// `nal_unit_type` (low 5 bits of the header byte); `None` for an empty slice.
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1F)
}

/// Position of the next `00 00 01` at or after `from`. Emulation prevention keeps this
/// pattern out of NAL payloads, so it is searched with memchr's vectorised substring search
/// (most of an access unit's bytes are scanned here; a byte-wise scan was 70 % of the media
/// core's time in benches/core.rs).
/// The searcher is built once: `memmem::find` builds one per call, which was 0.4 % of the relays'
/// samples at 16 streams (one call per NAL unit).
fn find_start_code(data: &[u8], from: usize) -> Option<usize> {
    static START_CODE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(&[0, 0, 1]));
    let tail = data.get(from..)?;
    START_CODE.find(tail).map(|p| p + from)
}

/// Appends to `out` the byte ranges of the NAL units in an Annex-B buffer (start codes of 3 or
/// 4 bytes). Bytes before the first start code are ignored; trailing zero bytes before a start
/// code or the end (`trailing_zero_8bits`, the leading zero of a 4-byte start code) are not part
/// of a NAL; empty NAL units are skipped. `out` is cleared first.
pub fn split_annexb(data: &[u8], out: &mut Vec<Range<usize>>) {
    out.clear();
    let Some(first) = find_start_code(data, 0) else {
        return;
    };
    let mut start = first + 3;
    loop {
        let next = find_start_code(data, start);
        let mut end = next.unwrap_or(data.len());
        while end > start && data.get(end - 1) == Some(&0) {
            end -= 1;
        }
        if end > start {
            out.push(start..end);
        }
        match next {
            Some(n) => start = n + 3,
            None => break,
        }
    }
}

fn sps_err(e: BitsError) -> H264Error {
    match e {
        BitsError::Eof => H264Error::BadSps("truncated"),
        BitsError::Overflow => H264Error::BadSps("exp-Golomb value out of range"),
    }
}

/// Profiles whose SPS codes chroma_format_idc, bit depths and scaling matrices (§7.3.2.1.1).
fn has_high_profile_fields(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

/// Parses a sequence parameter set NAL unit (header byte included, emulation prevention
/// present). Reads through the VUI timing info; a VUI that is cut short or malformed only
/// leaves `timing` as `None`. Errors are [`H264Error::BadSps`].
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, H264Error> {
    if nal_type(nal) != Some(NAL_SPS) {
        return Err(H264Error::BadSps("not an SPS NAL unit"));
    }
    if nal.len() < 4 {
        return Err(H264Error::BadSps("truncated"));
    }
    if nal.len() > usize::from(u16::MAX) {
        return Err(H264Error::BadSps("longer than 65535 bytes"));
    }
    let rbsp = nal_to_rbsp(nal.get(1..).unwrap_or_default());
    let mut r = BitReader::new(&rbsp);
    let profile_idc = r.read_u8().map_err(sps_err)?;
    let constraint_flags = r.read_u8().map_err(sps_err)?;
    let level_idc = r.read_u8().map_err(sps_err)?;
    let sps_id = r.read_ue().map_err(sps_err)?;
    if sps_id > 31 {
        return Err(H264Error::BadSps("seq_parameter_set_id > 31"));
    }
    let chroma = if has_high_profile_fields(profile_idc) {
        read_chroma_fields(&mut r)?
    } else {
        ChromaFields::default()
    };
    skip_frame_num_and_poc(&mut r)?;
    let geometry = read_geometry(&mut r, &chroma)?;
    let timing = read_vui_timing(&mut r).ok().flatten();
    Ok(SpsInfo {
        profile_idc,
        constraint_flags,
        level_idc,
        sps_id,
        chroma_format_idc: chroma.chroma_format_idc,
        separate_colour_plane: chroma.separate_colour_plane,
        bit_depth_luma: chroma.bit_depth_luma,
        bit_depth_chroma: chroma.bit_depth_chroma,
        frame_mbs_only: geometry.frame_mbs_only,
        width: geometry.width,
        height: geometry.height,
        timing,
    })
}

struct ChromaFields {
    chroma_format_idc: u8,
    separate_colour_plane: bool,
    bit_depth_luma: u8,
    bit_depth_chroma: u8,
}

impl Default for ChromaFields {
    /// The values implied when the profile does not code them: 4:2:0, 8 bits.
    fn default() -> Self {
        Self {
            chroma_format_idc: 1,
            separate_colour_plane: false,
            bit_depth_luma: 8,
            bit_depth_chroma: 8,
        }
    }
}

/// chroma_format_idc .. seq_scaling_matrix_present_flag (and the lists, skipped).
fn read_chroma_fields(r: &mut BitReader<'_>) -> Result<ChromaFields, H264Error> {
    let chroma_format_idc = r.read_ue().map_err(sps_err)?;
    let chroma_format_idc = u8::try_from(chroma_format_idc)
        .ok()
        .filter(|c| *c <= 3)
        .ok_or(H264Error::BadSps("chroma_format_idc > 3"))?;
    let separate_colour_plane = chroma_format_idc == 3 && r.read_bit().map_err(sps_err)?;
    let bit_depth_luma = read_bit_depth(r)?;
    let bit_depth_chroma = read_bit_depth(r)?;
    r.skip(1).map_err(sps_err)?; // qpprime_y_zero_transform_bypass_flag
    if r.read_bit().map_err(sps_err)? {
        let lists = if chroma_format_idc == 3 { 12 } else { 8 };
        for i in 0..lists {
            if r.read_bit().map_err(sps_err)? {
                skip_scaling_list(r, if i < 6 { 16 } else { 64 })?;
            }
        }
    }
    Ok(ChromaFields {
        chroma_format_idc,
        separate_colour_plane,
        bit_depth_luma,
        bit_depth_chroma,
    })
}

/// bit_depth_*_minus8 (0..=6) → bit depth.
fn read_bit_depth(r: &mut BitReader<'_>) -> Result<u8, H264Error> {
    let minus8 = r.read_ue().map_err(sps_err)?;
    u8::try_from(minus8)
        .ok()
        .filter(|d| *d <= 6)
        .map(|d| d + 8)
        .ok_or(H264Error::BadSps("bit depth > 14"))
}

/// scaling_list() (§7.3.2.1.1.1): reads the delta_scale values without keeping them.
fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), H264Error> {
    let mut last_scale: i32 = 8;
    let mut next_scale: i32 = 8;
    for _ in 0..size {
        if next_scale != 0 {
            let delta = r.read_se().map_err(sps_err)?;
            if !(-128..=127).contains(&delta) {
                return Err(H264Error::BadSps("delta_scale out of range"));
            }
            next_scale = (last_scale + delta).rem_euclid(256);
        }
        if next_scale != 0 {
            last_scale = next_scale;
        }
    }
    Ok(())
}

/// log2_max_frame_num_minus4 .. the picture order count fields.
fn skip_frame_num_and_poc(r: &mut BitReader<'_>) -> Result<(), H264Error> {
    if r.read_ue().map_err(sps_err)? > 12 {
        return Err(H264Error::BadSps("log2_max_frame_num_minus4 > 12"));
    }
    match r.read_ue().map_err(sps_err)? {
        0 => {
            if r.read_ue().map_err(sps_err)? > 12 {
                return Err(H264Error::BadSps("log2_max_pic_order_cnt_lsb_minus4 > 12"));
            }
        }
        1 => {
            r.skip(1).map_err(sps_err)?; // delta_pic_order_always_zero_flag
            r.read_se().map_err(sps_err)?; // offset_for_non_ref_pic
            r.read_se().map_err(sps_err)?; // offset_for_top_to_bottom_field
            let cycle = r.read_ue().map_err(sps_err)?;
            if cycle > 255 {
                return Err(H264Error::BadSps(
                    "num_ref_frames_in_pic_order_cnt_cycle > 255",
                ));
            }
            for _ in 0..cycle {
                r.read_se().map_err(sps_err)?; // offset_for_ref_frame
            }
        }
        2 => {}
        _ => return Err(H264Error::BadSps("pic_order_cnt_type > 2")),
    }
    Ok(())
}

struct Geometry {
    frame_mbs_only: bool,
    width: u32,
    height: u32,
}

/// max_num_ref_frames .. frame cropping; computes the display size (§7.4.2.1.1, eq. 7-19..7-22).
fn read_geometry(r: &mut BitReader<'_>, chroma: &ChromaFields) -> Result<Geometry, H264Error> {
    r.read_ue().map_err(sps_err)?; // max_num_ref_frames
    r.skip(1).map_err(sps_err)?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.read_ue().map_err(sps_err)?) + 1;
    let height_map_units = u64::from(r.read_ue().map_err(sps_err)?) + 1;
    let frame_mbs_only = r.read_bit().map_err(sps_err)?;
    if !frame_mbs_only {
        r.skip(1).map_err(sps_err)?; // mb_adaptive_frame_field_flag
    }
    r.skip(1).map_err(sps_err)?; // direct_8x8_inference_flag
    let mut crop = [0u64; 4]; // left, right, top, bottom
    if r.read_bit().map_err(sps_err)? {
        for c in &mut crop {
            *c = u64::from(r.read_ue().map_err(sps_err)?);
        }
    }
    let field_factor: u64 = if frame_mbs_only { 1 } else { 2 };
    let (unit_x, unit_y) = crop_units(chroma, field_factor);
    let [left, right, top, bottom] = crop;
    let width = cropped(width_mbs * 16, unit_x * (left + right))?;
    let height = cropped(
        field_factor * height_map_units * 16,
        unit_y * (top + bottom),
    )?;
    Ok(Geometry {
        frame_mbs_only,
        width,
        height,
    })
}

/// (CropUnitX, CropUnitY) from ChromaArrayType (§7.4.2.1.1).
fn crop_units(chroma: &ChromaFields, field_factor: u64) -> (u64, u64) {
    let chroma_array_type = if chroma.separate_colour_plane {
        0
    } else {
        chroma.chroma_format_idc
    };
    let (sub_width_c, sub_height_c) = match chroma_array_type {
        0 => (1, 1),
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    (sub_width_c, sub_height_c * field_factor)
}

/// `coded - crop`, which must be positive and fit a u32.
fn cropped(coded: u64, crop: u64) -> Result<u32, H264Error> {
    coded
        .checked_sub(crop)
        .filter(|v| *v > 0)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(H264Error::BadSps("frame size or cropping out of range"))
}

/// vui_parameters_present_flag and the VUI up to timing info (§E.1.1). `Ok(None)` when there is
/// no VUI, no timing info, or a zero tick/scale.
fn read_vui_timing(r: &mut BitReader<'_>) -> Result<Option<(u32, u32)>, BitsError> {
    if !r.read_bit()? {
        return Ok(None);
    }
    if r.read_bit()? {
        // aspect_ratio_info_present_flag
        if r.read_bits(8)? == 255 {
            r.skip(32)?; // Extended_SAR: sar_width, sar_height
        }
    }
    if r.read_bit()? {
        r.skip(1)?; // overscan_appropriate_flag
    }
    if r.read_bit()? {
        r.skip(4)?; // video_format, video_full_range_flag
        if r.read_bit()? {
            r.skip(24)?; // colour_primaries, transfer_characteristics, matrix_coefficients
        }
    }
    if r.read_bit()? {
        r.read_ue()?; // chroma_sample_loc_type_top_field
        r.read_ue()?; // chroma_sample_loc_type_bottom_field
    }
    if !r.read_bit()? {
        return Ok(None);
    }
    let num_units_in_tick = r.read_bits(32)?;
    let time_scale = r.read_bits(32)?;
    Ok((num_units_in_tick != 0 && time_scale != 0).then_some((num_units_in_tick, time_scale)))
}

/// Minimal PPS check: a PPS NAL unit whose pic_parameter_set_id (≤ 255) and
/// seq_parameter_set_id (≤ 31) parse, at most 65535 bytes long.
fn check_pps(nal: &[u8]) -> Result<(), H264Error> {
    if nal_type(nal) != Some(NAL_PPS) {
        return Err(H264Error::BadPps("not a PPS NAL unit"));
    }
    if nal.len() > usize::from(u16::MAX) {
        return Err(H264Error::BadPps("longer than 65535 bytes"));
    }
    let rbsp = nal_to_rbsp(nal.get(1..).unwrap_or_default());
    let mut r = BitReader::new(&rbsp);
    let pps_id = r.read_ue().map_err(|_| H264Error::BadPps("truncated"))?;
    let sps_id = r.read_ue().map_err(|_| H264Error::BadPps("truncated"))?;
    if pps_id > 255 || sps_id > 31 {
        return Err(H264Error::BadPps("parameter set id out of range"));
    }
    Ok(())
}

/// Builds the AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.2.4.1) for one SPS and one
/// PPS the way ffmpeg's `ff_isom_write_avcc` does: version 1, profile / compatibility / level
/// copied from SPS bytes 1..4, `0xFF` (lengthSizeMinusOne = 3), `0xE1` (one SPS), length + SPS,
/// `1`, length + PPS; then, for every profile except 66/77/88 (ffmpeg's test, a superset of
/// the spec's 100/110/122/144), `0xFC | chroma_format_idc`, `0xF8 | bit_depth_luma_minus8`,
/// `0xF8 | bit_depth_chroma_minus8`, `0` (no SPS extensions).
///
/// `sps`/`pps` must be at most 65535 bytes (longer ones are cut in the length field; the
/// repacker never passes such). The record is allocated once, at its exact size.
pub fn build_avc_record(sps: &[u8], pps: &[u8], info: &SpsInfo) -> Bytes {
    let extension = !matches!(info.profile_idc, 66 | 77 | 88);
    let len = 6 + 2 + sps.len() + 1 + 2 + pps.len() + if extension { 4 } else { 0 };
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(1);
    match sps.get(1..4) {
        Some(bytes) => out.put_slice(bytes),
        None => out.put_slice(&[info.profile_idc, info.constraint_flags, info.level_idc]),
    }
    out.put_u8(0xFF);
    out.put_u8(0xE1);
    out.put_u16(u16::try_from(sps.len()).unwrap_or(u16::MAX));
    out.put_slice(sps);
    out.put_u8(1);
    out.put_u16(u16::try_from(pps.len()).unwrap_or(u16::MAX));
    out.put_slice(pps);
    if extension {
        out.put_u8(0xFC | (info.chroma_format_idc & 0x03));
        out.put_u8(0xF8 | (info.bit_depth_luma.wrapping_sub(8) & 0x07));
        out.put_u8(0xF8 | (info.bit_depth_chroma.wrapping_sub(8) & 0x07));
        out.put_u8(0);
    }
    out.freeze()
}

#[cfg(test)]
#[path = "h264_tests.rs"]
mod tests;
