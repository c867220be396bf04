//! Loss, duplicate and out-of-order accounting for one (publisher, subscriber) stream.
//!
//! Each received payload carries the publisher's sequence number. A [`Stream`] keeps a
//! bitmap of the sequence numbers seen (one bit per message, so 10 M messages cost
//! 1.25 MB) and the highest one so far. A number seen twice is a duplicate; a new
//! number below the highest is out of order. Loss is only known at the end, after a
//! drain period: messages the publisher sent minus distinct messages received.

/// One subscriber's streams, by publisher. Looked up once per received message:
/// foldhash, as the broker's maps (`FastMap`), not the default SipHash.
pub type Streams = crate::broker::FastMap<u32, Stream>;

/// What one received sequence number was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// First time seen, in order.
    New,
    /// First time seen, but after a higher number (still counts as received).
    OutOfOrder,
    /// Seen before.
    Duplicate,
}

/// The receive state of one (publisher, subscriber) stream.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    seen: Vec<u64>,
    highest: Option<u32>,
    /// Distinct messages received.
    pub distinct: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl Stream {
    /// Records the arrival of `seq`.
    pub fn record(&mut self, seq: u32) -> Outcome {
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if word >= self.seen.len() {
            let want = (word + 1).max(self.seen.len() * 2);
            self.seen.resize(want, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return Outcome::Duplicate;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        match self.highest {
            Some(h) if seq < h => {
                self.out_of_order += 1;
                Outcome::OutOfOrder
            }
            _ => {
                self.highest = Some(seq);
                Outcome::New
            }
        }
    }

    /// Messages sent (`expected`) but never received; sequence numbers are 0-based, so
    /// a publisher that sent `expected` messages used 0..expected.
    pub fn lost(&self, expected: u64) -> u64 {
        expected.saturating_sub(self.distinct)
    }
}

/// The totals over all streams of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Deliveries the subscribers should have received.
    pub expected: u64,
    /// Distinct deliveries received.
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl Tally {
    /// Adds one stream whose publisher sent `expected` messages.
    pub fn add(&mut self, stream: Option<&Stream>, expected: u64) {
        self.expected += expected;
        match stream {
            Some(s) => {
                self.received += s.distinct;
                self.lost += s.lost(expected);
                self.duplicates += s.duplicates;
                self.out_of_order += s.out_of_order;
            }
            None => self.lost += expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream() {
        let mut s = Stream::default();
        for i in 0..1000 {
            assert_eq!(s.record(i), Outcome::New);
        }
        assert_eq!((s.distinct, s.duplicates, s.out_of_order), (1000, 0, 0));
        assert_eq!(s.lost(1000), 0);
    }

    #[test]
    fn gaps_duplicates_and_reordering() {
        let mut s = Stream::default();
        let arrivals = [0, 1, 3, 2, 2, 5, 0, 200];
        let got: Vec<Outcome> = arrivals.iter().map(|&q| s.record(q)).collect();
        use Outcome::*;
        assert_eq!(
            got,
            vec![New, New, New, OutOfOrder, Duplicate, New, Duplicate, New]
        );
        assert_eq!(s.distinct, 6); // 0 1 2 3 5 200
        assert_eq!(s.duplicates, 2);
        assert_eq!(s.out_of_order, 1);
        // The publisher sent 0..=200: 195 never arrived.
        assert_eq!(s.lost(201), 195);
    }

    #[test]
    fn tally_counts_missing_streams_as_lost() {
        let mut a = Stream::default();
        for q in [0, 1, 1, 3] {
            a.record(q);
        }
        let mut t = Tally::default();
        t.add(Some(&a), 4);
        t.add(None, 10);
        assert_eq!(
            t,
            Tally {
                expected: 14,
                received: 3,
                lost: 11,
                duplicates: 1,
                out_of_order: 0
            }
        );
    }
}
