//! Framing: where one MQTT control packet ends and the next begins (2.2).
//!
//! Owns: the fixed header's variable-length Remaining Length (2.2.3) in both
//! directions, and the size limit check that must happen as soon as a fixed header is
//! complete, before the body is buffered.
//!
//! Must not: look at the packet type or the body (that is [`super::decode`]), allocate,
//! or own a buffer: it only inspects the bytes it is given.

/// The largest value the four-byte Remaining Length can carry (2.2.3).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Where one packet sits at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Packet type (high nibble) and flags (low nibble).
    pub first_byte: u8,
    /// Length of the fixed header: the first byte plus 1 to 4 length bytes.
    pub header_len: usize,
    /// The Remaining Length: bytes of variable header and payload after the fixed header.
    pub remaining_len: usize,
}

impl Frame {
    /// Length of the whole packet, fixed header included.
    pub fn total_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Why the start of a buffer is not an acceptable packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The Remaining Length would need a fifth byte (2.2.3).
    #[error("malformed remaining length: more than 4 bytes")]
    MalformedRemainingLength,
    /// The whole packet would be larger than the configured limit.
    #[error("packet of {size} bytes exceeds the limit of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
}

/// Parses the fixed header at the start of `buf` without any size limit.
///
/// `Ok(None)` when more bytes are needed to finish the header.
pub(crate) fn parse_header(buf: &[u8]) -> Result<Option<Frame>, FrameError> {
    let Some((&first_byte, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let mut value: usize = 0;
    for (i, &byte) in rest.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some(Frame {
                first_byte,
                header_len: i + 2,
                remaining_len: value,
            }));
        }
    }
    if rest.len() >= 4 {
        // Four bytes seen and the fourth still has the continuation bit.
        Err(FrameError::MalformedRemainingLength)
    } else {
        Ok(None)
    }
}

/// Looks at the start of `buf`: `Ok(None)` if the fixed header is not complete yet (need
/// more bytes), `Ok(Some(frame))` when the header is complete (the body may not be
/// buffered yet: the caller checks `buf.len() >= frame.total_len()`), `Err` when the
/// remaining length is malformed or `total_len() > max_packet_bytes`. The size check
/// happens as soon as the header is known, before the body arrives.
pub fn check_frame(buf: &[u8], max_packet_bytes: usize) -> Result<Option<Frame>, FrameError> {
    match parse_header(buf)? {
        None => Ok(None),
        Some(frame) if frame.total_len() > max_packet_bytes => Err(FrameError::PacketTooLarge {
            size: frame.total_len(),
            max: max_packet_bytes,
        }),
        Some(frame) => Ok(Some(frame)),
    }
}

/// Number of bytes [`encode_remaining_length`] writes for `len`.
pub fn remaining_length_len(len: usize) -> usize {
    debug_assert!(
        len <= MAX_REMAINING_LENGTH,
        "remaining length {len} too large"
    );
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `len` as a Remaining Length (2.2.3): 7 bits per byte, least significant
/// first, high bit set on every byte but the last.
pub fn encode_remaining_length(len: usize, out: &mut Vec<u8>) {
    debug_assert!(
        len <= MAX_REMAINING_LENGTH,
        "remaining length {len} too large"
    );
    let mut x = len;
    loop {
        let byte = (x & 0x7F) as u8;
        x >>= 7;
        if x == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_boundaries_round_trip() {
        let cases = [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (MAX_REMAINING_LENGTH, 4),
        ];
        for (len, bytes) in cases {
            let mut buf = vec![0x30];
            encode_remaining_length(len, &mut buf);
            assert_eq!(buf.len(), 1 + bytes, "{len}");
            assert_eq!(remaining_length_len(len), bytes, "{len}");
            let frame = check_frame(&buf, usize::MAX).unwrap().unwrap();
            assert_eq!(
                frame,
                Frame {
                    first_byte: 0x30,
                    header_len: 1 + bytes,
                    remaining_len: len
                }
            );
            // Every strict prefix of the header is incomplete.
            for cut in 0..buf.len() {
                assert_eq!(
                    check_frame(&buf[..cut], usize::MAX),
                    Ok(None),
                    "{len} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn known_encodings() {
        // Examples from table 2.4.
        let mut v = Vec::new();
        encode_remaining_length(321, &mut v);
        assert_eq!(v, [0xC1, 0x02]);
        v.clear();
        encode_remaining_length(MAX_REMAINING_LENGTH, &mut v);
        assert_eq!(v, [0xFF, 0xFF, 0xFF, 0x7F]);
    }

    #[test]
    fn five_byte_remaining_length_is_rejected() {
        // 2.2.3: at most four bytes.
        let buf = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
        assert_eq!(
            check_frame(&buf, usize::MAX),
            Err(FrameError::MalformedRemainingLength)
        );
        // Rejected as soon as the fourth byte shows a continuation, without the fifth.
        assert_eq!(
            check_frame(&buf[..5], usize::MAX),
            Err(FrameError::MalformedRemainingLength)
        );
        assert_eq!(check_frame(&buf[..4], usize::MAX), Ok(None));
    }

    #[test]
    fn too_large_is_rejected_from_the_header_alone() {
        let claimed = 200 * 1024 * 1024;
        let mut header = vec![0x30];
        encode_remaining_length(claimed, &mut header);
        assert_eq!(header.len(), 5);
        assert_eq!(
            check_frame(&header, 1024 * 1024),
            Err(FrameError::PacketTooLarge {
                size: claimed + 5,
                max: 1024 * 1024
            })
        );
        // The limit applies to the whole packet, fixed header included.
        assert_eq!(
            check_frame(&[0xC0, 0x00], 1),
            Err(FrameError::PacketTooLarge { size: 2, max: 1 })
        );
        assert!(check_frame(&[0xC0, 0x00], 2).unwrap().is_some());
    }

    #[test]
    fn empty_buffer_needs_more() {
        assert_eq!(check_frame(&[], 0), Ok(None));
    }
}
