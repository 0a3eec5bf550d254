//! Windows rules that are plain logic, built and tested on every platform: where WinFsp can
//! mount a pocket.

use std::path::{Path, PathBuf};

/// Where a pocket is mounted on Windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountTarget {
    /// A drive letter, such as `P:`.
    Drive(char),
    /// A folder WinFsp creates (it must not exist yet; its parent must).
    Folder(PathBuf),
}

/// Why a mountpoint cannot be used on Windows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MountTargetError {
    #[error("{0}: is not a drive letter; give one from D: to Z:, such as P:")]
    BadDrive(String),
    #[error("{0} exists: WinFsp mounts at a folder it creates; give a path that does not exist yet (its parent must)")]
    FolderExists(PathBuf),
    #[error("the folder {0} that would hold the mount does not exist")]
    NoParent(PathBuf),
}

/// Reads a mountpoint as given on the command line. `exists` says whether a path exists (the
/// caller's filesystem; a function so that the rules are tested anywhere).
pub fn parse_mountpoint(
    given: &str,
    exists: impl Fn(&Path) -> bool,
) -> Result<MountTarget, MountTargetError> {
    let t = given.trim_end_matches(['\\', '/']);
    let b = t.as_bytes();
    if b.len() == 2 && b[1] == b':' {
        let letter = (b[0] as char).to_ascii_uppercase();
        // A: and B: are floppy letters; C: is the system drive.
        return if ('D'..='Z').contains(&letter) {
            Ok(MountTarget::Drive(letter))
        } else {
            Err(MountTargetError::BadDrive(given.to_owned()))
        };
    }
    let path = PathBuf::from(t);
    if exists(&path) {
        return Err(MountTargetError::FolderExists(path));
    }
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() && !exists(p) => {
            Err(MountTargetError::NoParent(p.to_owned()))
        }
        _ => Ok(MountTarget::Folder(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_letters_and_folders() {
        let none = |_: &Path| false;
        assert_eq!(parse_mountpoint("P:", none), Ok(MountTarget::Drive('P')));
        assert_eq!(parse_mountpoint("p:\\", none), Ok(MountTarget::Drive('P')));
        assert!(matches!(
            parse_mountpoint("C:", none),
            Err(MountTargetError::BadDrive(_))
        ));
        assert!(matches!(
            parse_mountpoint("1:", none),
            Err(MountTargetError::BadDrive(_))
        ));
        let only_home = |p: &Path| p == Path::new("home");
        assert_eq!(
            parse_mountpoint("home/Pocket", only_home),
            Ok(MountTarget::Folder(PathBuf::from("home/Pocket")))
        );
        assert!(matches!(
            parse_mountpoint("home", only_home),
            Err(MountTargetError::FolderExists(_))
        ));
        assert!(matches!(
            parse_mountpoint("nowhere/Pocket", only_home),
            Err(MountTargetError::NoParent(_))
        ));
    }
}
