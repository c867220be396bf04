//! The 16-byte header every benchmark payload starts with.
//!
//! Layout (big-endian): send timestamp in ns since the generator epoch (u64), the
//! publisher's sequence number (u32, from 0) and the publisher id (u32). The rest of
//! the payload is filler. In open-loop runs the timestamp is the *scheduled* send time,
//! so latency includes any delay the generator itself added (no coordinated omission).

/// Bytes taken by the header; also the smallest allowed `--payload`.
pub const HEADER_LEN: usize = 16;

/// What a subscriber learns from one received payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// ns since the generator's epoch.
    pub ts_ns: u64,
    /// Per-publisher sequence number, from 0.
    pub seq: u32,
    /// Publisher index in the run's plan.
    pub publisher: u32,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    /// Returns `None` if `out` is too short.
    pub fn write(&self, out: &mut [u8]) -> Option<()> {
        let h = out.get_mut(..HEADER_LEN)?;
        h[0..8].copy_from_slice(&self.ts_ns.to_be_bytes());
        h[8..12].copy_from_slice(&self.seq.to_be_bytes());
        h[12..16].copy_from_slice(&self.publisher.to_be_bytes());
        Some(())
    }

    /// Reads the header from the front of a payload; `None` if it is too short
    /// (a message that is not ours).
    pub fn read(payload: &[u8]) -> Option<Header> {
        let h = payload.get(..HEADER_LEN)?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let u32_at = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&h[i..i + 4]);
            u32::from_be_bytes(b)
        };
        Some(Header {
            ts_ns: u64_at(0),
            seq: u32_at(8),
            publisher: u32_at(12),
        })
    }
}

/// A payload template of `len` bytes (at least [`HEADER_LEN`]): zero header, filler after.
pub fn template(len: usize) -> Vec<u8> {
    let len = len.max(HEADER_LEN);
    (0..len)
        .map(|i| {
            if i < HEADER_LEN {
                0
            } else {
                b'a' + ((i - HEADER_LEN) % 26) as u8
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header {
            ts_ns: 0x0102_0304_0506_0708,
            seq: 0xDEAD_BEEF,
            publisher: 77,
        };
        let mut p = template(64);
        assert_eq!(p.len(), 64);
        h.write(&mut p).unwrap();
        assert_eq!(Header::read(&p), Some(h));
        assert_eq!(&p[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p[16], b'a');
    }

    #[test]
    fn short_payloads_are_refused() {
        assert_eq!(Header::read(&[0u8; 15]), None);
        let mut short = [0u8; 10];
        let h = Header {
            ts_ns: 1,
            seq: 2,
            publisher: 3,
        };
        assert_eq!(h.write(&mut short), None);
        assert_eq!(template(3).len(), HEADER_LEN);
    }
}
