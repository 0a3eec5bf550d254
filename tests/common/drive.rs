//! A drive for the tests that pull it out or cut its power: a loop-mounted filesystem image
//! (root only), unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A loop-mounted filesystem image, unmounted and detached on drop.
pub struct Drive {
    pub image: PathBuf,
    pub dir: PathBuf,
    mounted: bool,
}

impl Drive {
    pub fn new(tmp: &Path, fs_type: &str, size_mb: u64) -> Drive {
        let image = tmp.join(format!("{fs_type}.img"));
        let dir = tmp.join("drive");
        std::fs::create_dir_all(&dir).unwrap();
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(size_mb << 20).unwrap();
        drop(f);
        let mkfs = Command::new(format!("mkfs.{fs_type}"))
            .arg("-q")
            .arg(&image)
            .output()
            .unwrap();
        assert!(mkfs.status.success(), "{}", stderr(&mkfs));
        let mut d = Drive {
            image,
            dir,
            mounted: false,
        };
        d.mount();
        d
    }

    pub fn mount(&mut self) {
        let args = self.mount_args();
        let out = Command::new(&args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "mount loop: {}", stderr(&out));
        self.mounted = true;
    }

    pub fn umount(&mut self) {
        let out = Command::new("umount").arg(&self.dir).output().unwrap();
        assert!(out.status.success(), "umount: {}", stderr(&out));
        self.mounted = false;
    }

    /// Pulled out and plugged back in: unmounted (the log replays at the next mount).
    pub fn replug(&self) {
        for args in [vec!["umount".into(), self.dir.clone()], self.mount_args()] {
            let out = Command::new(&args[0]).args(&args[1..]).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        }
    }

    fn mount_args(&self) -> Vec<PathBuf> {
        vec![
            "mount".into(),
            "-o".into(),
            "loop".into(),
            self.image.clone(),
            self.dir.clone(),
        ]
    }

    /// The drive goes away: every I/O fails with EIO. Without `-f` the log is not flushed,
    /// as in a power cut.
    pub fn shutdown(&self) {
        let out = Command::new("xfs_io")
            .args(["-x", "-c", "shutdown"])
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "xfs_io shutdown: {}", stderr(&out));
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
