//! PID 1's own memory: after the boot phases, the pages of its code and read-only data
//! that boot touched once (netlink, trust, storage code) are handed back with
//! `madvise(MADV_PAGEOUT)`. They are clean file pages of the slot's `/bin/twinwall`
//! (squashfs page cache after the re-exec), so the kernel drops them and faults in again
//! only what the supervisor touches later.

use std::ops::Range;

/// The file-backed, non-writable mappings of `exe` in `/proc/self/maps` text. Pure.
pub fn image_ranges(maps: &str, exe: &str) -> Vec<Range<usize>> {
    maps.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (range, perms, path) = (f.first()?, f.get(1)?, f.get(5)?);
            if *path != exe || perms.contains('w') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some(usize::from_str_radix(a, 16).ok()?..usize::from_str_radix(b, 16).ok()?)
        })
        .collect()
}

/// Advises the kernel to page out PID 1's own read-only image; returns the bytes advised.
/// Failures (an old kernel without `MADV_PAGEOUT`) are logged and ignored.
pub fn page_out_own_image() -> usize {
    let (Ok(maps), Ok(exe)) = (
        std::fs::read_to_string("/proc/self/maps"),
        std::fs::read_link("/proc/self/exe"),
    ) else {
        return 0;
    };
    let mut total = 0;
    for r in image_ranges(&maps, &exe.to_string_lossy()) {
        let len = r.end - r.start;
        // SAFETY: the range is one of this process's own mappings, as /proc/self/maps
        // lists it, and MADV_PAGEOUT only reclaims pages (file-backed and clean here, so
        // their contents are re-read from the file on the next access): no memory that
        // Rust code relies on changes.
        let rc = unsafe { libc::madvise(r.start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
        if rc == 0 {
            total += len;
        } else {
            tracing::info!(error = %std::io::Error::last_os_error(), "madvise(MADV_PAGEOUT) refused");
            break;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_mappings_of_the_binary() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 00:1a 12 /bin/twinwall
55d0c0100000-55d0c0800000 r-xp 00100000 00:1a 12 /bin/twinwall
55d0c0800000-55d0c0900000 rw-p 00800000 00:1a 12 /bin/twinwall
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7f0000000000-7f0000001000 r--p 00000000 00:1a 99 /etc/services
";
        assert_eq!(
            image_ranges(maps, "/bin/twinwall"),
            [
                0x55d0c0000000..0x55d0c0100000,
                0x55d0c0100000..0x55d0c0800000
            ]
        );
        assert!(image_ranges(maps, "/other").is_empty());
    }

    fn rss_file_kb() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The test binary's own text is paged out and the process goes on running: its
    /// resident file pages drop (what it touches afterwards faults back in).
    #[test]
    fn paging_out_our_own_image_drops_resident_file_pages() {
        let before = rss_file_kb();
        let n = page_out_own_image();
        let after = rss_file_kb();
        assert!(n > 0);
        assert!(after < before, "RssFile {before} kB -> {after} kB");
    }
}
