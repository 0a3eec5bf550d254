//! What the WinFsp front-end translates, as plain functions that build and are tested on every
//! platform: Windows error codes to NTSTATUS, file attributes and times to and from the
//! journal's metadata, and the rules for names (what Windows refuses, the hidden pocket folder,
//! names as the journal stores them). The adapter in `winfsp.rs` stays a thin caller of these.

use journal::{Kind, Meta};

/// NTSTATUS values the front-end answers with (ntstatus.h).
pub mod status {
    pub const SUCCESS: i32 = 0;
    pub const INVALID_HANDLE: i32 = 0xC000_0008_u32 as i32;
    pub const INVALID_PARAMETER: i32 = 0xC000_000D_u32 as i32;
    pub const ACCESS_DENIED: i32 = 0xC000_0022_u32 as i32;
    pub const OBJECT_NAME_INVALID: i32 = 0xC000_0033_u32 as i32;
    pub const OBJECT_NAME_NOT_FOUND: i32 = 0xC000_0034_u32 as i32;
    pub const OBJECT_NAME_COLLISION: i32 = 0xC000_0035_u32 as i32;
    pub const OBJECT_PATH_NOT_FOUND: i32 = 0xC000_003A_u32 as i32;
    pub const SHARING_VIOLATION: i32 = 0xC000_0043_u32 as i32;
    pub const DISK_FULL: i32 = 0xC000_007F_u32 as i32;
    pub const FILE_INVALID: i32 = 0xC000_0098_u32 as i32;
    pub const MEDIA_WRITE_PROTECTED: i32 = 0xC000_00A2_u32 as i32;
    pub const DEVICE_NOT_READY: i32 = 0xC000_00A3_u32 as i32;
    pub const FILE_IS_A_DIRECTORY: i32 = 0xC000_00BA_u32 as i32;
    pub const NOT_SUPPORTED: i32 = 0xC000_00BB_u32 as i32;
    pub const DIRECTORY_NOT_EMPTY: i32 = 0xC000_0101_u32 as i32;
    pub const NOT_A_DIRECTORY: i32 = 0xC000_0103_u32 as i32;
    pub const NAME_TOO_LONG: i32 = 0xC000_0106_u32 as i32;
    pub const CANNOT_DELETE: i32 = 0xC000_0121_u32 as i32;
    pub const IO_DEVICE_ERROR: i32 = 0xC000_0185_u32 as i32;
}

/// The NTSTATUS for a Win32 error code (what `std::io::Error::raw_os_error` holds on
/// Windows). Codes without a closer match are I/O errors: the application sees a failure,
/// never a success.
pub fn ntstatus_from_win32(code: u32) -> i32 {
    use status::*;
    match code {
        0 => SUCCESS,
        2 => OBJECT_NAME_NOT_FOUND,        // ERROR_FILE_NOT_FOUND
        3 => OBJECT_PATH_NOT_FOUND,        // ERROR_PATH_NOT_FOUND
        5 => ACCESS_DENIED,                // ERROR_ACCESS_DENIED
        6 => INVALID_HANDLE,               // ERROR_INVALID_HANDLE
        19 => MEDIA_WRITE_PROTECTED,       // ERROR_WRITE_PROTECT
        21 | 1167 => DEVICE_NOT_READY,     // ERROR_NOT_READY, DEVICE_NOT_CONNECTED
        32 | 33 => SHARING_VIOLATION,      // ERROR_SHARING_VIOLATION, LOCK_VIOLATION
        39 | 112 => DISK_FULL,             // ERROR_HANDLE_DISK_FULL, ERROR_DISK_FULL
        50 => NOT_SUPPORTED,               // ERROR_NOT_SUPPORTED
        80 | 183 => OBJECT_NAME_COLLISION, // ERROR_FILE_EXISTS, ERROR_ALREADY_EXISTS
        87 => INVALID_PARAMETER,           // ERROR_INVALID_PARAMETER
        123 => OBJECT_NAME_INVALID,        // ERROR_INVALID_NAME
        145 => DIRECTORY_NOT_EMPTY,        // ERROR_DIR_NOT_EMPTY
        206 => NAME_TOO_LONG,              // ERROR_FILENAME_EXCED_RANGE
        267 => NOT_A_DIRECTORY,            // ERROR_DIRECTORY
        _ => IO_DEVICE_ERROR,
    }
}

/// The NTSTATUS for an I/O error: its OS code where it has one, else its kind.
pub fn ntstatus_from_io(e: &std::io::Error) -> i32 {
    if cfg!(windows) {
        if let Some(code) = e.raw_os_error() {
            return ntstatus_from_win32(code as u32);
        }
    }
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => status::OBJECT_NAME_NOT_FOUND,
        K::PermissionDenied => status::ACCESS_DENIED,
        K::AlreadyExists => status::OBJECT_NAME_COLLISION,
        K::InvalidInput => status::INVALID_PARAMETER,
        K::Unsupported => status::NOT_SUPPORTED,
        K::StorageFull => status::DISK_FULL,
        K::DirectoryNotEmpty => status::DIRECTORY_NOT_EMPTY,
        K::NotADirectory => status::NOT_A_DIRECTORY,
        K::IsADirectory => status::FILE_IS_A_DIRECTORY,
        K::InvalidFilename => status::OBJECT_NAME_INVALID,
        K::ReadOnlyFilesystem => status::MEDIA_WRITE_PROTECTED,
        _ => status::IO_DEVICE_ERROR,
    }
}

/// The NTSTATUS for a journal failure: a full drive is a full disk, anything else an I/O
/// error (the change was not made durable, and the application must know).
pub fn ntstatus_from_journal(e: &journal::Error) -> i32 {
    match e {
        journal::Error::DiskFull => status::DISK_FULL,
        _ => status::IO_DEVICE_ERROR,
    }
}

/// FILE_ATTRIBUTE_* flags (winnt.h).
pub mod attr {
    pub const READONLY: u32 = 0x1;
    pub const HIDDEN: u32 = 0x2;
    pub const DIRECTORY: u32 = 0x10;
    pub const ARCHIVE: u32 = 0x20;
    pub const NORMAL: u32 = 0x80;
    pub const REPARSE_POINT: u32 = 0x400;
}

/// The attributes Windows shows for a file the journal describes.
pub fn attributes_of(meta: &Meta) -> u32 {
    let mut a = match meta.kind {
        Kind::Dir => attr::DIRECTORY,
        Kind::Symlink => attr::REPARSE_POINT,
        _ => 0,
    };
    if meta.kind != Kind::Dir && meta.perm & 0o222 == 0 {
        a |= attr::READONLY;
    }
    if a == 0 {
        a = attr::NORMAL;
    }
    a
}

/// The permission bits after Windows set `attributes`: READONLY takes the write bits away,
/// clearing it gives the owner's back. Everything else the mode holds stays.
pub fn perm_after(perm: u32, attributes: u32) -> u32 {
    if attributes & attr::READONLY != 0 {
        perm & !0o222
    } else if perm & 0o222 == 0 {
        perm | 0o200
    } else {
        perm
    }
}

/// Why a name cannot be created on Windows (it could on Linux: pockets travel between both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    TooLong,
    /// `< > : " / \ | ? *` or a control character.
    ForbiddenCharacter(u16),
    /// CON, PRN, AUX, NUL, COM1-9, LPT1-9, with or without an extension.
    Reserved,
    /// Windows drops a trailing dot or space, so the file would get another name.
    TrailingDotOrSpace,
}

/// Checks a name (one path component, UTF-16) against Windows' rules.
pub fn check_name(name: &[u16]) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if name.len() > 255 {
        return Err(NameProblem::TooLong);
    }
    if let Some(&c) = name
        .iter()
        .find(|&&c| c < 0x20 || "<>:\"/\\|?*".encode_utf16().any(|f| f == c))
    {
        return Err(NameProblem::ForbiddenCharacter(c));
    }
    if matches!(name.last(), Some(&c) if c == u16::from(b'.') || c == u16::from(b' '))
        && name != [u16::from(b'.')]
        && name != [u16::from(b'.'), u16::from(b'.')]
    {
        return Err(NameProblem::TrailingDotOrSpace);
    }
    let stem: String = String::from_utf16_lossy(name)
        .split('.')
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && matches!(stem.as_bytes()[3], b'1'..=b'9'));
    if reserved {
        return Err(NameProblem::Reserved);
    }
    Ok(())
}

impl NameProblem {
    /// What the application is told.
    pub fn ntstatus(self) -> i32 {
        match self {
            NameProblem::TooLong => status::NAME_TOO_LONG,
            _ => status::OBJECT_NAME_INVALID,
        }
    }
}

/// Whether a root entry is the pocket's own folder. Windows compares names without case, so
/// `.BACKPOCKET` is the same folder and is hidden and protected too.
pub fn is_pocket_dir(name: &[u16]) -> bool {
    String::from_utf16(name).is_ok_and(|n| n.eq_ignore_ascii_case(journal::POCKET_DIR))
}

/// A WinFsp path (`\folder\file`) as components.
pub fn components(path: &[u16]) -> impl Iterator<Item = &[u16]> {
    path.split(|&c| c == u16::from(b'\\') || c == u16::from(b'/'))
        .filter(|c| !c.is_empty())
}

/// A name as the journal stores it (WTF-8: every NTFS name round-trips).
pub fn journal_name(name: &[u16]) -> Vec<u8> {
    journal::wtf8::encode(name)
}

/// The UTF-16 name of a journal name. None for bytes that are not WTF-8 (a name made on Linux
/// that Windows cannot spell).
pub fn windows_name(bytes: &[u8]) -> Option<Vec<u16>> {
    journal::wtf8::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn win32_errors_map_to_the_statuses_applications_expect() {
        assert_eq!(ntstatus_from_win32(2), status::OBJECT_NAME_NOT_FOUND);
        assert_eq!(ntstatus_from_win32(3), status::OBJECT_PATH_NOT_FOUND);
        assert_eq!(ntstatus_from_win32(112), status::DISK_FULL);
        assert_eq!(ntstatus_from_win32(145), status::DIRECTORY_NOT_EMPTY);
        assert_eq!(ntstatus_from_win32(183), status::OBJECT_NAME_COLLISION);
        // A pulled drive is "not ready", not "not found": nothing was deleted.
        assert_eq!(ntstatus_from_win32(21), status::DEVICE_NOT_READY);
        assert_eq!(ntstatus_from_win32(1167), status::DEVICE_NOT_READY);
        // Unknown failures are failures.
        assert_eq!(ntstatus_from_win32(9999), status::IO_DEVICE_ERROR);
        for s in [
            status::DISK_FULL,
            status::ACCESS_DENIED,
            status::IO_DEVICE_ERROR,
        ] {
            assert!(s < 0, "error statuses have the severity bits set");
        }
    }

    #[test]
    fn io_and_journal_errors_map_by_kind() {
        let e = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(ntstatus_from_io(&e), status::OBJECT_NAME_NOT_FOUND);
        let e = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(ntstatus_from_io(&e), status::DISK_FULL);
        assert_eq!(
            ntstatus_from_journal(&journal::Error::DiskFull),
            status::DISK_FULL
        );
    }

    fn meta(kind: Kind, perm: u32) -> Meta {
        Meta {
            kind,
            perm,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            rdev: 0,
        }
    }

    #[test]
    fn attributes_follow_kind_and_write_bits() {
        assert_eq!(attributes_of(&meta(Kind::File, 0o644)), attr::NORMAL);
        assert_eq!(attributes_of(&meta(Kind::File, 0o444)), attr::READONLY);
        assert_eq!(attributes_of(&meta(Kind::Dir, 0o555)), attr::DIRECTORY);
        assert_eq!(
            attributes_of(&meta(Kind::Symlink, 0o777)),
            attr::REPARSE_POINT
        );
        assert_eq!(perm_after(0o644, attr::READONLY), 0o444);
        assert_eq!(perm_after(0o444, attr::NORMAL), 0o644);
        assert_eq!(perm_after(0o640, attr::ARCHIVE), 0o640);
        assert_eq!(
            perm_after(0o4755, attr::READONLY),
            0o4555,
            "special bits stay"
        );
    }

    #[test]
    fn filetimes_round_trip() {
        use journal::{filetime_to_unix_ns, unix_ns_to_filetime};
        assert_eq!(unix_ns_to_filetime(0), 116_444_736_000_000_000);
        assert_eq!(filetime_to_unix_ns(116_444_736_000_000_000), 0);
        let t = 1_795_000_000_123_456_700;
        assert_eq!(filetime_to_unix_ns(unix_ns_to_filetime(t)), t);
        // Before 1970 too (every i64 of nanoseconds is after 1601).
        let old = -2_000_000_000_123_456_700;
        assert_eq!(filetime_to_unix_ns(unix_ns_to_filetime(old)), old);
        assert!(unix_ns_to_filetime(i64::MIN) > 0);
    }

    #[test]
    fn names_windows_refuses() {
        assert_eq!(check_name(&w("report.txt")), Ok(()));
        assert_eq!(check_name(&w(".hidden")), Ok(()));
        assert_eq!(check_name(&w("CONSOLE")), Ok(()));
        assert_eq!(check_name(&w("")), Err(NameProblem::Empty));
        assert_eq!(
            check_name(&w("a:b")),
            Err(NameProblem::ForbiddenCharacter(u16::from(b':')))
        );
        assert_eq!(
            check_name(&w("a\u{1}b")),
            Err(NameProblem::ForbiddenCharacter(1))
        );
        assert_eq!(check_name(&w("nul")), Err(NameProblem::Reserved));
        assert_eq!(check_name(&w("Com3.txt")), Err(NameProblem::Reserved));
        assert_eq!(check_name(&w("LPT9")), Err(NameProblem::Reserved));
        assert_eq!(check_name(&w("LPT0")), Ok(()));
        assert_eq!(
            check_name(&w("draft.")),
            Err(NameProblem::TrailingDotOrSpace)
        );
        assert_eq!(
            check_name(&w("draft ")),
            Err(NameProblem::TrailingDotOrSpace)
        );
        assert_eq!(
            check_name(&vec![u16::from(b'a'); 256]),
            Err(NameProblem::TooLong)
        );
        assert_eq!(NameProblem::TooLong.ntstatus(), status::NAME_TOO_LONG);
    }

    #[test]
    fn the_pocket_folder_is_hidden_in_any_case() {
        assert!(is_pocket_dir(&w(".backpocket")));
        assert!(is_pocket_dir(&w(".BackPocket")));
        assert!(!is_pocket_dir(&w(".backpocket2")));
        let parts: Vec<String> = components(&w("\\work\\draft.txt"))
            .map(String::from_utf16_lossy)
            .collect();
        assert_eq!(parts, ["work", "draft.txt"]);
        assert_eq!(components(&w("\\")).count(), 0);
    }

    #[test]
    fn names_round_trip_through_the_journal() {
        for name in ["plain", "été", "日本語.txt", "emoji 😀"] {
            let n = w(name);
            assert_eq!(journal_name(&n), name.as_bytes());
            assert_eq!(windows_name(name.as_bytes()).unwrap(), n);
        }
        // An unpaired surrogate is a legal NTFS name; it survives.
        let odd = vec![u16::from(b'a'), 0xD800, u16::from(b'b')];
        assert_eq!(windows_name(&journal_name(&odd)).unwrap(), odd);
        // Bytes a Linux file name may hold but Windows cannot spell.
        assert_eq!(windows_name(&[0xFF, 0x41]), None);
        assert_eq!(
            windows_name(&[0xC0, 0x80]),
            None,
            "overlong forms are refused"
        );
    }
}
