//! What the filesystem a pocket lives on can keep. Portable drives come formatted exFAT or
//! FAT32 so that every computer can open them; those keep no modes, owners, symlinks, hard
//! links or xattrs, round times, fold the case of names, cannot preallocate, and number their
//! files anew at every mount. Found by trying each thing in a scratch folder on the drive
//! (what a filesystem claims and what its driver does differ: exFAT through FUSE accepts a
//! chmod and keeps nothing), and by the filesystem's type for what cannot be tried at once.

use std::io;
use std::path::Path;

/// The drive's abilities, as found by [`probe`]; kept by the pocket in `.backpocket/drive.toml`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriveTraits {
    /// The filesystem's type as the mount table names it, with what a FUSE block driver
    /// serves, read from the device's boot sector where it can be: "ext4", "exfat (fuseblk)".
    pub fs: String,
    /// Inode numbers survive unmounting: a file keeps its identity across plug-ins.
    pub stable_inodes: bool,
    /// chmod is kept.
    pub modes: bool,
    pub symlinks: bool,
    pub hard_links: bool,
    pub xattrs: bool,
    /// "A" and "a" name the same file.
    pub case_insensitive: bool,
    /// The finest modification time the drive keeps, in nanoseconds (FAT: 2 s).
    pub time_granularity_ns: u64,
    /// Blocks can be reserved without writing them (fallocate).
    pub preallocate: bool,
    /// The largest file the drive can hold, when it is small enough to matter (FAT32: 4 GiB
    /// less a byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_size: Option<u64>,
    /// Any name Linux allows can be made (exFAT and FAT refuse `" * : < > ? \ |`, control
    /// characters and names that are not UTF-8).
    #[serde(default = "yes")]
    pub any_name: bool,
}

fn yes() -> bool {
    true
}

impl DriveTraits {
    /// What a pocket on this drive cannot keep, in words for a user; empty for a POSIX
    /// filesystem. Unstable inode numbers are not a limit (the journal then knows files by
    /// path), nor are modes, owners and times where the journal keeps them
    /// ([`Self::kept_by_the_journal`]).
    pub fn limits(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (kept, what) in [
            // Where the journal keeps modes it keeps links too (as files of their targets).
            (self.symlinks || !self.modes, "symbolic links"),
            (self.hard_links, "hard links"),
            // Where the journal keeps modes it keeps xattrs too, not ACLs.
            (
                self.xattrs,
                if self.modes {
                    "extended attributes and ACLs"
                } else {
                    "ACLs"
                },
            ),
            (!self.case_insensitive, "names that differ only in case"),
        ] {
            if !kept {
                out.push(what.to_owned());
            }
        }
        if self.modes && self.time_granularity_ns > 1_000 {
            out.push(format!(
                "exact times (kept to {})",
                granularity_words(self.time_granularity_ns)
            ));
        }
        if let Some(max) = self.max_file_size {
            out.push(format!(
                "files over {} GiB",
                (max + 1) as f64 / (1u64 << 30) as f64
            ));
        }
        out
    }
}

impl DriveTraits {
    /// What a plain folder on this drive (a restore's target, no journal beside it) cannot
    /// keep, in words for a user; empty for a POSIX filesystem.
    pub fn lost_in_a_plain_folder(&self) -> Vec<&'static str> {
        [
            (self.modes, "modes, owners and exact times"),
            (
                self.symlinks,
                "symbolic links, fifos and devices (left out)",
            ),
            (self.hard_links, "hard links (made as copies)"),
            (self.xattrs, "extended attributes"),
            (self.any_name, "some names (made under look-alikes)"),
            (!self.case_insensitive, "names that differ only in case"),
        ]
        .into_iter()
        .filter_map(|(kept, what)| (!kept).then_some(what))
        .collect()
    }

    /// What the drive itself cannot keep but the pocket's journal keeps for it (a drive
    /// without modes: exFAT, FAT), in words for a user.
    pub fn kept_by_the_journal(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.modes {
            out.push("file modes and owners".to_owned());
            if self.time_granularity_ns > 1_000 {
                out.push(format!(
                    "exact times (the drive keeps them to {})",
                    granularity_words(self.time_granularity_ns)
                ));
            }
        }
        if !self.symlinks && !self.modes {
            out.push("symbolic links (as small files of their targets)".to_owned());
            out.push("fifos, sockets and devices (as empty files)".to_owned());
        }
        if !self.xattrs && !self.modes {
            out.push("extended attributes".to_owned());
        }
        if !self.any_name {
            out.push("names with \" * : < > ? \\ | or control characters".to_owned());
        }
        out
    }
}

fn granularity_words(ns: u64) -> String {
    match ns {
        n if n >= 1_000_000_000 => format!("{} s", n / 1_000_000_000),
        n if n >= 1_000_000 => format!("{} ms", n / 1_000_000),
        n => format!("{} µs", n / 1_000),
    }
}

/// Tries what the filesystem holding `scratch`'s parent can keep, in `scratch` (a folder that
/// must not exist; removed again).
pub fn probe(scratch: &Path) -> io::Result<DriveTraits> {
    std::fs::create_dir(scratch)?;
    let res = probe_in(scratch);
    let _ = std::fs::remove_dir_all(scratch);
    res
}

fn probe_in(dir: &Path) -> io::Result<DriveTraits> {
    use std::os::unix::fs::PermissionsExt;
    let fs = fs_name(dir);
    let file = dir.join("Probe");
    std::fs::write(&file, b"backpocket")?;
    let modes = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).is_ok()
        && std::fs::metadata(&file)?.permissions().mode() & 0o7777 == 0o640;
    let symlinks = std::os::unix::fs::symlink("Probe", dir.join("link")).is_ok()
        && std::fs::symlink_metadata(dir.join("link"))?
            .file_type()
            .is_symlink();
    let hard_links = std::fs::hard_link(&file, dir.join("hard")).is_ok();
    let any_name = std::fs::write(dir.join("12:30 \"a|b\"?"), b"").is_ok();
    let xattrs = rustix::fs::setxattr(
        &file,
        "user.backpocket-probe",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok();
    let case_insensitive = std::fs::symlink_metadata(dir.join("pROBE")).is_ok();
    let time_granularity_ns = time_granularity(&file)?;
    let preallocate = {
        let f = std::fs::OpenOptions::new().write(true).open(&file)?;
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 1 << 16).is_ok()
    };
    let base = fs.split(' ').next().unwrap_or("");
    let stable_inodes = matches!(
        base,
        "ext2"
            | "ext3"
            | "ext4"
            | "xfs"
            | "btrfs"
            | "f2fs"
            | "zfs"
            | "ntfs3"
            | "tmpfs"
            | "bcachefs"
    );
    let max_file_size = matches!(base, "vfat" | "msdos" | "fat" | "fat12" | "fat16" | "fat32")
        .then_some((4u64 << 30) - 1);
    Ok(DriveTraits {
        fs,
        stable_inodes,
        modes,
        symlinks,
        hard_links,
        xattrs,
        case_insensitive,
        time_granularity_ns,
        preallocate,
        max_file_size,
        any_name,
    })
}

/// Sets a modification time with an odd second and every nanosecond digit, and finds the
/// coarsest step that reads back as that time rounded down.
fn time_granularity(file: &Path) -> io::Result<u64> {
    const WANT: u64 = 1_700_000_001_123_456_789;
    let f = std::fs::OpenOptions::new().write(true).open(file)?;
    let t = rustix::fs::Timespec {
        tv_sec: (WANT / 1_000_000_000) as _,
        tv_nsec: (WANT % 1_000_000_000) as _,
    };
    rustix::fs::futimens(
        &f,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
    )?;
    drop(f);
    let st = rustix::fs::stat(file)?;
    let got = st.st_mtime as u64 * 1_000_000_000 + st.st_mtime_nsec as u64;
    for step in [
        1,
        10,
        100,
        1_000,
        10_000,
        100_000,
        1_000_000,
        10_000_000,
        100_000_000,
        1_000_000_000,
        2_000_000_000,
    ] {
        if got == WANT / step * step || got == WANT.div_ceil(step) * step {
            return Ok(step);
        }
    }
    Ok(2_000_000_000)
}

/// The mount table's name for the filesystem holding `dir`; for a FUSE block driver
/// ("fuseblk"), the filesystem its device's boot sector names, when it can be read.
fn fs_name(dir: &Path) -> String {
    let Some((fstype, source)) = mount_of(dir) else {
        return "unknown".to_owned();
    };
    if fstype == "fuseblk" {
        if let Some(inner) = boot_sector_fs(Path::new(&source)) {
            return format!("{inner} (fuseblk)");
        }
    }
    fstype
}

/// The type and source of the mount holding `dir`: the mountinfo line with the longest mount
/// point that is a prefix of `dir` and lies on the same device.
fn mount_of(dir: &Path) -> Option<(String, String)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let dir = dir.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String, String)> = None;
    for line in info.lines() {
        let (left, right) = line.split_once(" - ")?;
        let mut l = left.split(' ');
        let (_, _, majmin, _, point) = (l.next()?, l.next()?, l.next()?, l.next()?, l.next()?);
        let point = unescape(point);
        let mut r = right.split(' ');
        let (fstype, source) = (r.next()?, unescape(r.next()?));
        let (maj, min) = majmin.split_once(':')?;
        let same_dev = rustix::fs::makedev(maj.parse().ok()?, min.parse().ok()?) == dev;
        if same_dev && dir.starts_with(&point) && best.as_ref().is_none_or(|b| point.len() >= b.0) {
            best = Some((point.len(), fstype.to_owned(), source));
        }
    }
    best.map(|(_, t, s)| (t, s))
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// exFAT, FAT12/16/32 or NTFS, from the first sector of a block device (root can read it).
fn boot_sector_fs(dev: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut sector = [0u8; 512];
    std::fs::File::open(dev)
        .ok()?
        .read_exact(&mut sector)
        .ok()?;
    if &sector[3..11] == b"EXFAT   " {
        Some("exfat")
    } else if &sector[3..11] == b"NTFS    " {
        Some("ntfs")
    } else if &sector[82..87] == b"FAT32"
        || &sector[54..59] == b"FAT16"
        || &sector[54..59] == b"FAT12"
    {
        Some("vfat")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_posix_folder_keeps_everything_but_says_its_type() {
        let tmp = tempfile::tempdir().unwrap();
        let t = probe(&tmp.path().join("probe")).unwrap();
        assert!(
            !tmp.path().join("probe").exists(),
            "the scratch folder stays"
        );
        assert!(t.modes && t.symlinks && t.hard_links, "{t:?}");
        assert!(!t.case_insensitive, "{t:?}");
        assert_ne!(t.fs, "unknown", "{t:?}");
    }

    #[test]
    fn mountinfo_escapes_are_read() {
        assert_eq!(unescape(r"/media/my\040drive"), "/media/my drive");
        assert_eq!(unescape(r"a\\b"), r"a\\b");
        assert_eq!(unescape(r"/x\011y"), "/x\ty");
    }

    #[test]
    fn limits_speak_of_what_fat_lacks() {
        let fat = DriveTraits {
            fs: "vfat".into(),
            stable_inodes: false,
            modes: false,
            symlinks: false,
            hard_links: false,
            xattrs: false,
            case_insensitive: true,
            time_granularity_ns: 2_000_000_000,
            preallocate: false,
            max_file_size: Some((4u64 << 30) - 1),
            any_name: false,
        };
        let l = fat.limits().join(", ");
        assert!(l.contains("hard links"), "{l}");
        // Modes, owners, times and links: the journal keeps them.
        assert!(
            !l.contains("modes") && !l.contains("times") && !l.contains("symbolic"),
            "{l}"
        );
        let k = fat.kept_by_the_journal().join(", ");
        assert!(
            k.contains("file modes and owners")
                && k.contains("exact times (the drive keeps them to 2 s)"),
            "{k}"
        );
        assert!(l.contains("files over 4 GiB"), "{l}");
        // The journal knows files by path there: identity is kept, so not a limit.
        assert!(!l.contains("identity"), "{l}");
    }
}
