//! Names a drive cannot spell. exFAT and FAT refuse `" * : < > ? \ |` and control characters
//! in a name, and the bytes of a name that is not UTF-8. The pocket keeps such names all the
//! same: on the drive each of those characters is stored as a look-alike from Unicode's private
//! use area, the mapping Apple's SMB client and Samba (`fruit:encoding = private`) use for the
//! same purpose (SFM): `:` is U+F022, `?` U+F025, and so on; a byte that is not UTF-8 is
//! U+F080 + (byte - 0x80). The journal, the mount and the backups see the real names. A name
//! that really holds one of these private-use characters (U+F001-U+F029, U+F080-U+F0FF) is
//! read as what it stands for. A name ending in a space or a period is left as it is (Linux's
//! exFAT drivers keep it; Windows cannot open it): mapping it would hide such files already on
//! the drive.

use std::borrow::Cow;

/// The SFM mapping of the characters exFAT refuses (after the control characters).
const SPECIAL: [(u8, u32); 8] = [
    (b'"', 0xF020),
    (b'*', 0xF021),
    (b':', 0xF022),
    (b'<', 0xF023),
    (b'>', 0xF024),
    (b'?', 0xF025),
    (b'\\', 0xF026),
    (b'|', 0xF027),
];
const TRAILING_SPACE: u32 = 0xF028;
const TRAILING_PERIOD: u32 = 0xF029;
const RAW_BYTE: u32 = 0xF080;

fn needs_mapping(b: u8) -> bool {
    b < 0x20 || SPECIAL.iter().any(|(c, _)| *c == b)
}

/// A name as the drive stores it.
pub fn to_drive(name: &[u8]) -> Cow<'_, [u8]> {
    if name.iter().all(|&b| b < 0x80 && !needs_mapping(b)) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                c if (c as u32) < 0x20 => out.push(pua(0xF000 + c as u32)),
                c if c.is_ascii() && needs_mapping(c as u8) => {
                    let (_, to) = SPECIAL.iter().find(|(f, _)| *f == c as u8).expect("listed");
                    out.push(pua(*to));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push(pua(RAW_BYTE + u32::from(*b) - 0x80));
        }
    }
    if out.as_bytes() == name {
        return Cow::Borrowed(name);
    }
    Cow::Owned(out.into_bytes())
}

/// A name as the pocket has it, from the drive's.
pub fn from_drive(name: &[u8]) -> Cow<'_, [u8]> {
    // Every character mapped is U+F0xx: 0xEF 0x80..0x83 in UTF-8.
    if !name.contains(&0xEF) {
        return Cow::Borrowed(name);
    }
    let Ok(s) = std::str::from_utf8(name) else {
        return Cow::Borrowed(name);
    };
    let mut out = Vec::with_capacity(name.len());
    for c in s.chars() {
        let u = c as u32;
        match u {
            0xF001..=0xF01F => out.push((u - 0xF000) as u8),
            0xF020..=0xF027 => out.push(SPECIAL[(u - 0xF020) as usize].0),
            TRAILING_SPACE => out.push(b' '),
            TRAILING_PERIOD => out.push(b'.'),
            0xF080..=0xF0FF => out.push((u - RAW_BYTE + 0x80) as u8),
            _ => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    Cow::Owned(out)
}

/// A path of the pocket ('/'-separated names) as the drive stores it.
pub fn path_to_drive(path: &[u8]) -> Cow<'_, [u8]> {
    map_path(path, to_drive)
}

/// A path the drive stores ('/'-separated), as the pocket has it.
pub fn path_from_drive(path: &[u8]) -> Cow<'_, [u8]> {
    map_path(path, from_drive)
}

/// Each name of `path` through `f`; the path itself where no name changes.
fn map_path<'a>(path: &'a [u8], f: fn(&[u8]) -> Cow<'_, [u8]>) -> Cow<'a, [u8]> {
    let parts: Vec<Cow<'a, [u8]>> = path.split(|&b| b == b'/').map(f).collect();
    if parts.iter().all(|p| matches!(p, Cow::Borrowed(_))) {
        return Cow::Borrowed(path);
    }
    Cow::Owned(parts.join(&b'/'))
}

fn pua(u: u32) -> char {
    char::from_u32(u).expect("a private-use code point")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_exfat_refuses_make_the_round_trip_and_plain_ones_are_left_alone() {
        for name in [
            &b"12:30 meeting.txt"[..],
            b"what?",
            b"a\"b*c<d>e\\f|g",
            b"tab\there",
            b"caf\xe9 latin-1",
            b"\xff",
            "r\u{e9}sum\u{e9} \u{1F600}.odt".as_bytes(),
        ] {
            let drive = to_drive(name);
            let d = std::str::from_utf8(&drive).expect("the drive's name is UTF-8");
            assert!(
                !d.chars()
                    .any(|c| (c as u32) < 0x20 || "\"*:<>?\\|".contains(c)),
                "{d:?}"
            );
            assert_eq!(from_drive(&drive), name, "{name:?} -> {d:?}");
        }
        for plain in [
            &b"notes.txt"[..],
            b".",
            b"..",
            b".hidden",
            b"trailing. ",
            "\u{e9}t\u{e9}".as_bytes(),
        ] {
            assert!(matches!(to_drive(plain), Cow::Borrowed(_)), "{plain:?}");
            assert!(matches!(from_drive(plain), Cow::Borrowed(_)), "{plain:?}");
        }
        assert_eq!(to_drive(b"a:b").as_ref(), "a\u{F022}b".as_bytes());
        assert_eq!(
            path_to_drive(b"docs/12:30/x").as_ref(),
            "docs/12\u{F022}30/x".as_bytes()
        );
    }
}
