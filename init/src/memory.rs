//! PID 1's own memory: once the services are up, the pages of its code and read-only data
//! that boot and the services' start-up touched once (netlink, trust, storage, spawning)
//! are handed back. They are file pages of the slot's `/bin/twinwall` (squashfs page
//! cache after the re-exec), so PID 1 faults in again only what the supervisor touches
//! later.
//!
//! A read-only mapping without private copies (smaps `Anonymous: 0 kB`: the text, the
//! read-only data) is unmapped with `MADV_DONTNEED`: the pages leave PID 1's resident set
//! but stay in the page cache, which the services — the same binary — share.
//! `MADV_PAGEOUT`, used before (just before the first service started), also evicted
//! them from the cache: the page-out and the ruleset one-shot's re-reads from the
//! squashfs cost 0.4-1.8 s under load (docs/init.md), and it cannot drop pages another
//! process maps too, so it had to run before the services. A
//! mapping holding private copies (the RELRO segment, relocated at start-up and then
//! made read-only) must never be dropped — its relocated contents would be lost — so it
//! only gets `MADV_PAGEOUT`, which leaves anonymous pages alone without swap.

use std::ops::Range;

/// One read-only mapping of the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRange {
    /// Its addresses.
    pub range: Range<usize>,
    /// No private (anonymous) pages in it: dropping its pages loses nothing.
    pub clean: bool,
}

/// The file-backed, non-writable mappings of `exe` in `/proc/self/smaps` text, each with
/// whether it holds private copies. Pure.
pub fn image_ranges(smaps: &str, exe: &str) -> Vec<ImageRange> {
    let mut out: Vec<ImageRange> = Vec::new();
    // Whether the mapping whose fields follow is one of ours.
    let mut current = false;
    for l in smaps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let header = f
            .first()
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| {
                Some(usize::from_str_radix(a, 16).ok()?..usize::from_str_radix(b, 16).ok()?)
            });
        if let Some(range) = header.filter(|_| f.len() >= 5) {
            current = f.get(5) == Some(&exe) && !f[1].contains('w');
            if current {
                out.push(ImageRange {
                    range,
                    // Unknown until its Anonymous: line says otherwise: assume dirty.
                    clean: false,
                });
            }
            continue;
        }
        if current
            && f.first() == Some(&"Anonymous:")
            && let Some(last) = out.last_mut()
        {
            last.clean = f.get(1) == Some(&"0");
        }
    }
    out
}

/// Hands PID 1's own read-only image back to the kernel (module doc); returns the bytes
/// advised. Failures (an old kernel without `MADV_PAGEOUT`) are logged and ignored.
pub fn page_out_own_image() -> usize {
    let (Ok(smaps), Ok(exe)) = (
        std::fs::read_to_string("/proc/self/smaps"),
        std::fs::read_link("/proc/self/exe"),
    ) else {
        return 0;
    };
    let mut total = 0;
    for r in image_ranges(&smaps, &exe.to_string_lossy()) {
        let len = r.range.end - r.range.start;
        let advice = if r.clean {
            libc::MADV_DONTNEED
        } else {
            libc::MADV_PAGEOUT
        };
        // SAFETY: the range is one of this process's own read-only mappings, as
        // /proc/self/smaps lists it. MADV_DONTNEED is given only to a mapping with no
        // private pages (smaps Anonymous: 0, and being read-only it cannot gain any), so
        // every page it drops is re-read unchanged from the file on the next access;
        // MADV_PAGEOUT only reclaims clean file pages. No memory Rust code relies on
        // changes.
        let rc = unsafe { libc::madvise(r.range.start as *mut libc::c_void, len, advice) };
        if rc == 0 {
            total += len;
        } else {
            tracing::info!(error = %std::io::Error::last_os_error(), advice, "madvise refused");
            break;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_mappings_of_the_binary_and_whether_they_are_clean() {
        let smaps = "\
55d0c0000000-55d0c0100000 r--p 00000000 00:1a 12 /bin/twinwall
Size:               1024 kB
Rss:                 400 kB
Anonymous:             0 kB
55d0c0100000-55d0c0800000 r-xp 00100000 00:1a 12 /bin/twinwall
Size:               7168 kB
Anonymous:             0 kB
55d0c0800000-55d0c0880000 r--p 00800000 00:1a 12 /bin/twinwall
Size:                512 kB
Anonymous:           512 kB
55d0c0880000-55d0c0900000 rw-p 00880000 00:1a 12 /bin/twinwall
Anonymous:            20 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0                          [heap]
Anonymous:          1024 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7f0000000000-7f0000001000 r--p 00000000 00:1a 99 /etc/services
Anonymous:             0 kB
";
        let r = |a: usize, b: usize, clean: bool| ImageRange { range: a..b, clean };
        assert_eq!(
            image_ranges(smaps, "/bin/twinwall"),
            [
                r(0x55d0c0000000, 0x55d0c0100000, true),
                r(0x55d0c0100000, 0x55d0c0800000, true),
                // The relocated RELRO: private copies, never dropped.
                r(0x55d0c0800000, 0x55d0c0880000, false),
            ]
        );
        assert!(image_ranges(smaps, "/other").is_empty());
    }

    #[test]
    fn a_mapping_whose_anonymous_line_is_missing_counts_as_dirty() {
        let smaps = "00400000-00500000 r-xp 00000000 08:01 7 /bin/x\nSize: 1024 kB\n";
        assert!(!image_ranges(smaps, "/bin/x")[0].clean);
    }

    fn rss_file_kb() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The test binary's own image is handed back and the process goes on running (its
    /// code faults back in from the page cache): its resident file pages drop.
    #[test]
    fn handing_back_our_own_image_drops_resident_file_pages() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let ranges = image_ranges(&smaps, &exe.to_string_lossy());
        assert!(ranges.iter().any(|r| r.clean), "{ranges:?}");
        let before = rss_file_kb();
        let n = page_out_own_image();
        let after = rss_file_kb();
        assert!(n > 0);
        assert!(after < before, "RssFile {before} kB -> {after} kB");
    }
}
