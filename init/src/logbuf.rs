//! A bounded byte ring for a service's captured stdout/stderr: the newest `capacity` bytes
//! are kept, older output is dropped (and counted) so a chatty service cannot grow PID 1.

use std::collections::VecDeque;

/// Default bytes kept per service.
pub const DEFAULT_CAPACITY: usize = 64 * 1024;

/// The newest bytes a service wrote.
#[derive(Debug, Clone)]
pub struct LogRing {
    buf: VecDeque<u8>,
    capacity: usize,
    dropped: u64,
}

impl LogRing {
    /// An empty ring holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> LogRing {
        LogRing {
            buf: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            dropped: 0,
        }
    }

    /// Appends output, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.capacity {
            self.dropped += (data.len() - self.capacity) as u64;
            &data[data.len() - self.capacity..]
        } else {
            data
        };
        let over = (self.buf.len() + data.len()).saturating_sub(self.capacity);
        if over > 0 {
            self.buf.drain(..over);
            self.dropped += over as u64;
        }
        self.buf.extend(data);
    }

    /// Bytes dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The held output as text. After a drop the first, partial line is skipped.
    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut all = Vec::with_capacity(a.len() + b.len());
        all.extend_from_slice(a);
        all.extend_from_slice(b);
        let start = if self.dropped > 0 {
            all.iter().position(|&c| c == b'\n').map_or(0, |p| p + 1)
        } else {
            0
        };
        String::from_utf8_lossy(&all[start..]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_bytes_within_capacity() {
        let mut r = LogRing::new(16);
        r.push(b"line one\n");
        r.push(b"line two\n");
        assert_eq!(r.len(), 16);
        assert_eq!(r.dropped(), 2);
        assert_eq!(r.text(), "line two\n");
        r.push(&[b'x'; 40]);
        assert_eq!(r.len(), 16);
        assert_eq!(r.dropped(), 2 + 9 + 7 + 24);
    }

    #[test]
    fn no_drop_keeps_everything() {
        let mut r = LogRing::new(100);
        r.push(b"a\nb");
        assert_eq!(r.text(), "a\nb");
        assert_eq!(r.dropped(), 0);
    }
}
