//! Names between Windows (UTF-16, where unpaired surrogates are legal) and the journal
//! (bytes): WTF-8, UTF-8 extended to keep a lone surrogate as its 3-byte form, so that every
//! name round-trips and names that are valid UTF-8 read the same on every system.

/// A name as the journal stores it: UTF-8, with an unpaired surrogate (legal in NTFS names)
/// kept as its 3-byte WTF-8 form, so every name round-trips.
pub fn encode(name: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for r in char::decode_utf16(name.iter().copied()) {
        match r {
            Ok(c) => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            Err(e) => {
                let u = u32::from(e.unpaired_surrogate());
                out.extend_from_slice(&[
                    0xE0 | (u >> 12) as u8,
                    0x80 | ((u >> 6) & 0x3F) as u8,
                    0x80 | (u & 0x3F) as u8,
                ]);
            }
        }
    }
    out
}

/// The UTF-16 name of a journal name: the inverse of [`encode`]. None for bytes that
/// are not WTF-8 (a name made on Linux that Windows cannot spell).
pub fn decode(bytes: &[u8]) -> Option<Vec<u16>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (len, init) = match b {
            0x00..=0x7F => (1, u32::from(b)),
            0xC2..=0xDF => (2, u32::from(b & 0x1F)),
            0xE0..=0xEF => (3, u32::from(b & 0x0F)),
            0xF0..=0xF4 => (4, u32::from(b & 0x07)),
            _ => return None,
        };
        let tail = bytes.get(i + 1..i + len)?;
        let mut c = init;
        for &t in tail {
            if t & 0xC0 != 0x80 {
                return None;
            }
            c = (c << 6) | u32::from(t & 0x3F);
        }
        let min = [0, 0, 0x80, 0x800, 0x10000][len];
        if c < min || c > 0x10FFFF {
            return None;
        }
        if (0xD800..=0xDFFF).contains(&c) {
            out.push(c as u16);
        } else {
            let ch = char::from_u32(c)?;
            let mut buf = [0; 2];
            out.extend_from_slice(ch.encode_utf16(&mut buf));
        }
        i += len;
    }
    Some(out)
}

/// A journal name as a Windows OS name (lossy only for bytes that are not WTF-8).
#[cfg(windows)]
pub fn to_os(bytes: &[u8]) -> std::ffi::OsString {
    use std::os::windows::ffi::OsStringExt;
    match decode(bytes) {
        Some(w) => std::ffi::OsString::from_wide(&w),
        None => std::ffi::OsString::from(String::from_utf8_lossy(bytes).into_owned()),
    }
}
